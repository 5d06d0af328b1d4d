"""Adafactor with T5X semantics: factoring rules and the first-step closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from moe_jax import optim


def _second_moments(state):
  """{param name: (v_row, v_col, v) shapes} from the (masked) FactoredStates."""
  out = {}
  for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, optax.FactoredState)):
    if isinstance(s, optax.FactoredState):
      for name, v in s.v.items():
        if not isinstance(v, optax.MaskedNode):
          out[name] = (s.v_row[name].shape, s.v_col[name].shape, v.shape)
  return out


def test_expert_and_rank_axes_keep_unfactored_second_moments():
  params = {"kernel": jnp.ones((256, 384)), "experts": jnp.ones((4, 256, 384)), "lora_a": jnp.ones((256, 8))}
  axes = {"kernel": P("embed", "mlp"), "experts": P("expert", "embed", "mlp"), "lora_a": P("embed", "rank")}
  moments = _second_moments(optim.adafactor(1e-2, axes).init(params))
  # The plain kernel is factored into row (256) and column (384) statistics;
  # the expert and rank parameters keep a full second moment.
  assert moments == {"kernel": ((256,), (384,), (1,)), "experts": ((1,), (1,), (4, 256, 384)),
                     "lora_a": ((1,), (1,), (256, 8))}


def test_first_step_is_sign_times_parameter_scale_with_floor():
  # Step 1: the decay 1 - 1^-0.8 is 0, so v = g^2 and g/sqrt(v) = sign(g) (RMS 1,
  # below the clipping threshold); the update is scaled by max(RMS(param), 1e-3).
  lr = 0.1
  g = jnp.asarray([0.5, -2.0, 3.0, -0.01])
  params = {"big": jnp.full((4,), 3.0), "zero": jnp.zeros((4,))}
  axes = {"big": P("embed"), "zero": P("embed")}
  tx = optim.adafactor(lr, axes)
  updates, _ = tx.update({"big": g, "zero": g}, tx.init(params), params)
  np.testing.assert_allclose(updates["big"], -lr * 3.0 * np.sign(g), rtol=1e-5)
  np.testing.assert_allclose(updates["zero"], -lr * 1e-3 * np.sign(g), rtol=1e-5)


def test_update_clipping_bounds_the_rms():
  # Second step with a gradient 100x the first: v is dominated by history, so
  # g/sqrt(v) has RMS >> 1 and clipping brings it back to RMS 1.
  axes = {"w": P("embed")}
  params = {"w": jnp.ones((8,))}
  tx = optim.adafactor(1.0, axes)
  state = tx.init(params)
  _, state = tx.update({"w": jnp.full((8,), 1e-3)}, state, params)
  updates, _ = tx.update({"w": jnp.full((8,), 1e3)}, state, params)
  rms = float(jnp.sqrt(jnp.mean(updates["w"] ** 2)))
  np.testing.assert_allclose(rms, 1.0, rtol=1e-4)  # lr 1 x scale 1 x clipped RMS 1
