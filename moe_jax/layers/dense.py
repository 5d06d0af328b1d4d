"""Dense projection whose kernel carries logical axis names."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jax.Array]


class DenseGeneral(nn.Module):
  """y = x . W over the trailing `len(in_axes)` dims of x; no bias.

  `in_axes`/`out_axes` are logical axis names (t5x style) of the contracted and
  produced dims; the kernel's names are their concatenation, so sharding comes
  from the rules table, never from this code.
  """
  features: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_axes: tuple[str, ...]
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.in_axes)
    in_shape = x.shape[-n_in:]
    kernel_shape = tuple(in_shape) + tuple(self.features)
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(_fan_in_init(self.kernel_init, n_in), self.in_axes + self.out_axes),
        kernel_shape, self.param_dtype)
    kernel = jnp.asarray(kernel, self.dtype)
    x = jnp.asarray(x, self.dtype)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x, kernel, (contract, ((), ())))


def _fan_in_init(init: Initializer, n_in: int) -> Initializer:
  """Reshape to 2-D so fan-in counts every contracted dim (e.g. heads x kv)."""
  def wrapped(key, shape, dtype=jnp.float32):
    flat = (int(np.prod(shape[:n_in])), int(np.prod(shape[n_in:])))
    return init(key, flat, dtype).reshape(shape)
  return wrapped
