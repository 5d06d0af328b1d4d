"""Adafactor with T5X semantics, from optax pieces.

T5X's defaults (Shazeer & Stern 2018): second moments factored into row and
column statistics for matrices, decay 1 - t^-0.8, updates clipped to RMS 1,
multiplied by the parameter's RMS scale (floored at 1e-3), no momentum.

Factoring follows t5x's logical factor rules (t5x/adafactor.py
`standard_logical_factor_rules`): `embed` is the row dimension; `heads`, `kv`,
`mlp`, `vocab` the column dimensions; `layers` (scanned stacks) a batch
dimension, each layer with its own statistics. A kernel is factored over (all its row
dims) x (all its column dims), so moe-jax's 3-D attention kernels
[embed, heads, kv] get the same statistics as t5x's 2-D [embed, heads*kv]
ones (optax alone would see a 64-wide head axis and not factor). Parameters
with an `expert` or `rank` logical axis keep unfactored second moments:
factoring over those small axes would tie unrelated experts together.

Step offset: T5X fine-tuning continues the optimizer step of the pretrained
checkpoint (1,100,000 for the LM-adapted T5 v1.1), so the second-moment decay
1 - t^-0.8 starts near 1 rather than at 0. `step_offset` reproduces that: the
first update uses t = step_offset + 1.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import optax
from jax.sharding import PartitionSpec

from moe_jax.training import second_moments

UNFACTORED_AXES = ("expert", "rank")
ROW_AXES = ("embed",)
COLUMN_AXES = ("heads", "kv", "joined_kv", "mlp", "vocab")
BATCH_AXES = ("layers",)


def decay_rate_at(step: int, decay_rate: float = 0.8, step_offset: int = 0) -> float:
  """The second-moment decay of the update numbered `step` (1 = the first of this run)."""
  return 1.0 - (step + step_offset) ** (-decay_rate)


def factored_shape(shape: tuple[int, ...], spec) -> tuple[int, ...]:
  """The shape Adafactor's statistics see: leading `layers` axes (scanned
  stacks, t5x's BATCH factor dim) merged into one, then contiguous row axes
  and contiguous column axes each merged into one dimension; `shape` itself
  when the axes do not form that pattern."""
  names = tuple(spec) + (None,) * (len(shape) - len(spec))
  lead = 0
  while lead < len(names) and names[lead] in BATCH_AXES:
    lead += 1
  groups = ["row" if n in ROW_AXES else "col" if n in COLUMN_AXES else None for n in names[lead:]]
  if "row" not in groups or "col" not in groups or None in groups:
    return tuple(shape)
  # one run of each kind, in either order (q/k/v: row then col; o: col then row)
  runs = [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]
  if len(runs) != 2:
    return tuple(shape)
  merged, i = [math.prod(shape[:lead])] if lead else [], lead
  for run in runs:
    j = i
    while j < len(names) and groups[j - lead] == run:
      j += 1
    merged.append(math.prod(shape[i:j]))
    i = j
  return tuple(merged)


class _Reshaped(NamedTuple):
  inner: Any


def _reshaped(inner: optax.GradientTransformation, specs) -> optax.GradientTransformation:
  """Runs `inner` on every leaf viewed in its `factored_shape` (clipping and the
  parameter scale are whole-tensor RMS, so the view changes only the factoring)."""
  is_spec = lambda x: isinstance(x, PartitionSpec)

  def view(tree):
    if tree is None:
      return None
    return jax.tree_util.tree_map(lambda s, x: x.reshape(factored_shape(x.shape, s)), specs, tree,
                                  is_leaf=is_spec)

  def init(params):
    return _Reshaped(inner.init(view(params)))

  def update(updates, state, params=None):
    new, inner_state = inner.update(view(updates), state.inner, view(params))
    new = jax.tree_util.tree_map(lambda n, u: n.reshape(u.shape), new, updates)
    return new, _Reshaped(inner_state)

  return optax.GradientTransformation(init, update)


def adafactor(learning_rate, logical_axes, *, decay_rate: float = 0.8, step_offset: int = 0,
              clipping_threshold: float = 1.0, multiply_by_parameter_scale: bool = True,
              min_dim_size_to_factor: int = 128) -> optax.GradientTransformation:
  """`logical_axes`: a tree of PartitionSpecs (logical names) shaped like the params."""
  if step_offset < 0:
    raise ValueError(f"adafactor step_offset={step_offset} must be >= 0")

  def make(factored):
    # optax.adafactor's chain (the same states, so the same checkpoints), its
    # second-moment scaling with rsqrt (second_moments.py). optax computes the
    # decay at (count - offset); a negative offset continues a pretrained run's
    # step count instead of restarting it.
    chain = [second_moments.scale_by_factored_rms(factored, decay_rate, -step_offset, min_dim_size_to_factor)]
    if clipping_threshold is not None:
      chain.append(optax.clip_by_block_rms(clipping_threshold))
    chain.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
      chain.append(optax.scale_by_param_block_rms())
    chain.append(optax.scale(-1))
    return optax.chain(*chain)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  labels = jax.tree_util.tree_map(
      lambda spec: "unfactored" if any(a in UNFACTORED_AXES for a in spec if a) else "factored",
      logical_axes, is_leaf=is_spec)
  return _reshaped(optax.multi_transform({"factored": make(True), "unfactored": make(False)}, labels),
                   logical_axes)
