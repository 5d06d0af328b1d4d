"""Adafactor's second-moment scaling with rsqrt: the same numbers and the same
state as optax's (which computes v ** -0.5), so checkpoints carry over."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from moe_jax import optim, second_moments

# factored [256, 192]; [10, 64, 4] too small to factor; [130, 6, 200] factored
# over its two largest dims (0 and 2); a vector never factored; a square
# matrix's tie broken as optax does
SHAPES = {"mat": (256, 192), "small": (10, 64, 4), "t3": (130, 6, 200), "vec": (300,), "square": (128, 128)}


def _tree(rng, scale=1.0):
  return {k: jnp.asarray(rng.normal(size=s) * scale, jnp.float32) for k, s in SHAPES.items()}


@pytest.mark.parametrize("factored,offset", [(True, 0), (False, 0), (True, 1_100_000)])
def test_matches_optax_scale_by_factored_rms_over_steps(factored, offset):
  rng = np.random.default_rng(0)
  params = _tree(rng)
  ours = second_moments.scale_by_factored_rms(factored, 0.8, -offset, 128)
  ref = optax.scale_by_factored_rms(factored, 0.8, -offset, 128)
  s_ours, s_ref = ours.init(params), ref.init(params)
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_ref)
  step_ours, step_ref = jax.jit(ours.update), jax.jit(ref.update)
  for step in range(4):
    # gradients of very different sizes, so the decay matters from step 2 on
    grads = _tree(rng, scale=10.0 ** (step - 2))
    grads["vec"] = grads["vec"].at[:5].set(0.0)  # epsilon keeps 0 / sqrt(v) finite
    grads["mat"] = grads["mat"].at[3].set(0.0)
    u_ours, s_ours = step_ours(grads, s_ours, params)
    u_ref, s_ref = step_ref(grads, s_ref, params)
    for a, b in zip(jax.tree.leaves((u_ours, s_ours)), jax.tree.leaves((u_ref, s_ref))):
      assert a.shape == b.shape
      # rsqrt vs a general power: a few ulp
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=0)


def test_adafactor_state_is_optax_adafactors():
  # optim.adafactor swaps only the scaling transform: an optimizer state saved
  # by optax.adafactor's chain has the same tree, so it restores into ours.
  params = {"kernel": jnp.ones((256, 384)), "lora_a": jnp.ones((4, 256, 8))}
  axes = {"kernel": P("embed", "mlp"), "lora_a": P("expert", "embed", "rank")}
  ours = optim.adafactor(1e-2, axes).init(params)
  labels = {"kernel": "factored", "lora_a": "unfactored"}
  ref = optax.multi_transform({"factored": optax.adafactor(1e-2, factored=True),
                               "unfactored": optax.adafactor(1e-2, factored=False)}, labels).init(params)
  assert jax.tree.structure(ours.inner) == jax.tree.structure(ref)
  for a, b in zip(jax.tree.leaves(ours.inner), jax.tree.leaves(ref)):
    assert a.shape == b.shape and a.dtype == b.dtype


def test_lowered_update_takes_rsqrt_not_a_tensor_power():
  # The point of the module: XLA sees rsqrt, not pow(v, -0.5) (the only power
  # left is the scalar decay 1 - t^-0.8).
  params = {"a": jnp.ones((10, 64, 4)), "w": jnp.ones((256, 192))}
  tx = second_moments.scale_by_factored_rms()
  hlo = jax.jit(tx.update).lower(params, tx.init(params), params).as_text()
  powers = [line for line in hlo.splitlines() if "stablehlo.power" in line]
  assert powers and all(line.rstrip().endswith("tensor<f32>") for line in powers), powers
  assert hlo.count("stablehlo.rsqrt") == 3  # the unfactored v; the factored rows and columns
