"""The t5x fixtures (written by t5x itself, see ../shared/fixtures/README.md) and helpers."""
import os

import numpy as np
from flax import serialization, traverse_util

from moe_jax import paths

FIXTURES = os.path.join(os.path.dirname(paths.data_dir()), "fixtures", "t5x")
TINY_T5 = os.path.join(FIXTURES, "test_t5_tiny.checkpoint_0")  # inline arrays, T5 v1.1 tiny
TS_TOY = os.path.join(FIXTURES, "tiny_t5", "checkpoint_1")  # TensorStore zarr leaves


def raw_target() -> dict:
  """The tiny T5's `optimizer/target`, flat '/'-joined names, read with flax directly."""
  with open(TINY_T5, "rb") as f:
    contents = serialization.msgpack_restore(f.read())
  flat = traverse_util.flatten_dict(contents["optimizer"]["target"], sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def write_checkpoint(directory, target: dict, step=3, arrays=None) -> str:
  """A T5X-style checkpoint directory whose `checkpoint` holds `target` (flat names);
  `arrays` maps names to TensorStore spec dicts written beside it instead."""
  os.makedirs(directory, exist_ok=True)
  leaves = dict(target)
  leaves.update(arrays or {})
  tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in leaves.items()})
  with open(os.path.join(directory, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize(
        {"version": 3, "optimizer": {"target": tree, "state": {"step": np.int32(step)}}}))
  return str(directory)
