"""MoLoRA's fused mixture (rank_mix.py): the hand-written gradient against
JAX's autodiff of the plain formula in float64, with the load-balancing loss
taking its gradient through `probs`; the site's fused path against its
generic one; remat takes the plain path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moe_jax.peft import rank_mix, sites
from moe_jax.peft.molora import MoLoRASite
from moe_jax.peft.routers import RouterConfig, load_balance_loss
from tests.peft.common import assert_fused_site_matches_generic

CTX = sites.AdapterContext(features={})
Q = sites.SiteInfo("encoder/layer_0/self_attention/q", "encoder", 0, "self_attention", "q",
                   (16,), (4, 8), ("embed",), ("heads", "kv"))
O = sites.SiteInfo("encoder/layer_0/self_attention/o", "encoder", 0, "self_attention", "o",
                   (4, 8), (16,), ("heads", "kv"), ("embed",))


def _plain(x, router_kernel, down_kernel, up_kernel):
  """sum_e p_e B_e A_e x, one expert at a time."""
  probs = jax.nn.softmax(x @ router_kernel, axis=-1)
  num_experts = router_kernel.shape[1]
  rank = down_kernel.shape[1] // num_experts
  out = 0.0
  for e in range(num_experts):
    a, b = down_kernel[:, e * rank:(e + 1) * rank], up_kernel[e * rank:(e + 1) * rank]
    out = out + probs[:, e, None] * ((x @ a) @ b)
  return out, probs


def test_gradient_matches_autodiff_of_the_formula():
  with jax.enable_x64(True):
    rng = np.random.RandomState(0)
    n, d, e, r, o = 11, 6, 3, 2, 5
    args = (jnp.asarray(rng.randn(n, d)), jnp.asarray(rng.randn(d, e)), jnp.asarray(rng.randn(d, e * r)),
            jnp.asarray(rng.randn(e * r, o)))
    weights = jnp.asarray(rng.randn(n, o))

    def loss(fn, *a):
      out, probs = fn(*a)
      return jnp.sum(out * weights) + 3.0 * load_balance_loss(probs, jnp.ones((n,)))

    for got, want in zip(rank_mix.routed_low_rank(*args), _plain(*args)):
      np.testing.assert_allclose(got, want, rtol=1e-12)
    got = jax.grad(lambda *a: loss(rank_mix.routed_low_rank, *a), argnums=(0, 1, 2, 3))(*args)
    want = jax.grad(lambda *a: loss(_plain, *a), argnums=(0, 1, 2, 3))(*args)
    for name, g, w in zip(("x", "router_kernel", "down_kernel", "up_kernel"), got, want):
      np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)
      assert np.abs(w).max() > 1e-3, name  # every gradient is exercised


@pytest.mark.parametrize("info", [Q, O], ids=["q", "o"])
def test_site_fused_path_equals_the_unfused_one(info):
  """Token routing in float32 takes the fused path; a top-k of all experts
  routes the same but takes the generic one - values and gradients agree
  (float32, rtol 1e-4)."""
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.randn(2, 5, *info.in_shape), jnp.float32)
  y = jnp.asarray(rng.randn(2, 5, *info.out_shape), jnp.float32)

  def site(**router):
    return MoLoRASite(info, RouterConfig(4, load_balance_weight=0.5, **router), rank=2, alpha=4.0,
                      a_init="normal:0.02", dropout_rate=0.0)

  fused, generic = site(), site(top_k=4, renormalize=True)
  params = nn.unbox(fused.init(jax.random.key(0), x, y, CTX))["params"]
  params = jax.tree_util.tree_map(lambda v: v + jnp.asarray(rng.randn(*v.shape) * 0.3, v.dtype), params)
  assert_fused_site_matches_generic(fused, generic, params, x, y, "routed_low_rank")


def test_rematerialised_layers_and_dropout_take_the_plain_path():
  """Under remat (custom residuals would escape the policy) and with LoRA
  dropout in play (the fused mixture has none) the site takes autodiff's path."""
  rng = np.random.RandomState(2)
  x = jnp.asarray(rng.randn(2, 5, *Q.in_shape), jnp.float32)
  y = jnp.asarray(rng.randn(2, 5, *Q.out_shape), jnp.float32)
  site = MoLoRASite(Q, RouterConfig(4), rank=2, alpha=4.0, a_init="normal:0.02", dropout_rate=0.1)
  params = nn.unbox(site.init(jax.random.key(0), x, y, CTX))["params"]
  remat_ctx = sites.AdapterContext(features={}, rematerialised=True)
  train_ctx = sites.AdapterContext(features={}, deterministic=False)
  rngs = {"dropout": jax.random.key(3)}
  assert "routed_low_rank" in str(jax.make_jaxpr(lambda p: site.apply({"params": p}, x, y, CTX))(params))
  assert "routed_low_rank" not in str(jax.make_jaxpr(lambda p: site.apply({"params": p}, x, y, remat_ctx))(params))
  assert "routed_low_rank" not in str(jax.make_jaxpr(
      lambda p: site.apply({"params": p}, x, y, train_ctx, rngs=rngs))(params))
  np.testing.assert_allclose(site.apply({"params": params}, x, y, remat_ctx), site.apply({"params": params}, x, y, CTX),
                             rtol=1e-5, atol=1e-6)
