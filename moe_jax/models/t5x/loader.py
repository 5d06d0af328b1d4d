"""`load_t5x_checkpoint`: a T5X checkpoint as a moe-jax T5 model and its parameters."""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Optional, Union

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from moe_jax.models import hf, layer_layout
from moe_jax.models.api import build_model
from moe_jax.models.configs import T5Config
from moe_jax.models.t5x import layout
from moe_jax.models.t5x.reader import T5XCheckpoint
from moe_jax.peft import sites


def load_t5x_checkpoint(path: Union[str, T5XCheckpoint], config: Optional[T5Config] = None,
                        dtype: Any = None, *, activation_dtype: Any = None,
                        adapters: sites.Adapters = sites.NO_ADAPTERS, **model_kwargs):
  """Loads a T5X checkpoint (directory, its `checkpoint` file, or gs://...); returns (model, params).

  The T5 configuration is inferred from the arrays' shapes; a given `config`
  must agree with them and supplies what shapes cannot tell (the gated
  activation, GELU unless `mlp_variant='gated-relu'`; the relative-attention
  max distance, 128 by default as in t5x; dropout, dtypes). `dtype` is the
  parameter dtype (the config's, else float32); activations default to the
  config's dtype, else `dtype`. The checkpoint's training step is
  `T5XCheckpoint(path).step` (pass that object as `path` to read the file once).
  """
  ckpt = path if isinstance(path, T5XCheckpoint) else T5XCheckpoint(path)
  given = config is not None
  config = layout.infer_config(ckpt.target, ckpt.file, config)
  dtype = jnp.dtype(dtype or (config.param_dtype if given else "float32")).name
  act = jnp.dtype(activation_dtype or (config.dtype if given else dtype)).name
  config = dataclasses.replace(config, param_dtype=dtype, dtype=act)
  params = _read_params(ckpt, config, dtype)
  if config.scan_layers:  # T5X stores layers unrolled
    params = layer_layout.stack_layers(params)
  model = build_model(config, adapters, **model_kwargs)
  hf._check_against_model(model, params, ckpt.file)
  logging.info("T5X checkpoint %s: step %s, %s", ckpt.file, ckpt.step, config)
  return model, params


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
