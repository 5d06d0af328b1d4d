"""Converting parameter trees between unrolled (`layers_<i>/...`) and scanned
(`layers/...` with a leading layer axis) layouts.

Checkpoints from outside (HF, T5X) and older runs are unrolled; scanned models
stack them on load, and exports unstack them. Works on any tree whose layer
subtrees are named as the models name them (params, optimizer-free).
"""
from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from moe_jax.models.layer_stack import SCANNED_NAME

_LAYER = re.compile(r"^layers_(\d+)$")


class LazyStack:
  """Per-layer lazy tensors (checkpoint readers' `shape`/`__getitem__`/`release`)
  seen as one `[N, ...]` tensor: a shard reads only its layers' slices, so a
  scanned model loads an unrolled checkpoint without a host copy of the stack."""

  def __init__(self, values):
    self._values = list(values)
    self.shape = (len(self._values),) + tuple(self._values[0].shape)
    self.dtype = getattr(self._values[0], "dtype", np.dtype(np.float32))

  def __getitem__(self, idx):
    idx = idx if isinstance(idx, tuple) else (idx,)
    if idx == (Ellipsis,):
      idx = ()
    first, rest = (idx[0], idx[1:]) if idx else (slice(None), ())
    layers = range(self.shape[0])[first]
    if isinstance(layers, int):
      return np.asarray(self._values[layers][rest if rest else Ellipsis])
    return np.stack([np.asarray(self._values[i][rest if rest else Ellipsis]) for i in layers])

  def release(self):
    for v in self._values:
      getattr(v, "release", lambda: None)()


def _stack(values):
  if all(isinstance(v, np.ndarray) for v in values):
    return np.stack(values)
  if any(hasattr(v, "release") for v in values):  # lazy checkpoint tensors: stay lazy
    return LazyStack(values)
  return jnp.stack([jnp.asarray(v) for v in values])


def is_scanned(params) -> bool:
  return any(SCANNED_NAME in k for k in traverse_util.flatten_dict(params))


def is_unrolled(params) -> bool:
  return any(_LAYER.match(p) for k in traverse_util.flatten_dict(params) for p in k)


def stack_layers(params):
  """`.../layers_<i>/X` (i = 0..N-1) -> `.../layers/X` of shape [N, ...]."""
  out, groups = {}, {}
  for k, v in traverse_util.flatten_dict(params).items():
    idx = next((j for j, p in enumerate(k) if _LAYER.match(p)), None)
    if idx is None:
      out[k] = v
      continue
    key = k[:idx] + (SCANNED_NAME,) + k[idx + 1:]
    groups.setdefault(key, {})[int(_LAYER.match(k[idx]).group(1))] = v
  for key, by_layer in groups.items():
    if sorted(by_layer) != list(range(len(by_layer))):
      raise ValueError(f"{'/'.join(key)}: layers {sorted(by_layer)} are not 0..{len(by_layer) - 1}")
    out[key] = _stack([by_layer[i] for i in range(len(by_layer))])
  return traverse_util.unflatten_dict(out)


def unstack_layers(tree):
  """`.../layers/X` of shape [N, ...] -> `.../layers_<i>/X`. Sown collections
  (leaves are tuples of arrays) are split element by element."""
  out = {}
  for k, v in traverse_util.flatten_dict(tree).items():
    if SCANNED_NAME not in k:
      out[k] = v
      continue
    idx = k.index(SCANNED_NAME)
    n = (v[0] if isinstance(v, tuple) else v).shape[0]
    for i in range(n):
      out[k[:idx] + (f"layers_{i}",) + k[idx + 1:]] = (
          tuple(x[i] for x in v) if isinstance(v, tuple) else v[i])
  return traverse_util.unflatten_dict(out)


def match_layout(source, target):
  """`source` in the layout of `target` (either way; unchanged if they agree)."""
  if is_scanned(target) and is_unrolled(source):
    return stack_layers(source)
  if is_unrolled(target) and is_scanned(source):
    return unstack_layers(source)
  return source
