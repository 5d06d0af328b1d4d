"""MiLoRA (Zhang et al. 2024): the LoRA modules of a layer are its experts.

Per layer, one prompt-aware router decides which of the layer's LoRA modules
(Llama: q, k, v, o, gate, up, down; T5: the block's attention and FFN
projections) are active for an example:

  pooling:   u = H' w,  a = softmax(u) over the non-pad prompt tokens,
             p = sum_t a_t h'_t                         (self-attention pooling)
             with h'_t = h_t / RMS(h_t): deep T5/Llama residual streams reach
             std 10-100, which would saturate the pooling softmax and the
             router at init (our choice, as MoA's; the paper states none)
  routing:   g = softmax(W_r R(p)),  R the learnable rational activation
  selection: the top-k modules (default 3) are active; each adds its LoRA
             update, scaled by g_i if `scale_by_prob`
  balance:   L_lb = E * sum_i f_i P_i  (f_i: share of selections, P_i: mean g_i),
             weight 1e-2

The decision is made once per example on the prompt pass and reused for every
decoding step (see prompt_cache). T5 encoder layers pool their own input;
decoder layers pool the encoder output, which is the prompt. In a packed row
each segment is pooled and routed on its own, and every token uses its
segment's decision.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax import segments as pooling, adapters as sites
from moe_jax.peft.lora import ALL_PROJECTIONS, LowRankExperts
from moe_jax.peft.prompt_cache import decide_once
from moe_jax.peft.rational import RationalActivation
from moe_jax.peft.routers import top_k_mask


def _pool_query(module: nn.Module, d: int):
  return module.param("pool_query", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                      (d,), jnp.float32)


def attention_pool(module: nn.Module, hidden, mask):
  """Self-attention pooling p = sum_t softmax_t(h'_t . w) h'_t over real tokens
  (h' = RMS-normalised h): [B, T, D] -> [B, D]."""
  h = pooling.rms_normalize(hidden.astype(jnp.float32))
  scores = jnp.where(mask, h @ _pool_query(module, h.shape[-1]), -1e30)
  return jnp.einsum("bt,btd->bd", jax.nn.softmax(scores, axis=-1), h)


def attention_pool_segments(module: nn.Module, hidden, mask, segment_ids):
  """The same pooling per packed segment: [B, T, D] -> [B, T + 1, D] indexed by
  segment id, and [B, T + 1] marking the segments present."""
  h = pooling.rms_normalize(hidden.astype(jnp.float32))
  n = h.shape[1] + 1
  ids = jnp.where(mask, segment_ids, 0)
  present = (pooling.segment_sums(mask.astype(jnp.float32), ids, n) > 0).at[:, 0].set(False)
  scores = h @ _pool_query(module, h.shape[-1])
  # softmax within each segment, shifted by the segment's own max
  smax = pooling.segment_maxes(jnp.where(mask, scores, -1e30), ids, n)
  e = jnp.where(mask, jnp.exp(scores - jax.lax.stop_gradient(pooling.gather_segments(smax, ids))), 0.0)
  num = pooling.segment_sums(e[..., None] * h, ids, n)
  den = pooling.segment_sums(e, ids, n)
  return num / jnp.maximum(den, 1e-30)[..., None], present


def layer_experts(info: sites.LayerInfo, targets) -> tuple[str, ...]:
  """This layer's expert keys ("block/kind") in a fixed order."""
  return tuple(k for k in info.site_kinds if k.split("/")[1] in targets)


class PromptRouter(nn.Module):
  info: sites.LayerInfo
  experts: tuple[str, ...]
  top_k: int
  scale_by_prob: bool
  load_balance_weight: float

  @nn.compact
  def __call__(self, layer_input: sites.LayerInput, ctx: sites.AdapterContext):
    """{"block/kind": gate} with gates [B] (one decision per row) or, for a
    packed row, [B, T + 1] indexed by segment id."""
    if layer_input.encoded is not None:  # T5 decoder: the prompt is the encoder output
      hidden, mask, seg = layer_input.encoded, layer_input.encoded_mask, layer_input.encoded_segment_ids
    else:
      hidden, mask, seg = layer_input.hidden, layer_input.mask, layer_input.segment_ids
    if mask is None:
      mask = jnp.ones(hidden.shape[:2], bool)
    if seg is not None and ctx.decode_phase is None:
      pooled, present = attention_pool_segments(self, hidden, mask, seg)
      weights = self.route(pooled, present)
    else:
      weights = decide_once(self, ctx, lambda: self.route(attention_pool(self, hidden, mask)),
                            (hidden.shape[0], len(self.experts)))
    return {key: weights[..., i] for i, key in enumerate(self.experts)}

  def route(self, pooled, present=None):
    """pooled [B, D] (or [B, S, D] with `present` [B, S]) -> gates [..., n]."""
    n = len(self.experts)
    logits = nn.Dense(n, use_bias=False, kernel_init=nn.initializers.normal(0.02),
                      param_dtype=jnp.float32, name="router")(RationalActivation(name="activation")(pooled))
    probs = jax.nn.softmax(logits, axis=-1)
    selected = top_k_mask(probs, min(self.top_k, n))
    w = jnp.ones(probs.shape[:-1], jnp.float32) if present is None else present.astype(jnp.float32)
    routed = jnp.maximum(jnp.sum(w), 1.0)
    if self.load_balance_weight > 0:
      f = jnp.sum(selected * w[..., None], range(w.ndim)) / routed / min(self.top_k, n)
      p = jnp.sum(probs * w[..., None], range(w.ndim)) / routed
      self.sow(sites.AUX_LOSS_COLLECTION, "load_balance", self.load_balance_weight * n * jnp.sum(f * p))
    per_row = probs if present is None else (
        jnp.sum(probs * w[..., None], 1) / jnp.maximum(jnp.sum(w, 1), 1.0)[:, None])
    self.sow(sites.ROUTER_STATS_COLLECTION, "expert_probs", per_row)
    return selected * probs if self.scale_by_prob else selected


class MiLoRASite(nn.Module):
  info: sites.SiteInfo
  rank: int
  alpha: float
  a_init: str
  dropout_rate: float

  @nn.compact
  def __call__(self, x, y, ctx):
    gate = ctx.layer_state[f"{self.info.block}/{self.info.kind}"]  # [B] or [B, segments]
    if gate.ndim == 2:  # packed: each token takes its segment's decision
      gate = pooling.gather_segments(gate, sites.site_sequence(self.info, ctx).segment_ids)  # [B, T]
    gate = gate.reshape(gate.shape + (1,) * (x.ndim - len(self.info.in_shape) - gate.ndim) + (1,))
    pair = LowRankExperts(self.info, 1, self.rank, self.a_init, self.dropout_rate, name="pair")
    return y + (self.alpha / self.rank) * pair.mix(x, gate, ctx).astype(y.dtype)


@dataclasses.dataclass(frozen=True)
class MiLoRA(sites.Adapters):
  rank: int = 8
  alpha: float = 16.0
  top_k: int = 3
  scale_by_prob: bool = True
  load_balance_weight: float = 1e-2
  targets: tuple[str, ...] = ALL_PROJECTIONS
  dropout_rate: float = 0.0
  a_init: str = "kaiming_uniform"

  def layer_hook(self, info, name):
    experts = layer_experts(info, self.targets)
    if not experts:
      return None
    return PromptRouter(info, experts, self.top_k, self.scale_by_prob, self.load_balance_weight, name=name)

  def site(self, info, name):
    if info.kind not in self.targets:
      return None
    return MiLoRASite(info, self.rank, self.alpha, self.a_init, self.dropout_rate, name=name)
