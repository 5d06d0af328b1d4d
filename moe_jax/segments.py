"""Pooling over tokens that respects packing and causality.

Sentence-level routers summarise a sequence. In a packed row a sequence is a
*segment* (`segment_ids`, 1, 2, ...; 0 is padding), and in a decoder a token
may only see its past. These helpers give every token the summary of its own
sequence, computed in O(length): segment sums through `jax.ops.segment_sum`
over one bucket per (row, segment id), prefix sums through cumulative sums
restarted at each segment start.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def _expand(m, x):
  """[B, T] -> [B, T, 1, ...] broadcastable against x [B, T, ...F]."""
  return m.reshape(m.shape + (1,) * (x.ndim - 2))


def _segment_reduce(reduce, x, segment_ids, num_segments):
  b, t = segment_ids.shape
  ids = segment_ids.astype(jnp.int32) + num_segments * jnp.arange(b, dtype=jnp.int32)[:, None]
  out = reduce(x.reshape((b * t,) + x.shape[2:]), ids.reshape(-1), num_segments=b * num_segments)
  return out.reshape((b, num_segments) + x.shape[2:])


def segment_sums(x: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
  """x [B, T, ...F], ids [B, T] in [0, num_segments) -> per-segment sums [B, S, ...F]."""
  return _segment_reduce(jax.ops.segment_sum, x, segment_ids, num_segments)


def segment_maxes(x: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
  """Per-segment maxima [B, S, ...F] (-inf for empty segments)."""
  return _segment_reduce(jax.ops.segment_max, x, segment_ids, num_segments)


def gather_segments(values: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """values [B, S, ...] per segment -> [B, T, ...] per token (by its segment id)."""
  idx = jnp.clip(segment_ids.astype(jnp.int32), 0, values.shape[1] - 1)
  idx = idx.reshape(idx.shape + (1,) * (values.ndim - 2))
  return jnp.take_along_axis(values, idx, axis=1)


def masked_mean(x: jax.Array, mask: jax.Array, segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """Mean of x over the real tokens of each sequence.

  Without segments: one mean per row, [B, 1, ...F]. With segments: every
  token gets its segment's mean, [B, T, ...F].
  """
  m = mask.astype(jnp.float32)
  if segment_ids is None:
    mm = _expand(m, x)
    return jnp.sum(x * mm, axis=1, keepdims=True) / jnp.maximum(jnp.sum(mm, axis=1, keepdims=True), 1.0)
  n = x.shape[1] + 1  # segment ids are <= length
  ids = jnp.where(mask, segment_ids, 0)
  sums = segment_sums(x * _expand(m, x), ids, n)
  counts = segment_sums(m, ids, n)
  return gather_segments(sums, ids) / _expand(jnp.maximum(gather_segments(counts, ids), 1.0), x)


def prefix_sums(x: jax.Array, segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """Inclusive cumulative sums along T, restarted where the segment id changes."""
  total = jnp.cumsum(x, axis=1)
  if segment_ids is None:
    return total
  t = segment_ids.shape[1]
  pos = jnp.arange(t)
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  start_of = jax.lax.cummax(jnp.where(starts, pos[None], 0), axis=1)  # [B, T]: where t's segment starts
  before = total - x  # exclusive sums
  return total - gather_segments(before, start_of)


def prefix_mean(x: jax.Array, mask: jax.Array, segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """[B, T, ...F]: token t's mean over the real tokens <= t of its own sequence."""
  m = mask.astype(jnp.float32)
  sums = prefix_sums(x * _expand(m, x), segment_ids)
  counts = prefix_sums(m, segment_ids)
  return sums / _expand(jnp.maximum(counts, 1.0), x)


def rms_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Parameter-free RMS normalisation over the last axis."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + eps)
