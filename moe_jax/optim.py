"""Adafactor with T5X semantics, from optax pieces.

T5X's defaults (Shazeer & Stern 2018): second moments factored into row and
column statistics for matrices, decay 1 - t^-0.8, updates clipped to RMS 1,
multiplied by the parameter's RMS scale (floored at 1e-3), no momentum. Like
T5X's factor rules, parameters with an `expert` or `rank` logical axis keep
unfactored second moments: factoring over those small axes would tie
unrelated experts together.
"""
from __future__ import annotations

import jax
import optax

UNFACTORED_AXES = ("expert", "rank")


def adafactor(learning_rate, logical_axes, *, decay_rate: float = 0.8, clipping_threshold: float = 1.0,
              multiply_by_parameter_scale: bool = True, min_dim_size_to_factor: int = 128
              ) -> optax.GradientTransformation:
  """`logical_axes`: a tree of PartitionSpecs (logical names) shaped like the params."""
  def make(factored):
    return optax.adafactor(learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
                           decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
                           clipping_threshold=clipping_threshold, factored=factored)
  labels = jax.tree_util.tree_map(
      lambda spec: "unfactored" if any(a in UNFACTORED_AXES for a in spec if a) else "factored",
      logical_axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  return optax.multi_transform({"factored": make(True), "unfactored": make(False)}, labels)
