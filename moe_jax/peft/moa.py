"""MoA, Mixture-of-LoRAs (Feng et al. 2024): domain LoRAs combined by routers.

Training happens in stages:
  1. each domain's LoRA alone on its data, routed by the given `domain_id`:
     either a one-domain `MoA((name,))` trained by itself and then appended with
     `add_domain`, or in place with `domain_optimizer(tx, params, name)`, which
     updates only that domain's slice of every stacked tensor (the trainer's
     MOA_TRAIN_DOMAIN; a run's checkpoint loads into an MoA with domains
     appended, `grow_domains`);
  2. per-layer routers - a linear classifier over domains on the mean-pooled
     (then RMS-normalised) layer input - trained with cross-entropy against `domain_id` while the
     LoRAs are frozen (`ROUTER_REGEX`, `router_loss_weight` > 0).
Inference routes by the given domain (`mode="given"`), by each layer's own
router (`"per_layer"`), or by one decision for all layers from the routers'
majority vote (`"majority"`) or the last layer's choice (`"last"`), see
`route_by_vote` (a router pass, then a pass with the chosen domain).

Layout: the domains are one expert axis. Each site holds A [D, *in, r] and
B [D, r, *out] (`<site>_adapter/experts/lora_{a,b}`), each layer's classifier
[d_model, D] and a bias [D] (`layer_hook/domain_kernel`, `domain_bias`); domain
ids index `domains` in order. Routing is one-hot, so each example gathers
its domain's pair: one LoRA's arithmetic per site whatever D, and a few
parameter tensors per site for the optimizer (one per domain and site compiled
5x slower on t5_1_1_small). `add_domain` concatenates a new slice along the
domain axis and leaves the existing ones unchanged.

Packed rows: each segment is pooled, classified and supervised on its own
(`domain_id` [B, S], one id per segment, see `sites.ids_by_segment`), and each
token uses its segment's domain. A row then mixes domains, so its sites run
every domain's pair with a one-hot weight per token (D LoRAs' arithmetic, still
rank D*r): gathering a pair per token would hold a [B, T, in, r] copy of A.
"""
from __future__ import annotations

import dataclasses
import json

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from moe_jax import adapters as sites, segments as pooling
from moe_jax.data import ids
from moe_jax.errors import CheckpointError
from moe_jax.models import layer_layout
from moe_jax.models.layer_stack import SCANNED_NAME
from moe_jax.peft.lora import ALL_PROJECTIONS, LowRankExperts
from moe_jax.peft.prompt_cache import decide_once
from moe_jax.peft.trainable import frozen_base_optimizer
from moe_jax.utils import fs
from moe_jax.utils.validation import close_matches


MODES = ("given", "per_layer", "majority", "last")
ROUTER_REGEX = r".*layer_hook/.*"
# Parameters with a leading domain axis: the sites' LoRAs and the classifiers' biases;
# the classifier kernel has it last.
STACKED = ("lora_a", "lora_b", "domain_bias")
ROUTER_KERNEL = "domain_kernel"


def _domain_axis(path) -> int | None:
  """The domain axis of a stacked MoA tensor (after a scanned stack's layer axis), or None."""
  if path[-1] == ROUTER_KERNEL:
    return -1
  if path[-1] in STACKED and any(p.endswith("_adapter") or p == "layer_hook" for p in path):
    return 1 if SCANNED_NAME in path else 0
  return None


def saved_domains(step_dir: str):
  """The MoA domains a run's run.json records (None: not recorded)."""
  info = fs.join(fs.dirname(fs.dirname(step_dir)), "run.json")
  return json.loads(fs.read_text(info)).get("domains") if fs.exists(info) else None


def _domain_index(domains, i: int, name) -> int:
  if name is None:
    if len(domains) == 1:
      return 0
    raise ValueError(f"row {i + 1} names no domain, and MoA routes by the given domain: add a 'domain' field "
                     f"(one of MoA.domains {list(domains)})")
  if name not in domains:
    raise ValueError(f"MoA has no LoRA for domain {name!r} (row {i + 1}; MoA.domains: {list(domains)})"
                     f"{close_matches(name, domains)}")
  return domains.index(name)


def data_domains(adapters: "MoA"):
  """A function mapping a batch's `domain_id` (the data's ids, `moe_jax.data.ids`,
  numbered in registration order) to indices into `adapters.domains`, by
  name. Batches from seqio tasks go through it before reaching an MoA model:
  the two numberings differ. A domain the MoA lacks is an error when the
  domain is used (`given` mode routes by it, router training learns it) and
  left at 0 otherwise."""
  table = ids.current()["domain_ids"]
  lut = np.full(max(table.values(), default=-1) + 1, -1, np.int32)
  for name, i in table.items():
    lut[i] = adapters.domains.index(name) if name in adapters.domains else -1
  used = adapters.mode == "given" or adapters.router_loss_weight > 0

  def remap(batch):
    if "domain_id" not in batch:
      return batch
    data_ids = np.asarray(batch["domain_id"])
    real = data_ids >= 0  # packed batches mark a row's unused segment slots -1
    out = np.where(real, lut[np.where(real, data_ids, 0)], -1)
    missing = sorted({ids.name_of("domain_ids", int(i)) for i in data_ids[real & (out < 0)]})
    if missing and used:
      raise ValueError(f"MoA has no LoRA for the data's domain(s) {missing} (MoA.domains: "
                       f"{list(adapters.domains)}); add them to MoA.domains, leave them out of the mixture, or "
                       "route with mode='majority'/'last'/'per_layer'")
    return dict(batch, domain_id=np.where(real, np.maximum(out, 0), -1).astype(np.int32))
  return remap


def is_domain_lora(path) -> bool:
  """A site's stacked LoRA tensor (what stage 1 trains)."""
  return path[-1] in ("lora_a", "lora_b") and _domain_axis(path) is not None


def domain_slice_only(index: int, trainable) -> optax.GradientTransformation:
  """Zeroes every update of the stacked LoRA tensors in `trainable` except
  domain `index`'s slice (stage 1 of one domain, in place)."""
  flat = traverse_util.flatten_dict(trainable)
  keep = {}
  for k, v in flat.items():
    if is_domain_lora(k):
      axis = _domain_axis(k)
      shape = [1] * v.ndim
      shape[axis] = v.shape[axis]
      keep[k] = (jnp.arange(v.shape[axis]) == index).reshape(shape).astype(jnp.float32)

  def zero_others(updates, state, params=None):
    del params
    fu = traverse_util.flatten_dict(updates)
    return traverse_util.unflatten_dict({k: (u * keep[k]).astype(u.dtype) if k in keep else u
                                         for k, u in fu.items()}), state
  return optax.GradientTransformation(lambda p: optax.EmptyState(), zero_others)


def grow_domains(source, target, where: str):
  """`source` (an MoA checkpoint with fewer domains) in `target`'s shapes: each
  stacked tensor keeps its saved domains as the leading slices and takes the
  new domains' slices from `target` (their fresh initialisation), as
  `add_domain` does. Returns (source, the grown parameters' names)."""
  flat_s, flat_t = traverse_util.flatten_dict(source), traverse_util.flatten_dict(target)
  out, grown = dict(flat_s), []
  for k, v in flat_s.items():
    axis = _domain_axis(k)
    if axis is None or k not in flat_t or tuple(np.shape(v)) == tuple(flat_t[k].shape):
      continue
    t = flat_t[k]
    a = axis % t.ndim
    saved, wanted = np.shape(v)[a], t.shape[a]
    same_rest = np.delete(np.shape(v), a).tolist() == np.delete(t.shape, a).tolist()
    if not same_rest or saved > wanted:
      continue  # a real mismatch: partial_restore names it
    fresh = np.asarray(jax.lax.slice_in_dim(t, saved, wanted, axis=a))
    out[k] = np.concatenate([np.asarray(v, fresh.dtype), fresh], axis=a)
    grown.append(f"{'/'.join(k)} (domains {saved}..{wanted - 1} new)")
  return traverse_util.unflatten_dict(out), grown


class DomainRouter(nn.Module):
  info: sites.LayerInfo
  domains: tuple[str, ...]
  mode: str
  router_loss_weight: float

  @nn.compact
  def __call__(self, layer_input: sites.LayerInput, ctx: sites.AdapterContext):
    if layer_input.encoded is not None:  # T5 decoder: route on the prompt (encoder output)
      hidden, mask, seg = layer_input.encoded, layer_input.encoded_mask, layer_input.encoded_segment_ids
    else:
      hidden, mask, seg = layer_input.hidden, layer_input.mask, layer_input.segment_ids
    if mask is None:
      mask = jnp.ones(hidden.shape[:2], bool)
    if seg is not None and ctx.decode_phase is None:  # packed rows: one decision per segment
      pooled, present = _pool_segments(hidden, mask, seg)
      return self.route(pooled, ctx, present)  # [B, S + 1, D] indexed by segment id
    n = len(self.domains)
    return decide_once(self, ctx, lambda: self.route(_pool(hidden, mask), ctx), (hidden.shape[0], n))

  def route(self, pooled, ctx, present=None):
    """One-hot domains [B, D] for pooled [B, d_model], or [B, S, D] for
    per-segment pools [B, S, d_model] (`present` [B, S] marks real segments)."""
    n = len(self.domains)
    # Parameter-free RMS normalisation: residual streams grow with depth, and a
    # classifier on raw magnitudes saturates (and stops learning) in deep layers.
    pooled = pooled * jax.lax.rsqrt(jnp.mean(jnp.square(pooled), -1, keepdims=True) + 1e-6)
    w = self.param(ROUTER_KERNEL, nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "expert")),
                   (pooled.shape[-1], n), jnp.float32)
    b = self.param("domain_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("expert",)), (n,),
                   jnp.float32)
    logits = pooled @ w + b
    self.sow(sites.ROUTER_STATS_COLLECTION, "domain_logits", _per_row(logits, present))
    given = None
    if "domain_id" in ctx.features:
      given = ctx.features["domain_id"] if present is None else sites.ids_by_segment(ctx, "domain_id",
                                                                                     logits.shape[1])
      if given.ndim != logits.ndim - 1:
        raise ValueError(f"MoA: 'domain_id' of shape {given.shape} for routing {logits.shape[:-1]} "
                         "(per-segment ids [B, S] need a packed batch)")
    if self.router_loss_weight > 0 and given is not None:
      xent = -jnp.take_along_axis(jax.nn.log_softmax(logits), given[..., None], -1)[..., 0]
      # the mean over examples: rows unpacked, real segments packed
      mean = jnp.mean(xent) if present is None else jnp.sum(xent * present) / jnp.maximum(jnp.sum(present), 1)
      self.sow(sites.AUX_LOSS_COLLECTION, "domain_router_xent", self.router_loss_weight * mean)
    if self.mode == "per_layer":
      return jax.nn.one_hot(jnp.argmax(logits, -1), n)
    if given is None:
      raise KeyError(f"MoA mode={self.mode!r} needs a 'domain_id' batch feature "
                     "(majority/last: use moa.route_by_vote first)")
    return jax.nn.one_hot(given, n)


def _pool(hidden, mask):
  """Mean over each row's real tokens: [B, T, d] -> [B, d]."""
  m = mask.astype(jnp.float32)[..., None]
  return jnp.sum(hidden.astype(jnp.float32) * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)


def _pool_segments(hidden, mask, segment_ids):
  """Mean over each packed segment's real tokens: [B, T, d] -> [B, T + 1, d]
  indexed by segment id, and [B, T + 1] marking the segments present."""
  n = hidden.shape[1] + 1  # segment ids are <= T
  ids = jnp.where(mask, segment_ids, 0)
  m = mask.astype(jnp.float32)
  sums = pooling.segment_sums(hidden.astype(jnp.float32) * m[..., None], ids, n)
  counts = pooling.segment_sums(m, ids, n)
  present = (counts > 0).at[:, 0].set(False).astype(jnp.float32)
  return sums / jnp.maximum(counts, 1.0)[..., None], present


def _per_row(logits, present):
  """Router logits per row for the statistics (route_by_vote reads them per
  example): a packed row's is the mean over its segments."""
  if present is None:
    return logits
  return jnp.sum(logits * present[..., None], 1) / jnp.maximum(jnp.sum(present, 1), 1.0)[:, None]


class MoASite(nn.Module):
  """Every domain's LoRA as one expert tensor; each example gathers the pair
  of its (one-hot) domain and runs that single LoRA."""
  info: sites.SiteInfo
  domains: tuple[str, ...]
  rank: int
  alpha: float
  a_init: str
  dropout_rate: float

  @nn.compact
  def __call__(self, x, y, ctx):
    experts = LowRankExperts(self.info, len(self.domains), self.rank, self.a_init, name="experts")
    n_in = len(self.info.in_shape)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=ctx.deterministic)
    scale = self.alpha / self.rank
    if ctx.layer_state.ndim == 3:  # packed: one-hot [B, S + 1, D] per segment id
      onehot = sites.per_token(ctx.layer_state, self.info, ctx)  # [B, T, D]
      onehot = onehot.reshape(onehot.shape[:2] + (1,) * (x.ndim - n_in - 2) + onehot.shape[2:])
      return y + scale * experts.mix(x, onehot, ctx).astype(y.dtype)
    domain = jnp.argmax(ctx.layer_state, axis=-1)  # [B]: layer_state is one-hot [B, D]
    flat = x.reshape(x.shape[:1] + (-1, int(np.prod(self.info.in_shape))))  # [B, T, f]
    a = jnp.asarray(experts.lora_a, x.dtype).reshape(len(self.domains), -1, self.rank)[domain]  # [B, f, r]
    b = jnp.asarray(experts.lora_b, x.dtype).reshape(len(self.domains), self.rank, -1)[domain]  # [B, r, o]
    delta = jnp.einsum("btr,bro->bto", jnp.einsum("btf,bfr->btr", flat, a), b)
    delta = delta.reshape(x.shape[:-n_in] + self.info.out_shape)
    return y + scale * delta.astype(y.dtype)


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

  def batch_preparer(self):
    """Host-side, per batch: the data's domain ids as indices into `domains`."""
    return data_domains(self)

  def check_restore(self, step_dir: str) -> None:
    """A checkpoint loads into an MoA whose domains start with the saved ones,
    in order (a stacked tensor's slice i is domain i)."""
    saved, now = saved_domains(step_dir), list(self.domains)
    if saved is not None and now[:len(saved)] != list(saved):
      raise CheckpointError(f"{step_dir}: MoA domains {saved} must be the first domains of this configuration's "
                            f"{now} (new domains are appended at the end)")

  def adapt_restored(self, source, params, step_dir: str):
    """A run with fewer domains: saved slices kept, new domains' slices fresh."""
    source, grown = grow_domains(source, params, step_dir)
    if grown:
      saved = saved_domains(step_dir)
      print(f"MoA: {step_dir} holds {len(saved) if saved else 'fewer'} domains, this configuration "
            f"{len(self.domains)}: {len(grown)} stacked tensors grew, the saved slices are unchanged")
    return source

  def regrown_frozen(self, recorded_shapes: dict, current_shapes: dict) -> set:
    """Frozen stacked tensors (e.g. routers untrained in stage 1) with more
    domains now: fresh from the init either way (the order is checked by
    `check_restore`)."""
    grown = set()
    for name, shape in recorded_shapes.items():
      now = current_shapes.get(name)
      if now is None or list(now) == list(shape):
        continue
      axis = _domain_axis(tuple(name.split("/")))  # unrolled names: no layer axis
      if axis is not None and len(now) == len(shape) and all(
          a == b for i, (a, b) in enumerate(zip(now, shape)) if i != axis % len(shape)):
        grown.add(name)
    return grown

  def train_slice(self, which: str, params, trainable_regex):
    """Stage 1 of one domain in place: only its slices of the sites' LoRAs train."""
    if which not in self.domains:
      raise ValueError(f"MOA_TRAIN_DOMAIN={which!r} is not one of MoA.domains {list(self.domains)}"
                       f"{close_matches(which, self.domains)}")
    if trainable_regex is not None:
      raise ValueError("set TRAINABLE_REGEX or MOA_TRAIN_DOMAIN, not both (MOA_TRAIN_DOMAIN trains that "
                       "domain's LoRA slices only)")
    mask = traverse_util.unflatten_dict({k: is_domain_lora(k) for k in traverse_util.flatten_dict(params)})
    index = self.domains.index(which)
    return mask, lambda trainable: domain_slice_only(index, trainable)

  def row_features(self, rows: list) -> dict:
    """Each row's index into `domains`, matched by the row's `domain` name.
    Only `given` routing reads it; the other modes' routers choose, so they
    get zeros and ignore the rows' domains, as in training."""
    if self.mode != "given":
      return {"domain_id": np.zeros(len(rows), np.int32)}
    return {"domain_id": np.array([_domain_index(self.domains, i, r.get("domain")) for i, r in enumerate(rows)],
                                  np.int32)}

  def decode_batch(self, model, params, batch: dict) -> dict:
    """majority/last: the routers vote on the prompts first."""
    if self.mode not in ("majority", "last") or "domain_id" not in batch:
      return batch
    probe = batch
    if model.config.family != "decoder":  # a T5 pass needs decoder tokens; routers read the prompt only
      probe = dict(batch, decoder_input_tokens=np.zeros((len(batch["domain_id"]), 1), np.int32))
    return dict(batch, domain_id=np.asarray(route_by_vote(model, params, probe, self.mode)["domain_id"]))

  def layer_hook(self, info, name):
    # majority/last are resolved to a given domain_id by route_by_vote.
    mode = "given" if self.mode in ("majority", "last") else self.mode
    return DomainRouter(info, self.domains, mode, self.router_loss_weight, name=name)

  def site(self, info, name):
    if info.kind not in self.targets:
      return None
    return MoASite(info, self.domains, self.rank, self.alpha, self.a_init, self.dropout_rate, name=name)

  def add_domain(self, params, new_domain_params, name: str, index: int = -1):
    """(MoA with `name` appended, params with its slice concatenated).

    `new_domain_params` is a params tree of an MoA holding the new domain at
    position `index` of its domains (default: the last, as in `init` of the
    extended MoA or a one-domain MoA trained alone). Every stacked tensor gets
    that slice appended along its domain axis; existing slices and all other
    parameters are copied unchanged.
    """
    if name in self.domains:
      raise ValueError(f"domain {name!r} already present in {self.domains}")
    flat = traverse_util.flatten_dict(params)
    source = traverse_util.flatten_dict(new_domain_params)
    out, added = {}, 0
    for k, v in flat.items():
      axis = _domain_axis(k)
      if axis is None:
        out[k] = v
        continue
      if k not in source:
        raise KeyError(f"new_domain_params has no {'/'.join(k)} (domain {name!r})")
      src = jnp.asarray(source[k])
      if src.ndim != v.ndim or np.delete(src.shape, axis % v.ndim).tolist() != np.delete(v.shape, axis % v.ndim).tolist():
        raise ValueError(f"{'/'.join(k)}: new_domain_params has shape {src.shape}, params {v.shape}")
      piece = jax.lax.index_in_dim(src, index, axis % src.ndim, keepdims=True)
      out[k] = jnp.concatenate([v, piece.astype(v.dtype)], axis=axis)
      added += 1
    if not added:
      raise KeyError("params hold no MoA parameters (no stacked lora_a/lora_b/domain_* tensors)")
    extended = dataclasses.replace(self, domains=self.domains + (name,))
    return extended, traverse_util.unflatten_dict(out)


def domain_optimizer(tx: optax.GradientTransformation, params, name_or_index, domains=None):
  """`tx` restricted to one domain's LoRA (stage 1 in place): the LoRAs'
  stacked tensors are the only trainable leaves, and every other domain's
  slice gets exactly zero update (what a regex over a per-domain subtree did).
  `name_or_index`: a domain id, or a name looked up in `domains`."""
  d = name_or_index if isinstance(name_or_index, int) else list(domains).index(name_or_index)
  flat = traverse_util.flatten_dict(params)
  lora = {k: is_domain_lora(k) for k in flat}
  if not any(lora.values()):
    raise ValueError("params hold no MoA LoRA tensors")
  only_slice = domain_slice_only(d, traverse_util.unflatten_dict({k: v for k, v in flat.items() if lora[k]}))
  mask = traverse_util.unflatten_dict(lora)
  return frozen_base_optimizer(optax.chain(tx, only_slice), mask)


def route_by_vote(model, params, batch, rule: str = "majority"):
  """Returns `batch` with `domain_id` chosen by all layers' routers.

  `model` must carry an MoA; its routers are run once (each layer routing on
  its own input), then "majority" takes the most frequent per-layer choice
  (ties: the lowest domain id) and "last" the final layer's choice.
  """
  if rule not in ("majority", "last"):
    raise ValueError(f"rule={rule!r}; expected 'majority' or 'last'")
  if "encoder_segment_ids" in batch or "decoder_segment_ids" in batch:
    raise ValueError("route_by_vote chooses one domain per row: give it unpacked rows")
  moa: MoA = model.adapters
  probe = type(model)(model.config, dataclasses.replace(moa, mode="per_layer"))
  _, stats = probe.apply_with_state(params, batch, mutable=(sites.ROUTER_STATS_COLLECTION,))
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
