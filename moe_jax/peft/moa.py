"""MoA, Mixture-of-LoRAs (Feng et al. 2024): domain LoRAs combined by routers.

Training happens in stages, each a trainable-parameter regex over one tree:
  1. each domain's LoRA alone on its data, routed by the given `domain_id`
     (`domain_regex(name)`; the other domains' LoRAs are frozen or absent);
  2. per-layer routers - a linear classifier over domains on the mean-pooled
     (then RMS-normalised) layer input - trained with cross-entropy against `domain_id` while the
     LoRAs are frozen (`ROUTER_REGEX`, `router_loss_weight` > 0).
Inference routes by the given domain (`mode="given"`), by each layer's own
router (`"per_layer"`), or by one decision for all layers from the routers'
majority vote (`"majority"`) or the last layer's choice (`"last"`), see
`route_by_vote` (a router pass, then a pass with the chosen domain).

Each domain owns separate parameters (`<site>_adapter/<domain>/...` and
`layer_hook/<domain>/...`), so `add_domain` appends a new domain without
touching any existing parameter. Domain ids index `domains` in order.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from moe_jax.peft import sites
from moe_jax.peft.lora import ALL_PROJECTIONS, LowRankExperts
from moe_jax.peft.prompt_cache import decide_once

MODES = ("given", "per_layer", "majority", "last")
ROUTER_REGEX = r".*layer_hook/.*"


def domain_regex(domain: str) -> str:
  """Trainable regex for one domain's LoRA."""
  return rf".*_adapter/{domain}/.*"


class DomainScore(nn.Module):
  """One domain's column of the layer's classifier."""

  @nn.compact
  def __call__(self, pooled):
    w = self.param("w", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                   pooled.shape[-1:], jnp.float32)
    b = self.param("b", nn.initializers.zeros, (), jnp.float32)
    return pooled @ w + b


class DomainRouter(nn.Module):
  info: sites.LayerInfo
  domains: tuple[str, ...]
  mode: str
  router_loss_weight: float

  @nn.compact
  def __call__(self, layer_input: sites.LayerInput, ctx: sites.AdapterContext):
    if layer_input.encoded is not None:  # T5 decoder: route on the prompt (encoder output)
      hidden, mask = layer_input.encoded, layer_input.encoded_mask
    else:
      hidden, mask = layer_input.hidden, layer_input.mask
    if mask is None:
      mask = jnp.ones(hidden.shape[:2], bool)
    n = len(self.domains)
    return decide_once(self, ctx, lambda: self.route(hidden, mask, ctx), (hidden.shape[0], n))

  def route(self, hidden, mask, ctx):
    m = mask.astype(jnp.float32)[..., None]
    pooled = jnp.sum(hidden.astype(jnp.float32) * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    # Parameter-free RMS normalisation: residual streams grow with depth, and a
    # classifier on raw magnitudes saturates (and stops learning) in deep layers.
    pooled = pooled * jax.lax.rsqrt(jnp.mean(jnp.square(pooled), -1, keepdims=True) + 1e-6)
    logits = jnp.stack([DomainScore(name=d)(pooled) for d in self.domains], axis=-1)
    self.sow(sites.ROUTER_STATS_COLLECTION, "domain_logits", logits)
    given = ctx.features.get("domain_id")
    if self.router_loss_weight > 0 and given is not None:
      xent = -jnp.take_along_axis(jax.nn.log_softmax(logits), given[:, None], -1)[:, 0]
      self.sow(sites.AUX_LOSS_COLLECTION, "domain_router_xent", self.router_loss_weight * jnp.mean(xent))
    if self.mode == "per_layer":
      return jax.nn.one_hot(jnp.argmax(logits, -1), len(self.domains))
    if given is None:
      raise KeyError(f"MoA mode={self.mode!r} needs a 'domain_id' batch feature "
                     "(majority/last: use moa.route_by_vote first)")
    return jax.nn.one_hot(given, len(self.domains))


class MoASite(nn.Module):
  info: sites.SiteInfo
  domains: tuple[str, ...]
  rank: int
  alpha: float
  a_init: str
  dropout_rate: float

  @nn.compact
  def __call__(self, x, y, ctx):
    weights = ctx.layer_state  # [B, n_domains], one-hot
    lead = (1,) * (x.ndim - len(self.info.in_shape) - 1)
    delta = 0
    for i, d in enumerate(self.domains):
      pair = LowRankExperts(self.info, 1, self.rank, self.a_init, self.dropout_rate, name=d)
      w = weights[:, i].reshape((-1,) + lead + (1,))
      delta = delta + pair.mix(x, w, ctx)
    return y + (self.alpha / self.rank) * delta.astype(y.dtype)


@dataclasses.dataclass(frozen=True)
class MoA(sites.Adapters):
  domains: tuple[str, ...] = ("domain_0",)
  mode: str = "given"
  rank: int = 8
  alpha: float = 16.0
  router_loss_weight: float = 0.0  # > 0 in the router-training stage
  targets: tuple[str, ...] = ALL_PROJECTIONS
  dropout_rate: float = 0.0
  a_init: str = "kaiming_uniform"

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"MoA mode={self.mode!r}; expected one of {MODES}")
    if len(set(self.domains)) != len(self.domains) or not self.domains:
      raise ValueError(f"MoA domains must be non-empty and distinct: {self.domains}")

  def layer_hook(self, info, name):
    # majority/last are resolved to a given domain_id by route_by_vote.
    mode = "given" if self.mode in ("majority", "last") else self.mode
    return DomainRouter(info, self.domains, mode, self.router_loss_weight, name=name)

  def site(self, info, name):
    if info.kind not in self.targets:
      return None
    return MoASite(info, self.domains, self.rank, self.alpha, self.a_init, self.dropout_rate, name=name)

  def add_domain(self, params, new_domain_params, name: str):
    """(MoA with `name` appended, params with the new domain's subtrees added).

    `new_domain_params` is any params tree containing `name`'s subtrees (e.g.
    from `init` of the extended MoA, or a separately trained one-domain MoA).
    Existing entries are copied unchanged.
    """
    if name in self.domains:
      raise ValueError(f"domain {name!r} already present in {self.domains}")
    flat = traverse_util.flatten_dict(params)
    new = {k: v for k, v in traverse_util.flatten_dict(new_domain_params).items() if name in k}
    if not new:
      raise KeyError(f"no parameters of domain {name!r} in new_domain_params")
    clash = sorted("/".join(k) for k in set(new) & set(flat))
    if clash:
      raise ValueError(f"domain {name!r} would overwrite {clash[:3]}")
    extended = dataclasses.replace(self, domains=self.domains + (name,))
    return extended, traverse_util.unflatten_dict({**flat, **new})


def route_by_vote(model, params, batch, rule: str = "majority"):
  """Returns `batch` with `domain_id` chosen by all layers' routers.

  `model` must carry an MoA; its routers are run once (each layer routing on
  its own input), then "majority" takes the most frequent per-layer choice
  (ties: the lowest domain id) and "last" the final layer's choice.
  """
  if rule not in ("majority", "last"):
    raise ValueError(f"rule={rule!r}; expected 'majority' or 'last'")
  moa: MoA = model.adapters
  probe = type(model)(model.config, dataclasses.replace(moa, mode="per_layer"))
  _, stats = probe._apply(params, batch, mutable=(sites.ROUTER_STATS_COLLECTION,))
  from moe_jax.models import layer_layout
  flat = traverse_util.flatten_dict(layer_layout.unstack_layers(stats[sites.ROUTER_STATS_COLLECTION]))
  layers = sorted((k for k in flat if k[-1] == "domain_logits"), key=_layer_order)
  choices = np.stack([np.argmax(np.asarray(flat[k][0]), -1) for k in layers], 0)  # [L, B]
  if rule == "last":
    chosen = choices[-1]
  else:
    counts = np.stack([(choices == d).sum(0) for d in range(len(moa.domains))], -1)
    chosen = np.argmax(counts, -1)
  return dict(batch, domain_id=jnp.asarray(chosen, jnp.int32))


def _layer_order(key):
  """Encoder layers first, then decoder layers, each by index."""
  stack = 0 if "encoder" in key else 1
  layer = next(int(p.split("_")[1]) for p in key if p.startswith("layers_"))
  return stack, layer
