"""The adapter-site contract between backbones and PEFT methods.

Backbones know no method: every projection goes through `apply_site`, every
layer calls `apply_layer_hook`, and the model runs its `model_hook` module once
per forward pass (its output is `ctx.model_state`). A method is an `Adapters` subclass that returns Flax modules for
the sites it wants (and None elsewhere). Per-example information travels in one
`AdapterContext` instead of a growing list of keyword arguments.

Module signatures a method implements:
  site module:        __call__(x, y, ctx) -> y'      (x: site input, y: site output)
  layer hook module:  __call__(layer_input: LayerInput, ctx) -> layer_state
  model hook module:  __call__(ctx) -> model_state

Auxiliary training losses are sown into the `AUX_LOSS_COLLECTION` collection
(already weighted); router statistics for logging into `ROUTER_STATS_COLLECTION`.
Variables a method keeps in the 'cache' collection must have the batch as
their leading axis (beam search reorders the cache along it).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax import segments as pooling

AUX_LOSS_COLLECTION = "aux_loss"
ROUTER_STATS_COLLECTION = "router_stats"

# Site kinds, by block. T5 1.0 uses `wi` where T5 v1.1 has `wi_0`/`wi_1`.
ATTENTION_KINDS = ("q", "k", "v", "o")
T5_MLP_KINDS = ("wi", "wi_0", "wi_1", "wo")
LLAMA_MLP_KINDS = ("gate", "up", "down")
FFN_HIDDEN = "ffn_hidden"  # post-activation intermediate, the input of wo/down


@dataclasses.dataclass(frozen=True)
class SiteInfo:
  """Static description of one adapter site."""
  path: str  # e.g. "encoder/layer_3/self_attention/k"
  stack: str  # "encoder" | "decoder"
  layer: int
  block: str  # "self_attention" | "cross_attention" | "mlp"
  kind: str  # one of ATTENTION_KINDS, *_MLP_KINDS or FFN_HIDDEN
  in_shape: tuple[int, ...]  # trailing feature dims of x
  out_shape: tuple[int, ...]  # trailing feature dims of y
  in_axes: tuple[str, ...]  # logical axis names of those dims
  out_axes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """Static description of one transformer layer, for per-layer hooks."""
  path: str  # e.g. "decoder/layer_2"
  stack: str
  layer: int
  num_layers: int
  d_model: int
  site_kinds: tuple[str, ...]  # kinds of the projections in this layer


@flax.struct.dataclass
class LayerInput:
  """What a per-layer hook sees."""
  hidden: jax.Array  # [B, T, d_model] hidden states entering the layer
  mask: Optional[jax.Array]  # [B, T] 1 for real tokens
  encoded: Optional[jax.Array] = None  # [B, S, d_model] encoder output (T5 decoder)
  encoded_mask: Optional[jax.Array] = None  # [B, S]
  segment_ids: Optional[jax.Array] = None  # [B, T] packed segments of `hidden` (None: unpacked)
  encoded_segment_ids: Optional[jax.Array] = None  # [B, S]


@flax.struct.dataclass
class AdapterContext:
  """Per-example context shared by every site of one forward pass."""
  features: dict[str, jax.Array]  # task_id, domain_id ([B], or [B, S] per packed segment), routing_embedding, ...
  token_mask: Optional[jax.Array] = None  # [B, T] non-pad mask of the current stack
  encoded_mask: Optional[jax.Array] = None  # [B, S] encoder mask (T5 decoder only)
  segment_ids: Optional[jax.Array] = None  # [B, T] packed segments of the current stack
  encoded_segment_ids: Optional[jax.Array] = None  # [B, S] packed segments of the encoder output
  model_state: Any = None  # output of the model hook
  layer_state: Any = None  # output of the current layer's hook
  deterministic: bool = flax.struct.field(pytree_node=False, default=True)
  # Whether the layers are rematerialised (remat_policy != "none"). Custom
  # gradients (jax.custom_vjp) keep their residuals whatever the remat policy,
  # so methods use their plain autodiff paths then (MoV's fused merge).
  rematerialised: bool = flax.struct.field(pytree_node=False, default=False)
  # None: no KV cache. "prefill": the prompt pass of cached decoding (per-example
  # decisions are computed and stored in the 'cache' collection); "step": a
  # decoding step (stored decisions are reused, never recomputed).
  decode_phase: Optional[str] = flax.struct.field(pytree_node=False, default=None)

  @property
  def decode(self) -> bool:
    return self.decode_phase is not None


class Adapters:
  """No adapters: the frozen backbone. Methods subclass and override.

  Subclasses must be hashable (frozen dataclasses) because they are attributes
  of Flax modules.
  """

  def model_hook(self, name: Optional[str]) -> Optional[nn.Module]:
    del name
    return None

  def layer_hook(self, info: LayerInfo, name: str) -> Optional[nn.Module]:
    del info, name
    return None

  def site(self, info: SiteInfo, name: str) -> Optional[nn.Module]:
    del info, name
    return None

  # The rest of a method's lifecycle: what the trainer, the checkpoint loader,
  # the evaluator, inference and export ask of it, so none of them names a
  # method. The defaults are what a method with nothing special needs.

  # Decoding and export: one merged plain backbone per task (`merge_task`).
  merges_per_task = False

  def batch_preparer(self) -> Callable[[dict], dict]:
    """The host-side step on every batch the trainer and evaluator feed
    (after the data pipeline, before sharding)."""
    return lambda batch: batch

  def check_restore(self, step_dir: str) -> None:
    """Raises CheckpointError if the moe-jax checkpoint `step_dir` cannot load
    into this configuration (before anything is read)."""
    del step_dir

  def adapt_restored(self, source, params, step_dir: str):
    """A moe-jax checkpoint's parameters `source`, made to fit `params` (the
    configured model's) where the method allows it to grow."""
    del params, step_dir
    return source

  def regrown_frozen(self, recorded_shapes: dict, current_shapes: dict) -> set:
    """Frozen leaves (flat names) whose shape grew since the run recorded its
    backbone, so their recorded fingerprint no longer applies."""
    del recorded_shapes, current_shapes
    return set()

  def train_slice(self, which: str, params, trainable_regex):
    """(trainable mask, optimizer transform(trainable) or None) for training
    one slice of the method's parameters in place (MOA_TRAIN_DOMAIN)."""
    del params, trainable_regex
    raise ValueError(f"MOA_TRAIN_DOMAIN={which!r} needs the MoA method; this run uses {type(self).__name__}")

  def row_features(self, rows: list) -> dict:
    """Per-row batch features read from an inputs file's rows (inference)."""
    del rows
    return {}

  def decode_batch(self, model, params, batch: dict) -> dict:
    """The batch `predict_batch` decodes (e.g. routed by a vote first)."""
    del model, params
    return batch

  def merge_task(self, params, task_id: int):
    raise ValueError(f"{type(self).__name__} has no per-task weights to merge (MOELoRA has)")

  def __hash__(self):
    return hash(type(self))

  def __eq__(self, other):
    return type(self) is type(other)


NO_ADAPTERS = Adapters()

# Where methods' parameters live: site modules are named `<site>_adapter`, hooks as here.
ADAPTER_MODULES = ("layer_hook", "model_hook", "adapter_model_hook")


def is_adapter_path(path: tuple[str, ...]) -> bool:
  """A parameter path inside a method's module (not the backbone's)."""
  return any(p.endswith("_adapter") or p in ADAPTER_MODULES for p in path)


# The parameter holding each projection site's kernel, relative to the site's module.
SITE_KERNEL = {"q": "query", "k": "key", "v": "value", "o": "out"}


def kernel_name(kind: str) -> str:
  return SITE_KERNEL.get(kind, kind)


def _over_encoder(info: SiteInfo) -> bool:
  return info.block == "cross_attention" and info.kind in ("k", "v")


def site_token_mask(info: SiteInfo, ctx: AdapterContext):
  """[B, length] mask of the sequence a site's x and y run over: cross-attention
  keys/values run over the encoder output, everything else over the stack's own
  tokens. None when unknown (treat every position as real)."""
  return ctx.encoded_mask if _over_encoder(info) else ctx.token_mask


@dataclasses.dataclass(frozen=True)
class SiteSequence:
  """The tokens a site's x and y run over: which are real, their packed
  segments (None: one sequence per row) and whether a token may only see its
  past (decoder sites; cross-attention keys/values run over the encoder)."""
  mask: Optional[jax.Array]
  segment_ids: Optional[jax.Array]
  causal: bool


def site_sequence(info: SiteInfo, ctx: AdapterContext) -> SiteSequence:
  if _over_encoder(info):
    return SiteSequence(ctx.encoded_mask, ctx.encoded_segment_ids, causal=False)
  return SiteSequence(ctx.token_mask, ctx.segment_ids, causal=info.stack == "decoder")


def ids_by_segment(ctx: AdapterContext, name: str, width: int) -> jax.Array:
  """The id feature `name` as a [B, width] table indexed by segment id.

  The feature is [B] (one id per row, shared by all its segments) or, in a
  packed batch, [B, S]: column j holds the id of segment j + 1 and -1 where
  the row has fewer segments. Column 0 (padding) and absent segments get id
  0, a valid index whose result only padding tokens read."""
  ids = jnp.asarray(ctx.features[name], jnp.int32)
  if ids.ndim == 1:
    return jnp.broadcast_to(ids[:, None], (ids.shape[0], width))
  if ids.ndim != 2:
    raise ValueError(f"feature '{name}' must be [batch] or [batch, segments], got shape {ids.shape}")
  if ctx.segment_ids is None:
    raise ValueError(f"feature '{name}' has one id per packed segment (shape {ids.shape}), but the batch "
                     "has no segment ids")
  table = jnp.pad(jnp.maximum(ids, 0), ((0, 0), (1, 0)))[:, :width]
  return jnp.pad(table, ((0, 0), (0, width - table.shape[1])))


def per_token(values: jax.Array, info: SiteInfo, ctx: AdapterContext) -> jax.Array:
  """Per-segment values [B, S, ...] indexed by segment id -> [B, T, ...] for
  the tokens site `info` runs over (each token takes its segment's)."""
  segment_ids = site_sequence(info, ctx).segment_ids
  if segment_ids is None:
    raise ValueError(f"{info.path}: the adapters decided per packed segment, but this site's tokens "
                     "have no segment ids")
  return pooling.gather_segments(values, segment_ids)


def apply_site(adapters: Adapters, info: SiteInfo, x, y, ctx: AdapterContext):
  """Lets the configured method rewrite a site's output. Call inside compact."""
  module = adapters.site(info, name=f"{info.kind}_adapter")
  return y if module is None else module(x, y, ctx)


def apply_layer_hook(adapters: Adapters, info: LayerInfo, layer_input: LayerInput,
                     ctx: AdapterContext) -> AdapterContext:
  module = adapters.layer_hook(info, name="layer_hook")
  if module is None:
    return ctx
  return ctx.replace(layer_state=module(layer_input, ctx))
