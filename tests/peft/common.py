"""Tiny backbones, batches and parameter surgery shared by the method tests."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from moe_jax.models import DecoderConfig, T5Config, build_model
from moe_jax.peft.trainable import is_adapter_path

T5_TINY = T5Config(vocab_size=32, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_encoder_layers=2,
                   num_decoder_layers=2)
LLAMA_TINY = DecoderConfig(vocab_size=32, d_model=32, d_ff=48, num_layers=2, num_heads=4, num_kv_heads=2,
                           head_dim=8, max_position_embeddings=64)
CONFIGS = {"t5": T5_TINY, "llama": LLAMA_TINY}


def batch(family: str):
  if family == "t5":
    return {"encoder_input_tokens": jnp.array([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0], [11, 12, 13, 1, 0]]),
            "decoder_input_tokens": jnp.array([[0, 4, 5, 6], [0, 7, 1, 0], [0, 8, 9, 1]]),
            "decoder_target_tokens": jnp.array([[4, 5, 6, 1], [7, 1, 0, 0], [8, 9, 1, 0]]),
            "task_id": jnp.array([0, 1, 2]), "domain_id": jnp.array([0, 1, 2])}
  return {"decoder_input_tokens": jnp.array([[5, 6, 7, 8, 9], [10, 11, 0, 0, 0], [12, 13, 14, 0, 0]]),
          "decoder_target_tokens": jnp.array([[6, 7, 8, 9, 2], [11, 2, 0, 0, 0], [13, 14, 2, 0, 0]]),
          "task_id": jnp.array([0, 1, 2]), "domain_id": jnp.array([0, 1, 2])}


def flat(params):
  return traverse_util.flatten_dict(params)


def backbone_only(params):
  return traverse_util.unflatten_dict({k: v for k, v in flat(params).items() if not is_adapter_path(k)})


def perturb_adapters(params, seed=0, scale=0.3):
  """Random, non-trivial adapter weights (at init LoRA's B is 0 and MoV's vectors 1)."""
  rng = np.random.RandomState(seed)
  out = {}
  for k, v in flat(params).items():
    if is_adapter_path(k):
      v = v + jnp.asarray(rng.randn(*v.shape) * scale, v.dtype)
    out[k] = v
  return traverse_util.unflatten_dict(out)


def make(family, adapters, seed=0, **model_kwargs):
  model = build_model(CONFIGS[family], adapters, **model_kwargs)
  params = model.init(jax.random.key(seed), batch(family))
  return model, params


def rename(params, mapping):
  """Copy params with path components renamed via mapping(path) -> path or None (drop)."""
  out = {}
  for k, v in flat(params).items():
    nk = mapping(k)
    if nk is not None:
      out[nk] = v
  return traverse_util.unflatten_dict(out)


def assert_fused_site_matches_generic(fused, generic, params, x, y, fused_op: str, reads_x=True, seed=0):
  """A site module taking a hand-written-gradient path (`fused_op` in its
  jaxpr) and the same module with a router setting that routes identically
  but takes autodiff's path: outputs, loss (with the sown auxiliary losses)
  and every gradient agree in float32 (rtol 1e-4); the gradients are non-zero
  (x's only where the site reads x: MoV's keys/values route on y)."""
  from moe_jax.peft import sites
  ctx = sites.AdapterContext(features={})
  weights = jnp.asarray(np.random.RandomState(seed).randn(*y.shape), jnp.float32)

  def loss(site, params, x, y):
    out, state = site.apply({"params": params}, x, y, ctx, mutable=[sites.AUX_LOSS_COLLECTION])
    return jnp.sum(out * weights) + sum(jax.tree_util.tree_leaves(state)), out

  assert fused_op in str(jax.make_jaxpr(lambda p: loss(fused, p, x, y))(params))  # the fused path is taken
  assert fused_op not in str(jax.make_jaxpr(lambda p: loss(generic, p, x, y))(params))
  (lf, of), gf = jax.value_and_grad(lambda *a: loss(fused, *a), argnums=(0, 1, 2), has_aux=True)(params, x, y)
  (lg, og), gg = jax.value_and_grad(lambda *a: loss(generic, *a), argnums=(0, 1, 2), has_aux=True)(params, x, y)
  np.testing.assert_allclose(of, og, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(lf, lg, rtol=1e-5)
  for part, (got, want) in enumerate(zip(gf, gg)):  # params, x, y
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      assert np.abs(b).max() > 1e-3 or (part == 1 and not reads_x)
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
