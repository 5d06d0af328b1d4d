"""Adafactor with T5X semantics: factoring rules and the first-step closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import optax
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from moe_jax import optim


def _second_moments(state):
  """{param name: (v_row, v_col, v) shapes} from the (masked) FactoredStates."""
  out = {}
  for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, optax.FactoredState)):
    if isinstance(s, optax.FactoredState):
      flat = {k: traverse_util.flatten_dict(getattr(s, k), sep="/") if isinstance(getattr(s, k), dict)
              else {} for k in ("v_row", "v_col", "v")}
      for name, v in flat["v"].items():
        if not isinstance(v, optax.MaskedNode):
          out[name] = (flat["v_row"][name].shape, flat["v_col"][name].shape, v.shape)
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


def _unfactored_v(state):
  """The second moment of the single unfactored leaf 'w'."""
  for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, optax.FactoredState)):
    if isinstance(s, optax.FactoredState) and not isinstance(s.v["w"], optax.MaskedNode):
      return np.asarray(s.v["w"], np.float64)
  raise AssertionError("no unfactored second moment for 'w'")


@pytest.mark.parametrize("offset", [0, 1_100_000])
def test_second_moment_decay_per_step_follows_the_closed_form(offset):
  # v_t = d_t v_{t-1} + (1 - d_t) g_t^2 with d_t = 1 - (t + offset)^-0.8 (t5x
  # _decay_rate_pow at the checkpoint's step). Read from the state, so update
  # clipping cannot hide a wrong schedule.
  params = {"w": jnp.ones((3,))}
  tx = optim.adafactor(1e-2, {"w": P("embed")}, step_offset=offset)
  state = tx.init(params)
  grads = [np.array([0.5, -2.0, 3.0]), np.array([1.0, 0.25, -4.0]), np.array([2.0, 2.0, 0.1])]
  v = np.zeros(3)
  for t, g in enumerate(grads, start=1):
    _, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    d = 1.0 - (t + offset) ** -0.8
    assert d == pytest.approx(optim.decay_rate_at(t, 0.8, offset))
    # in float32, as the optimizer: 1 - d near 1e-5 keeps only ~3 significant digits
    d32 = np.float64(np.float32(1.0) - np.float32(t + offset) ** np.float32(-0.8))
    v = d32 * v + (1.0 - d32) * (g ** 2 + 1e-30)
    np.testing.assert_allclose(_unfactored_v(state), v, rtol=2e-5)
  if offset == 0:
    assert optim.decay_rate_at(1) == 0.0  # a fresh run: the first step keeps nothing
  else:
    assert 1 - optim.decay_rate_at(1, 0.8, offset) == pytest.approx(1_100_001 ** -0.8)


def test_attention_kernels_get_factored_second_moments_as_in_t5x():
  # Full fine-tuning: t5x's q/k/v/o kernels are 2-D [embed, heads*kv], factored
  # into d_model row and heads*kv column statistics. moe-jax keeps 3-D kernels;
  # they must get the same statistics (optax alone would not factor a 64-wide axis).
  from moe_jax.models import build_model, get_preset
  model = build_model(get_preset("t5_1_1_tiny", d_model=256, num_heads=4, d_kv=64, d_ff=512,
                                 num_encoder_layers=1, num_decoder_layers=1, vocab_size=160))
  params = jax.eval_shape(model.init, jax.random.key(0))
  axes = model.param_logical_axes()
  moments = _second_moments(jax.eval_shape(optim.adafactor(1e-3, axes).init, params))
  attn = {k: v for k, v in moments.items() if k.split("/")[-2:-1] in (["query"], ["key"], ["value"], ["out"])}
  assert len(attn) == 3 * 4  # encoder self-, decoder self- and cross-attention: q, k, v, o each
  assert attn, "no attention kernels found in the optimizer state"
  for name, (row, col, full) in attn.items():
    assert full == (1,), name  # no full second moment
    assert sorted(row + col) == [256, 256], (name, row, col)  # embed x (heads * kv)
  assert optim.factored_shape((256, 4, 64), P("embed", "heads", "kv")) == (256, 256)
  assert optim.factored_shape((4, 64, 256), P("heads", "kv", "embed")) == (256, 256)
  assert optim.factored_shape((3, 256, 8), P("expert", "embed", "rank")) == (3, 256, 8)


def test_factored_view_leaves_updates_in_the_parameter_shape():
  params = {"w": jnp.ones((256, 4, 64)) * 0.5}
  tx = optim.adafactor(1e-2, {"w": P("embed", "heads", "kv")})
  g = jax.random.normal(jax.random.key(0), (256, 4, 64))
  updates, _ = tx.update({"w": g}, tx.init(params), params)
  assert updates["w"].shape == (256, 4, 64)
  # the same numbers as optax's Adafactor on the 2-D view
  ref = optax.adafactor(1e-2, min_dim_size_to_factor=128, decay_rate=0.8, clipping_threshold=1.0,
                        multiply_by_parameter_scale=True)
  flat = {"w": params["w"].reshape(256, 256)}
  ref_updates, _ = ref.update({"w": g.reshape(256, 256)}, ref.init(flat), flat)
  np.testing.assert_allclose(updates["w"].reshape(256, 256), ref_updates["w"], rtol=1e-6)


def test_scanned_kernels_keep_per_layer_factored_statistics():
  # A scanned stack [layers, embed, heads, kv]: t5x's BATCH dim, one factored
  # (embed x heads*kv) statistic per layer.
  assert optim.factored_shape((24, 256, 4, 64), P("layers", "embed", "heads", "kv")) == (24, 256, 256)
  params = {"w": jnp.ones((3, 256, 4, 64))}
  state = optim.adafactor(1e-3, {"w": P("layers", "embed", "heads", "kv")}).init(params)
  assert _second_moments(state)["w"] == ((3, 256), (3, 256), (1,))
