"""MoV's fused merge (vector_mix.py): the hand-written gradient against JAX's
autodiff of the plain formula, float64, for keys/values (per head) and the FFN
hidden site, with the load-balancing loss taking its gradient through `probs`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moe_jax.peft import sites, vector_mix
from moe_jax.peft.mov import MoVSite
from moe_jax.peft.routers import RouterConfig, load_balance_loss
from tests.peft.common import assert_fused_site_matches_generic

CTX = sites.AdapterContext(features={})
KV = sites.SiteInfo("encoder/layer_0/self_attention/k", "encoder", 0, "self_attention", "k",
                    (16,), (4, 8), ("embed",), ("heads", "kv"))
FFN = sites.SiteInfo("encoder/layer_0/mlp/ffn_hidden", "encoder", 0, "mlp", sites.FFN_HIDDEN,
                     (12,), (12,), ("mlp",), ("mlp",))


def _plain(router_input, y, kernel, vectors_minus_one):
  probs = jax.nn.softmax(router_input @ kernel, axis=-1)
  return y * (1.0 + jnp.einsum("...he,ehd->...hd", probs, vectors_minus_one)), probs


@pytest.mark.parametrize("shared_input", [True, False])
def test_gradient_matches_autodiff_of_the_formula(shared_input):
  with jax.enable_x64(True):
    rng = np.random.RandomState(0)
    y = jnp.asarray(rng.randn(2, 5, 3, 8))
    r = y if shared_input else jnp.asarray(rng.randn(2, 5, 3, 6))  # keys/values read y; FFN reads x
    kernel = jnp.asarray(rng.randn(r.shape[-1], 4))
    vectors = jnp.asarray(rng.randn(4, 3, 8) * 0.3)
    weights = jnp.asarray(rng.randn(*y.shape))
    mask = jnp.ones((2 * 5 * 3,))

    def loss(fn, r, y, kernel, vectors):
      if shared_input and fn is vector_mix.routed_scale:  # keys/values: y routes itself
        out, probs = vector_mix.self_routed_scale(y, kernel, vectors)
      else:
        out, probs = fn(y if shared_input else r, y, kernel, vectors)
      return jnp.sum(out * weights) + 3.0 * load_balance_loss(probs.reshape(-1, 4), mask)

    got = jax.grad(lambda *a: loss(vector_mix.routed_scale, *a), argnums=(0, 1, 2, 3))(r, y, kernel, vectors)
    want = jax.grad(lambda *a: loss(_plain, *a), argnums=(0, 1, 2, 3))(r, y, kernel, vectors)
    np.testing.assert_allclose(vector_mix.routed_scale(r, y, kernel, vectors)[0], _plain(r, y, kernel, vectors)[0],
                               rtol=1e-12)
    for name, g, w in zip(("router_input", "y", "kernel", "vectors"), got, want):
      np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)
      if not (shared_input and name == "router_input"):  # (unused when y is the router's input)
        assert np.abs(w).max() > 1e-3, name  # every gradient is exercised


@pytest.mark.parametrize("info", [KV, FFN], ids=["kv", "ffn"])
def test_site_fused_path_equals_the_unfused_one(info):
  """The site takes the fused path for token routing in float32; a top-k of
  all experts routes the same but takes the generic path - both must agree,
  values and gradients (float32, rtol 1e-5)."""
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.randn(2, 5, *info.in_shape), jnp.float32)
  y = jnp.asarray(rng.randn(2, 5, *info.out_shape), jnp.float32)
  fused = MoVSite(info, RouterConfig(4, load_balance_weight=0.5))
  generic = MoVSite(info, RouterConfig(4, top_k=4, renormalize=True, load_balance_weight=0.5))
  params = nn.unbox(fused.init(jax.random.key(0), x, y, CTX))["params"]
  params = jax.tree_util.tree_map(lambda v: v + jnp.asarray(rng.randn(*v.shape) * 0.3, v.dtype), params)
  assert_fused_site_matches_generic(fused, generic, params, x, y, "routed_scale", reads_x=info is FFN)


def test_rematerialised_layers_take_the_plain_paths():
  """Custom gradients keep their residuals whatever the remat policy, so under
  remat MoV's fused merge and the thin matmuls step aside."""
  rng = np.random.RandomState(2)
  x = jnp.asarray(rng.randn(2, 5, *KV.in_shape), jnp.float32)
  y = jnp.asarray(rng.randn(2, 5, *KV.out_shape), jnp.float32)
  site = MoVSite(KV, RouterConfig(4))
  params = nn.unbox(site.init(jax.random.key(0), x, y, CTX))["params"]
  remat_ctx = sites.AdapterContext(features={}, rematerialised=True)
  plain = str(jax.make_jaxpr(lambda p: site.apply({"params": p}, x, y, remat_ctx))(params))
  fused = str(jax.make_jaxpr(lambda p: site.apply({"params": p}, x, y, CTX))(params))
  assert "custom_vjp_call" not in plain and "routed_scale" in fused
  np.testing.assert_allclose(site.apply({"params": params}, x, y, remat_ctx), site.apply({"params": params}, x, y, CTX),
                             rtol=1e-5, atol=1e-6)
