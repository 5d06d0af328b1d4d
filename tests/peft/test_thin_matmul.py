"""thin_matmul.down/up: x @ w with hand-written gradients, against JAX's
autodiff of the plain matmul (float64, rtol 1e-12), leading dims kept."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.peft import thin_matmul


@pytest.mark.parametrize("fn,w_shape", [(thin_matmul._down, (12, 3)), (thin_matmul._up, (3, 12))],
                         ids=["down", "up"])
def test_values_and_gradients_equal_the_plain_matmul(fn, w_shape):
  with jax.enable_x64(True):
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(2, 5, w_shape[0]))
    w = jnp.asarray(rng.randn(*w_shape))
    weights = jnp.asarray(rng.randn(2, 5, w_shape[1]))
    got_value = fn(x, w)
    assert got_value.shape == (2, 5, w_shape[1])
    np.testing.assert_allclose(got_value, x @ w, rtol=1e-12)
    got = jax.grad(lambda x, w: jnp.sum(fn(x, w) * weights), argnums=(0, 1))(x, w)
    want = jax.grad(lambda x, w: jnp.sum((x @ w) * weights), argnums=(0, 1))(x, w)
    for g, t in zip(got, want):
      assert g.shape == t.shape and g.dtype == t.dtype
      np.testing.assert_allclose(g, t, rtol=1e-12)


def test_weight_gradient_keeps_the_weight_dtype():
  x = jnp.ones((4, 6), jnp.bfloat16)
  w = jnp.ones((6, 2), jnp.bfloat16)
  gx, gw = jax.grad(lambda x, w: jnp.sum(thin_matmul.down(x, w).astype(jnp.float32)), argnums=(0, 1))(x, w)
  assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(gw, np.float32), 4.0)


def test_lora_site_uses_plain_matmuls_under_rematerialisation():
  """Custom gradients keep their residuals whatever the remat policy: LoRA's
  down and up projections step aside then, with the same values."""
  from flax import linen as nn

  from moe_jax.peft import sites
  from moe_jax.peft.lora import LoRASite
  info = sites.SiteInfo("encoder/layer_0/mlp/wo", "encoder", 0, "mlp", "wo", (12,), (6,), ("mlp",), ("embed",))
  rng = np.random.RandomState(3)
  x = jnp.asarray(rng.randn(2, 5, 12), jnp.float32)
  y = jnp.asarray(rng.randn(2, 5, 6), jnp.float32)
  site = LoRASite(info, rank=2, alpha=4.0, a_init="kaiming_uniform", dropout_rate=0.0)
  ctx, remat_ctx = sites.AdapterContext(features={}), sites.AdapterContext(features={}, rematerialised=True)
  params = nn.unbox(site.init(jax.random.key(0), x, y, ctx))["params"]
  params = jax.tree_util.tree_map(lambda v: v + 0.3, params)  # B != 0, so the delta shows
  trace = lambda c: str(jax.make_jaxpr(lambda p: site.apply({"params": p}, x, y, c))(params))
  assert trace(ctx).count("custom_vjp_call") == 2 and "custom_vjp_call" not in trace(remat_ctx)
  np.testing.assert_allclose(site.apply({"params": params}, x, y, remat_ctx), site.apply({"params": params}, x, y, ctx),
                             rtol=1e-6)
