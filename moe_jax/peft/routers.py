"""Softmax routers shared by the mixture methods (MoV, MoLoRA, MiLoRA).

A router is a bias-free dense layer (kernel ~ N(0, 0.02)) computed in float32
whatever the model dtype, followed by a softmax over experts (Zadouri et al.
2023: p = softmax(W_g x)). Options: routing per token (the released MoV code: the router
reads the activation being adapted), per sentence or from a provided
`routing_embedding` feature; top-k with or without
renormalising the kept probabilities; multiplicative jitter noise on the router
input during training; Switch-Transformer load-balancing loss
E * sum_e f_e P_e (Fedus et al. 2021, eq. 4) and router z-loss
mean(logsumexp(logits)^2) (Zoph et al. 2022, eq. 5), each sown with its own
weight (0 by default, as the released code).

Sentence routing (not in the released code; our definition): the router reads
the mean of its input over the token's own sequence - the whole segment in the
encoder (and for cross-attention keys/values), the tokens up to and including
the current one in a decoder, so training never looks ahead and cached
decoding (a running sum in the 'cache' collection) computes the same thing.
Packed rows are pooled per segment.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax import segments as pooling, adapters as sites
from moe_jax.kernels import hand_gradients, thin_matmul

ROUTING_MODES = ("token", "sentence", "embedding")


@dataclasses.dataclass(frozen=True)
class RouterConfig:
  num_experts: int
  routing: str = "token"
  top_k: Optional[int] = None  # None: soft merge over all experts
  renormalize: bool = False  # after top-k, rescale the kept probabilities to sum to 1
  jitter_noise: float = 0.0
  load_balance_weight: float = 0.0
  z_loss_weight: float = 0.0

  def __post_init__(self):
    if self.routing not in ROUTING_MODES:
      raise ValueError(f"routing={self.routing!r}; expected one of {ROUTING_MODES}")
    if self.top_k is not None and not 1 <= self.top_k <= self.num_experts:
      raise ValueError(f"top_k={self.top_k} must be in [1, num_experts={self.num_experts}]")


@dataclasses.dataclass(frozen=True)
class RoutedOptions:
  """Router settings shared by the per-site mixture methods (MoV, MoLoRA).

  With top-k the released code multiplies the probabilities by the top-k mask
  without renormalising them (its configs leave top-k off: a soft merge over
  all experts); `renormalize=True` rescales the kept ones to sum to 1.
  """
  num_experts: int = 10
  routing: str = "token"
  top_k: Optional[int] = None
  renormalize: bool = False
  jitter_noise: float = 0.0
  load_balance_weight: float = 0.0
  z_loss_weight: float = 0.0

  def router_config(self) -> RouterConfig:
    return RouterConfig(self.num_experts, self.routing, self.top_k, self.renormalize,
                        self.jitter_noise, self.load_balance_weight, self.z_loss_weight)


def top_k_mask(probs: jax.Array, k: int) -> jax.Array:
  """1 on exactly the k largest entries of the last axis (ties broken by index)."""
  _, idx = jax.lax.top_k(probs, k)
  return jnp.sum(jax.nn.one_hot(idx, probs.shape[-1], dtype=probs.dtype), axis=-2)


def select_top_k(probs: jax.Array, k: Optional[int], renormalize: bool) -> jax.Array:
  if k is None or k == probs.shape[-1]:
    return probs
  kept = probs * top_k_mask(probs, k)
  if renormalize:
    kept = kept / jnp.sum(kept, axis=-1, keepdims=True)
  return kept


def load_balance_loss(probs: jax.Array, weights: jax.Array) -> jax.Array:
  """Switch loss E * sum_e f_e P_e over routed items [N, E] with weights [N]."""
  num_experts = probs.shape[-1]
  total = jnp.maximum(jnp.sum(weights), 1.0)
  top1 = jax.nn.one_hot(jnp.argmax(probs, -1), num_experts)
  f = jnp.sum(top1 * weights[:, None], 0) / total
  p = jnp.sum(probs * weights[:, None], 0) / total
  return num_experts * jnp.sum(f * p)


def router_z_loss(logits: jax.Array, weights: jax.Array) -> jax.Array:
  z = jax.nn.logsumexp(logits, axis=-1)
  return jnp.sum(jnp.square(z) * weights) / jnp.maximum(jnp.sum(weights), 1.0)


class Router(nn.Module):
  """Routes the items of `x` [B, T, ..., F] (F: the router's input features).

  Returns probabilities [B, T, ..., E] (after top-k). Token routing gives every
  (token, ...) its own mixture; sentence/embedding routing give one mixture per
  example, broadcast over tokens.
  """
  config: RouterConfig

  def fusable(self, x: jax.Array, ctx: sites.AdapterContext) -> bool:
    """Whether `__call__(..., fused_kernel=...)` computes its logits and the
    caller's projection of the same x in one matmul: token routing on float32
    inputs, no jitter noise in play."""
    cfg = self.config
    return (cfg.routing == "token" and x.dtype == jnp.float32
            and (cfg.jitter_noise == 0 or ctx.deterministic))

  def mixable(self, x: jax.Array, ctx: sites.AdapterContext) -> bool:
    """Whether `__call__(..., mixer=...)` may hand the logits to the caller:
    `fusable`, a soft merge over all experts and no z-loss (both need what
    the mixer does not return), no rematerialisation (a mixer's custom
    gradient would keep its residuals whatever the remat policy), and a
    platform the mixers' hand-written gradients are for (hand_gradients.py)."""
    cfg = self.config
    return (self.fusable(x, ctx) and cfg.z_loss_weight == 0 and cfg.top_k is None
            and not ctx.rematerialised and hand_gradients.enabled())

  @nn.compact
  def __call__(self, x: jax.Array, ctx: sites.AdapterContext,
               seq: Optional[sites.SiteSequence] = None, fused_kernel: Optional[jax.Array] = None,
               mixer=None):
    """`seq`: x's tokens (real-token mask, segments, causality); default: all
    real, one sequence per row, not causal.

    With `fused_kernel` [F, K] (only where `fusable`), returns (probs, x @
    fused_kernel) from one matmul with the router kernel concatenated: x is
    read once for both, forward and backward (MoLoRA's down projection)."""
    cfg = self.config
    batch, length = x.shape[:2]
    if seq is None or seq.mask is None:
      seq = sites.SiteSequence(jnp.ones((batch, length), bool), None if seq is None else seq.segment_ids,
                               False if seq is None else seq.causal)
    token_mask = seq.mask
    inputs = x.astype(jnp.float32)
    if cfg.routing == "sentence":
      inputs = self._sentence(inputs, seq, ctx)
    elif cfg.routing == "embedding":
      if "routing_embedding" not in ctx.features:
        raise KeyError("routing='embedding' needs a 'routing_embedding' batch feature [B, D]")
      emb = ctx.features["routing_embedding"].astype(jnp.float32)
      inputs = emb.reshape((batch, 1) + (1,) * (x.ndim - 3) + emb.shape[-1:])
    if cfg.jitter_noise > 0 and not ctx.deterministic:
      noise = jax.random.uniform(self.make_rng("dropout"), inputs.shape, jnp.float32,
                                 1.0 - cfg.jitter_noise, 1.0 + cfg.jitter_noise)
      inputs = inputs * noise
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                               ("router_in", "expert")),
                        (inputs.shape[-1], cfg.num_experts), jnp.float32)
    if mixer is not None:
      if not self.mixable(x, ctx):
        raise ValueError(f"router {cfg} on a {x.dtype} input: the mixer cannot compute its probabilities")
      result, probs = mixer(inputs, kernel)
      self._losses_and_stats(None, probs, token_mask)
      return probs, result
    if fused_kernel is not None:
      if not self.fusable(x, ctx):
        raise ValueError(f"router input {x.dtype} with routing={cfg.routing!r}: cannot fuse")
      both = thin_matmul.down(inputs, jnp.concatenate([kernel, fused_kernel.astype(kernel.dtype)], axis=1), ctx)
      logits, projected = both[..., :cfg.num_experts], both[..., cfg.num_experts:]
    else:
      logits = thin_matmul.down(inputs, kernel, ctx)
    probs = jax.nn.softmax(logits, axis=-1)
    self._losses_and_stats(logits, probs, token_mask)
    kept = select_top_k(probs, cfg.top_k, cfg.renormalize)
    kept = jnp.broadcast_to(kept, x.shape[:-1] + (cfg.num_experts,))
    return (kept, projected) if fused_kernel is not None else kept

  def _sentence(self, x, seq, ctx):
    if not seq.causal:
      return pooling.masked_mean(x, seq.mask, seq.segment_ids)
    if ctx.decode_phase is None:
      return pooling.prefix_mean(x, seq.mask, seq.segment_ids)
    # Cached decoding: carry the sum and count of the tokens seen so far.
    b = x.shape[0]
    total = self.variable("cache", "sentence_sum", jnp.zeros, (b,) + x.shape[2:], jnp.float32)
    count = self.variable("cache", "sentence_count", jnp.zeros, (b,), jnp.float32)
    m = seq.mask.astype(jnp.float32)
    sums = total.value[:, None] + jnp.cumsum(x * m.reshape(m.shape + (1,) * (x.ndim - 2)), axis=1)
    counts = count.value[:, None] + jnp.cumsum(m, axis=1)
    total.value, count.value = sums[:, -1], counts[:, -1]
    return sums / jnp.maximum(counts, 1.0).reshape(counts.shape + (1,) * (x.ndim - 2))

  def _losses_and_stats(self, logits, probs, token_mask):
    cfg = self.config
    batch = probs.shape[0]
    per_token = probs.shape[1] != 1 or token_mask.shape[1] == 1
    m = token_mask.astype(jnp.float32) if per_token else jnp.ones((batch, 1), jnp.float32)
    m = jnp.broadcast_to(m.reshape(m.shape + (1,) * (probs.ndim - 3)), probs.shape[:-1])
    flat_p, flat_m = probs.reshape(-1, cfg.num_experts), m.reshape(-1)
    if cfg.load_balance_weight > 0:
      self.sow(sites.AUX_LOSS_COLLECTION, "load_balance",
               cfg.load_balance_weight * load_balance_loss(flat_p, flat_m))
    if cfg.z_loss_weight > 0:
      z_loss = router_z_loss(logits.reshape(-1, cfg.num_experts), flat_m)
      self.sow(sites.AUX_LOSS_COLLECTION, "router_z_loss", cfg.z_loss_weight * z_loss)
    if self.is_mutable_collection(sites.ROUTER_STATS_COLLECTION):
      pm = m.reshape(batch, -1)
      pp = probs.reshape(batch, -1, cfg.num_experts)
      per_example = jnp.sum(pp * pm[..., None], 1) / jnp.maximum(jnp.sum(pm, 1), 1.0)[:, None]
      self.sow(sites.ROUTER_STATS_COLLECTION, "expert_probs", per_example)  # [B, E]
