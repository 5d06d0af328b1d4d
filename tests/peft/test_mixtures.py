"""Soft merging (MoV) and rank-space mixing (MoLoRA) against naive formulas."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from moe_jax.peft import sites
from moe_jax.peft.ia3 import IA3Site
from moe_jax.peft.lora import LowRankExperts
from moe_jax.peft.molora import MoLoRASite
from moe_jax.peft.mov import MoVSite
from moe_jax.peft.routers import Router, RouterConfig

CTX = sites.AdapterContext(features={})
KV = sites.SiteInfo("encoder/layer_0/self_attention/k", "encoder", 0, "self_attention", "k",
                    (16,), (4, 8), ("embed",), ("heads", "kv"))
O = sites.SiteInfo("encoder/layer_0/self_attention/o", "encoder", 0, "self_attention", "o",
                   (4, 8), (16,), ("heads", "kv"), ("embed",))


def _randomise(variables, seed):
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda v: v + jnp.asarray(rng.randn(*v.shape) * 0.5, v.dtype), variables)


def test_mov_soft_merge_is_probability_weighted_sum_of_ia3_outputs():
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(2, 5, 16), jnp.float32)
  y = jnp.asarray(rng.randn(2, 5, 4, 8), jnp.float32)
  site = MoVSite(KV, RouterConfig(3))
  variables = _randomise(nn.unbox(site.init(jax.random.key(0), x, y, CTX)), 1)
  out = site.apply(variables, x, y, CTX)
  probs = Router(RouterConfig(3)).apply({"params": variables["params"]["router"]}, y, CTX)  # [2,5,4,3]
  expected = 0
  for e in range(3):
    ia3 = IA3Site(KV).apply({"params": {"scale": variables["params"]["experts"][e]}}, x, y, CTX)
    expected = expected + probs[..., e:e + 1] * ia3
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # Each head of each token has its own mixture (the router reads d_kv).
  assert not np.allclose(probs[0, 0, 0], probs[0, 0, 1])


def test_molora_rank_space_equals_output_space_mixture():
  rng = np.random.RandomState(2)
  x = jnp.asarray(rng.randn(2, 5, 4, 8), jnp.float32)  # the o projection's head-shaped input
  y = jnp.asarray(rng.randn(2, 5, 16), jnp.float32)
  site = MoLoRASite(O, RouterConfig(3), rank=2, alpha=6.0, a_init="kaiming_uniform", dropout_rate=0.0)
  variables = _randomise(nn.unbox(site.init(jax.random.key(0), x, y, CTX)), 3)
  out = site.apply(variables, x, y, CTX)
  p = variables["params"]
  probs = Router(RouterConfig(3)).apply({"params": p["router"]}, x.reshape(2, 5, 32), CTX)
  a, b = p["experts"]["lora_a"], p["experts"]["lora_b"]  # [E, 4, 8, r], [E, r, 16]
  per_expert = jnp.einsum("bthd,ehdr,ero->bteo", x, a, b)  # [B, T, E, d_out]: the naive path
  expected = y + 3.0 * jnp.einsum("bte,bteo->bto", probs, per_expert)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_low_rank_experts_never_build_the_expert_output_tensor():
  """The jaxpr of a mixture holds no [B, T, E, d_out] intermediate."""
  info = sites.SiteInfo("x", "encoder", 0, "mlp", "wo", (64,), (48,), ("mlp",), ("embed",))
  mod = LowRankExperts(info, 7, 2)
  x, w = jnp.ones((3, 5, 64)), jnp.ones((3, 5, 7))
  variables = nn.unbox(mod.init(jax.random.key(0), x, w, CTX, method="mix"))
  jaxpr = jax.make_jaxpr(lambda v: mod.apply(v, x, w, CTX, method="mix"))(variables)
  shapes = {tuple(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars}
  assert (3, 5, 7, 48) not in shapes and (3, 5, 48) in shapes
