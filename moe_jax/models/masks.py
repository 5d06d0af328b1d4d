"""Attention masks in the [B, 1, Tq, Tk] boolean layout."""
from typing import Optional

import jax
import jax.numpy as jnp


def padding_mask(query_valid: Optional[jax.Array], key_valid: jax.Array) -> jax.Array:
  """Keys must be real tokens; query validity is ignored unless given."""
  m = key_valid[:, None, None, :]
  if query_valid is not None:
    m = m & query_valid[:, None, :, None]
  return m


def causal_mask(length: int) -> jax.Array:
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


def segment_mask(q_segments: Optional[jax.Array], k_segments: Optional[jax.Array]):
  """Packed examples attend only within their own segment."""
  if q_segments is None or k_segments is None:
    return True
  return (q_segments[:, :, None] == k_segments[:, None, :])[:, None]
