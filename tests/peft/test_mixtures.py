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


# Sizes for the jaxpr check, each distinct from the others so that an axis's
# size says what it is: E experts; outputs d_model 24 (o, wo), heads x d_kv
# 4 x 6 (q, k, v), d_ff 40 (wi_0); tokens: batch 3, lengths 7 and 9.
E, D_MODEL, HEADS, D_KV, D_FF = 5, 24, 4, 6, 40
TOKEN_AXES = {3, 7, 9, 3 * 7, 3 * 9}


def _all_eqns(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in its equations'
  parameters (pjit, scan, while, cond branches, remat, custom_jvp/vjp...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(inner, "eqns"):
          yield from _all_eqns(inner)


def _expert_output_tensors(jaxpr):
  """Intermediates with an expert axis, a site-output axis and a token axis,
  in any order. (A parameter's gradient [E, r, d_out] has no token axis.)"""
  found = []
  for eqn in _all_eqns(jaxpr):
    for v in eqn.outvars:
      shape = tuple(getattr(v.aval, "shape", ()))
      out = D_MODEL in shape or D_FF in shape or (HEADS in shape and D_KV in shape)
      if E in shape and out and TOKEN_AXES & set(shape):
        found.append((eqn.primitive.name, shape))
  return found


def _molora_t5(dropout_rate):
  from moe_jax.models import T5Config, build_model
  from moe_jax.peft import MoLoRA
  cfg = T5Config(vocab_size=32, d_model=D_MODEL, d_kv=D_KV, d_ff=D_FF, num_heads=HEADS, num_encoder_layers=2,
                 num_decoder_layers=2, scan_layers=True, remat_policy="full")
  model = build_model(cfg, MoLoRA(num_experts=E, rank=2, dropout_rate=dropout_rate))
  batch = {"encoder_input_tokens": jnp.ones((3, 7), jnp.int32), "decoder_input_tokens": jnp.ones((3, 9), jnp.int32),
           "decoder_target_tokens": jnp.ones((3, 9), jnp.int32)}
  # Abstract parameters: tracing needs shapes only, and eager init is slow.
  return model, nn.unbox(model.abstract_variables(batch)["params"]), batch


def test_the_expert_output_check_finds_nested_tensors_in_any_axis_order():
  # The naive mixture, hidden in jit(scan(remat(cond(...)))) with the expert
  # axis moved: the walk must find it, or the model test below proves nothing.
  a, b = jnp.ones((E, D_MODEL, 2)), jnp.ones((E, 2, D_FF))

  def naive(x):
    per_expert = jnp.einsum("btd,edr,erf->ebtf", x, a, b)
    return per_expert.sum(0)

  def nested(x):  # x [3, 7, d_ff]
    skip = lambda y: jnp.zeros(y.shape[:-1] + (D_FF,))
    body = lambda c, _: (c + jax.lax.cond(c[0, 0, 0] > 0, jax.checkpoint(naive), skip, c[..., :D_MODEL]), None)
    return jax.lax.scan(body, x, None, length=2)[0]

  x = jnp.ones((3, 7, D_FF))
  assert _expert_output_tensors(jax.make_jaxpr(jax.jit(nested))(x).jaxpr)
  assert not _expert_output_tensors(jax.make_jaxpr(jax.jit(lambda x: x[..., :D_MODEL] @ a[0] @ b[0]))(x).jaxpr)


def test_molora_model_never_builds_the_expert_output_tensor():
  """Forward (fused router + down projection) and gradient (with dropout, so
  the unfused `mix` path) of a whole scanned, rematerialised MoLoRA T5."""
  model, params, batch = _molora_t5(0.0)
  fwd = jax.make_jaxpr(lambda p: model.compute_logits(p, batch))(params).jaxpr
  assert any(E in tuple(v.aval.shape) for e in _all_eqns(fwd) for v in e.outvars)  # the mixture is traced
  assert not _expert_output_tensors(fwd)
  model, params, batch = _molora_t5(0.1)
  grad = jax.make_jaxpr(jax.grad(lambda p: model.loss_fn(p, batch, jax.random.key(1))[0]))(params).jaxpr
  assert not _expert_output_tensors(grad)


def test_moa_runs_one_lora_per_example_whatever_the_number_of_domains():
  """Each example gathers its domain's pair: no intermediate carries both the
  domain axis and a sequence axis (a mixture over domains would, as
  [B, T, D, r] or [B, T, D, d_out]), in the forward pass or the gradient."""
  from moe_jax.models import T5Config, build_model
  from moe_jax.peft import MoA
  cfg = T5Config(vocab_size=32, d_model=D_MODEL, d_kv=D_KV, d_ff=D_FF, num_heads=HEADS, num_encoder_layers=2,
                 num_decoder_layers=2, scan_layers=True)
  model = build_model(cfg, MoA(domains=tuple("abcde"), rank=2, targets=("q", "v", "wi_0", "wo")))
  batch = {"encoder_input_tokens": jnp.ones((3, 7), jnp.int32), "decoder_input_tokens": jnp.ones((3, 9), jnp.int32),
           "decoder_target_tokens": jnp.ones((3, 9), jnp.int32), "domain_id": jnp.array([0, 4, 2])}
  params = nn.unbox(model.abstract_variables(batch)["params"])
  assert len(model.adapters.domains) == E
  seq_axes = TOKEN_AXES - {3}  # [B, D] one-hot decisions and router logits are fine

  def per_token_domain_tensors(jaxpr):
    return [(e.primitive.name, tuple(v.aval.shape)) for e in _all_eqns(jaxpr) for v in e.outvars
            if E in tuple(getattr(v.aval, "shape", ())) and seq_axes & set(v.aval.shape)]

  fwd = jax.make_jaxpr(lambda p: model.compute_logits(p, batch))(params).jaxpr
  grad = jax.make_jaxpr(jax.grad(lambda p: model.loss_fn(p, batch, None)[0]))(params).jaxpr
  assert not per_token_domain_tensors(fwd)
  assert not per_token_domain_tensors(grad)
