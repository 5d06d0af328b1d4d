"""Position information: T5 relative position bias and rotary embeddings (RoPE)."""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
  """T5's log-spaced buckets for (key position - query position).

  Half the buckets are exact small distances, the rest grow logarithmically up
  to `max_distance`; bidirectional stacks spend half the buckets on each side.
  """
  bucket = jnp.zeros_like(relative_position)
  n = relative_position
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (n > 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = -jnp.minimum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # float32 log as in the reference; clip before the int cast avoids overflow.
  large = max_exact + (
      jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact))
  large = jnp.minimum(large.astype(jnp.int32), num_buckets - 1)
  return bucket + jnp.where(is_small, n, large)


def relative_bias(table: jax.Array, q_pos: jax.Array, k_pos: jax.Array, *, bidirectional: bool,
                  num_buckets: int, max_distance: int, dtype=jnp.float32) -> jax.Array:
  """table [heads, buckets], q_pos [b, Tq], k_pos [Tk] -> bias [b, heads, Tq, Tk]."""
  rel = k_pos[None, None, :] - q_pos[:, :, None]
  buckets = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
  bias = jnp.take(jnp.asarray(table, dtype), buckets, axis=1)  # [H, b, Tq, Tk]
  return jnp.transpose(bias, (1, 0, 2, 3))


class RelativePositionBias(nn.Module):
  """One learned scalar per (head, bucket), shared by all layers of a stack."""
  num_heads: int
  num_buckets: int
  max_distance: int
  bidirectional: bool
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.rel_embedding = self.param(
        "rel_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.1), ("heads", "relpos_buckets")),
        (self.num_heads, self.num_buckets), self.param_dtype)

  def table(self) -> jax.Array:
    """The [heads, buckets] table (scanned layers compute their bias from it)."""
    return self.rel_embedding

  def bias_fn(self, table: jax.Array):
    """(q_pos, k_pos) -> bias, a pure function of `table`."""
    return functools.partial(relative_bias, table, bidirectional=self.bidirectional,
                             num_buckets=self.num_buckets, max_distance=self.max_distance, dtype=self.dtype)

  def __call__(self, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
    """q_pos [b, Tq] (b may be 1), k_pos [Tk] -> bias [b, heads, Tq, Tk]."""
    return self.bias_fn(self.rel_embedding)(q_pos, k_pos)


def rope_frequencies(head_dim: int, theta: float) -> np.ndarray:
  return 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding, rotate-half convention (HF Llama layout).

  x [B, T, H, D], positions [B, T]. Angles are computed in float32.
  """
  d = x.shape[-1]
  inv_freq = jnp.asarray(rope_frequencies(d, theta))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  x1, x2 = x[..., : d // 2], x[..., d // 2:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * cos + rotated * sin
