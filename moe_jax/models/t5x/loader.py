"""`load_t5x_checkpoint`: a T5X checkpoint as a moe-jax T5 model and its parameters."""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Optional, Union

from flax import traverse_util
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from moe_jax import adapters as sites
from moe_jax.models import hf, layer_layout
from moe_jax.models.api import build_model
from moe_jax.models.configs import T5Config
from moe_jax.models.t5x import layout
from moe_jax.models.t5x.reader import T5XCheckpoint


def load_t5x_checkpoint(path: Union[str, T5XCheckpoint], config: Optional[T5Config] = None,
                        dtype: Any = None, *, activation_dtype: Any = None,
                        adapters: sites.Adapters = sites.NO_ADAPTERS, lazy: bool = False, **model_kwargs):
  """Loads a T5X checkpoint (directory, its `checkpoint` file, or gs://...); returns (model, params).

  The T5 configuration is inferred from the arrays' shapes; a given `config`
  must agree with them and supplies what shapes cannot tell (the gated
  activation, GELU unless `mlp_variant='gated-relu'`; the relative-attention
  max distance, 128 by default as in t5x; dropout, dtypes). `dtype` is the
  parameter dtype (the config's, else float32); activations default to the
  config's dtype, else `dtype`. The checkpoint's training step is
  `T5XCheckpoint(path).step` (pass that object as `path` to read the file once).

  `lazy=True` returns host-side lazy tensors (read and converted one
  parameter at a time when sliced) for placing into a sharded model with
  `checkpoints.place_like`: no host or device copy of the whole backbone.
  """
  ckpt = path if isinstance(path, T5XCheckpoint) else T5XCheckpoint(path)
  given = config is not None
  config = layout.infer_config(ckpt.target, ckpt.file, config)
  dtype = jnp.dtype(dtype or (config.param_dtype if given else "float32")).name
  act = jnp.dtype(activation_dtype or (config.dtype if given else dtype)).name
  config = dataclasses.replace(config, param_dtype=dtype, dtype=act)
  if lazy:
    params = _lazy_params(ckpt, config)
  else:
    params = _read_params(ckpt, config, dtype)
  if config.scan_layers:  # T5X stores layers unrolled
    params = layer_layout.stack_layers(params)
  model = build_model(config, adapters, **model_kwargs)
  hf._check_against_model(model, params, ckpt.file)
  logging.info("T5X checkpoint %s: step %s, %s", ckpt.file, ckpt.step, config)
  return model, params


class LazyParam:
  """One moe-jax parameter made from checkpoint arrays on first slice (kept
  until the last shard was read), float32 on the host."""

  def __init__(self, ckpt: T5XCheckpoint, source: layout.Source, shape: tuple):
    self._ckpt, self._source, self.shape = ckpt, source, tuple(shape)
    self.dtype = np.dtype(np.float32)
    self._cached = None

  def __getitem__(self, idx):
    if self._cached is None:
      arrays = [self._ckpt.target[name].read() for name in self._source.leaves]
      self._cached = np.asarray(self._source.make(*arrays), np.float32)
    out = self._cached[idx]
    if idx is Ellipsis or out.shape == self.shape:
      self.release()
    return out

  def release(self):
    self._cached = None


def _lazy_params(ckpt: T5XCheckpoint, config: T5Config) -> dict:
  unrolled = build_model(dataclasses.replace(config, scan_layers=False))
  shapes = traverse_util.flatten_dict(nn.unbox(unrolled.abstract_variables()["params"]))
  plan = layout.sources(ckpt.target, config, ckpt.file)
  return traverse_util.unflatten_dict({path: LazyParam(ckpt, source, shapes[path].shape)
                                       for path, source in plan.items()})


def _read_params(ckpt: T5XCheckpoint, config: T5Config, dtype: str) -> dict:
  plan = layout.sources(ckpt.target, config, ckpt.file)
  uses = collections.Counter(leaf for s in plan.values() for leaf in s.leaves)
  cache: dict[str, np.ndarray] = {}  # fused kernels feed several parameters; read each once
  flat = {}
  for path, source in plan.items():
    arrays = []
    for name in source.leaves:
      if name not in cache:
        cache[name] = ckpt.target[name].read()
      arrays.append(cache[name])
      uses[name] -= 1
      if not uses[name]:
        del cache[name]
    flat[path] = jnp.asarray(np.asarray(source.make(*arrays), np.float32), dtype)
  return traverse_util.unflatten_dict(flat)
