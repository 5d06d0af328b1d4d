"""Multi-head / grouped-query attention with adapter sites and a KV cache.

One module serves T5 (relative position bias, no logit scaling) and Llama
(RoPE, 1/sqrt(d) scaling, fewer KV heads). The q/k/v/o projections are adapter
sites; k and v are cached *after* their sites, so an adapter's effect on the
keys is computed once per token, as in the uncached forward pass. Cross-attention
keys/values (over the fixed encoder output) are computed once, at prefill, and
read from the cache at every decoding step.

The attention itself goes through `jax.nn.dot_product_attention` (T5's relative
position bias passed as its `bias`), so GPUs can use cuDNN's fused kernel;
`implementation` picks "xla", "cudnn", or None (jax decides), and
"einsum" is the explicit path below. That function has no dropout, so training
with attention dropout always takes the explicit path (its mask is broadcast
over query positions, as flaxformer). The default comes from
$MOE_JAX_ATTENTION_IMPL when set.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax.layers.dense import DenseGeneral
from moe_jax.layers.position import apply_rope
from moe_jax import adapters as sites

NEG_INF = -1e10  # finite, so fully masked rows (padding queries) stay NaN-free

BiasFn = Callable[[jax.Array, jax.Array], jax.Array]  # (q_pos [b,Tq], k_pos [Tk]) -> [b,H,Tq,Tk]
IMPLEMENTATIONS = (None, "xla", "cudnn", "einsum")


def default_implementation() -> Optional[str]:
  impl = os.environ.get("MOE_JAX_ATTENTION_IMPL") or None
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"MOE_JAX_ATTENTION_IMPL={impl!r}; expected one of {IMPLEMENTATIONS[1:]}")
  return impl


def dot_product_attention(q, k, v, *, bias=None, mask=None, scale=1.0, dropout_rate=0.0,
                          deterministic=True, dropout_rng=None, dtype=jnp.float32,
                          implementation: Optional[str] = None):
  """q [B,Tq,H,D], k/v [B,Tk,Hkv,D], bias [b,H,Tq,Tk], mask bool [B,1|H,Tq,Tk]."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation={implementation!r}; expected one of {IMPLEMENTATIONS}")
  if implementation != "einsum" and (deterministic or dropout_rate == 0):
    return _fused(q, k, v, bias, mask, scale, dtype, implementation)
  return _explicit(q, k, v, bias, mask, scale, dropout_rate, deterministic, dropout_rng, dtype)


def _fused(q, k, v, bias, mask, scale, dtype, implementation):
  q, k, v = (t.astype(dtype) for t in (q, k, v))
  if bias is not None:
    # cuDNN wants the bias in the activation dtype; XLA adds it to float32 logits.
    bias = bias.astype(dtype if implementation == "cudnn" else jnp.float32)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (q.shape[0], mask.shape[1], q.shape[1], k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale,
                                      implementation=implementation)


def _explicit(q, k, v, bias, mask, scale, dropout_rate, deterministic, dropout_rng, dtype):
  b, tq, h, d = q.shape
  hkv = k.shape[2]
  g = h // hkv  # query heads per KV head; head h uses KV head h // g
  qg = q.reshape(b, tq, hkv, g, d)
  logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
  logits = logits * scale
  tk = k.shape[1]
  if bias is not None:
    logits = logits + bias.astype(jnp.float32).reshape(bias.shape[0], hkv, g, tq, tk)
  if mask is not None:
    m = jnp.broadcast_to(mask, (b, mask.shape[1], tq, tk))
    m = m.reshape(b, hkv, g, tq, tk) if m.shape[1] == h else m[:, :, None]
    logits = jnp.where(m, logits, NEG_INF)
  weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
  if not deterministic and dropout_rate > 0:
    # One mask for every query position (flaxformer's broadcast_dropout=True,
    # as t5x's T5): a dropped key is dropped for all queries of that head.
    mask_shape = weights.shape[:-2] + (1,) + weights.shape[-1:]
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, mask_shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(dtype)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", weights, v.astype(dtype))
  return out.reshape(b, tq, h, d)


class Attention(nn.Module):
  """Attention block whose four projections are adapter sites.

  Call with `decode=True` to use the KV cache (self-attention only): the new
  keys/values are written at `positions[:, 0]` per example and each query sees
  cached keys at positions <= its own. The cache is created, zeroed, by a first
  call made while the 'cache' collection is mutable and does not exist yet.
  """
  num_heads: int
  head_dim: int
  num_kv_heads: Optional[int] = None
  scale_logits: bool = False  # Llama: 1/sqrt(head_dim); T5: no scaling
  rope_theta: Optional[float] = None  # None: no RoPE
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Callable = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
  adapters: sites.Adapters = sites.NO_ADAPTERS
  site_path: str = ""  # e.g. "encoder/layer_0/self_attention"
  stack: str = ""
  layer: int = 0
  block: str = "self_attention"
  implementation: Optional[str] = dataclasses.field(default_factory=default_implementation)

  def _site(self, kind, x, y, ctx, in_shape, out_shape, in_axes, out_axes):
    info = sites.SiteInfo(path=f"{self.site_path}/{kind}", stack=self.stack, layer=self.layer,
                          block=self.block, kind=kind, in_shape=in_shape, out_shape=out_shape,
                          in_axes=in_axes, out_axes=out_axes)
    return sites.apply_site(self.adapters, info, x, y, ctx)

  def _proj(self, name, x, heads, ctx):
    dense = DenseGeneral(features=(heads, self.head_dim), in_axes=("embed",), out_axes=("heads", "kv"),
                         kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype,
                         name=name)
    d_in = x.shape[-1]
    return self._site(name[0], x, dense(x), ctx, (d_in,), (heads, self.head_dim), ("embed",), ("heads", "kv"))

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array, ctx: sites.AdapterContext, *,
               mask: Optional[jax.Array] = None, bias_fn: Optional[BiasFn] = None,
               positions: Optional[jax.Array] = None, decode: bool = False) -> jax.Array:
    kv_heads = self.num_kv_heads or self.num_heads
    batch, tq = inputs_q.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tq), (batch, tq))
    q = self._proj("query", inputs_q, self.num_heads, ctx)
    if decode and self.block == "cross_attention":
      k, v = self._cross_kv(inputs_kv, kv_heads, ctx)
    else:
      k = self._proj("key", inputs_kv, kv_heads, ctx)
      v = self._proj("value", inputs_kv, kv_heads, ctx)
    if self.rope_theta is not None:
      q = apply_rope(q, positions, self.rope_theta)
      k = apply_rope(k, positions, self.rope_theta)

    q_pos_for_bias = positions
    if decode and self.block != "cross_attention":
      k, v, mask = self._update_cache(k, v, positions)
    else:
      q_pos_for_bias = positions[:1]  # non-decode positions are the same for every example
    bias = None
    if bias_fn is not None:
      bias = bias_fn(q_pos_for_bias, jnp.arange(k.shape[1]))

    dropout_rng = None
    if not ctx.deterministic and self.dropout_rate > 0:
      dropout_rng = self.make_rng("dropout")
    out = dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=self.head_dim ** -0.5 if self.scale_logits else 1.0,
        dropout_rate=self.dropout_rate, deterministic=ctx.deterministic, dropout_rng=dropout_rng,
        dtype=self.dtype, implementation=self.implementation)
    o_dense = DenseGeneral(features=(inputs_q.shape[-1],), in_axes=("heads", "kv"), out_axes=("embed",),
                           kernel_init=self.kernel_init, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="out")
    d_model = inputs_q.shape[-1]
    return self._site("o", out, o_dense(out), ctx, (self.num_heads, self.head_dim), (d_model,),
                      ("heads", "kv"), ("embed",))

  def _cross_kv(self, inputs_kv, kv_heads, ctx):
    """Keys/values over the encoder output: projected (with their adapter sites)
    at prefill and cached; decoding steps only read them."""
    if ctx.decode_phase == "prefill":
      k = self._proj("key", inputs_kv, kv_heads, ctx)
      v = self._proj("value", inputs_kv, kv_heads, ctx)
      self.variable("cache", "cross_key", jnp.zeros, k.shape, k.dtype).value = k
      self.variable("cache", "cross_value", jnp.zeros, v.shape, v.dtype).value = v
      return k, v
    if not self.has_variable("cache", "cross_key"):
      raise ValueError(f"{self.site_path}: a decoding step before prefill (no cached cross-attention keys)")
    return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")

  def _update_cache(self, k, v, positions):
    initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    cache_len = cached_k.value.shape[1]
    if initialized:
      start = positions[:, 0]
      write = jax.vmap(lambda c, new, s: jax.lax.dynamic_update_slice(c, new.astype(c.dtype), (s, 0, 0)))
      cached_k.value = write(cached_k.value, k, start)
      cached_v.value = write(cached_v.value, v, start)
    # Causal over absolute positions: a query at p sees cached keys 0..p.
    mask = (jnp.arange(cache_len)[None, None, :] <= positions[:, :, None])[:, None]
    return cached_k.value, cached_v.value, mask
