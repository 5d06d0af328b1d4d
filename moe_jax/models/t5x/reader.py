"""Reading a T5X checkpoint: the msgpack `checkpoint` file and its TensorStore leaves.

A T5X checkpoint directory holds a msgpack file named `checkpoint` with
`{"version": N, "optimizer": {"target": params, "state": {"step", ...}}}`
(version 0, a plain Flax checkpoint, has no `optimizer` level). An array leaf is
either inline (flax's msgpack ndarray extension, possibly chunked) or a
TensorStore zarr spec whose kvstore path is relative to the checkpoint
directory; t5x rewrites the kvstore driver (`file`/`gfile`/`gcs`) for wherever
the checkpoint now lives, and so do we. Nothing is read until asked: shapes
come from the spec, so a 3B checkpoint can be checked before it is loaded.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Optional

from flax import serialization, traverse_util
import ml_dtypes
import numpy as np
import tensorstore as ts

from moe_jax.models.hf import CheckpointError
from moe_jax.utils import fs


CHECKPOINT_FILE = "checkpoint"


def _is_gcs(path: str) -> bool:
  return path.startswith("gs://")


def _split_gcs(path: str) -> tuple[str, str]:
  bucket, _, prefix = path[len("gs://"):].partition("/")
  return bucket, prefix


def _kvstore(directory: str) -> dict:
  """TensorStore kvstore spec of a directory (local or gs://)."""
  if _is_gcs(directory):
    bucket, prefix = _split_gcs(directory)
    return {"driver": "gcs", "bucket": bucket, "path": prefix.rstrip("/") + "/" if prefix else ""}
  if fs.is_uri(directory):
    raise CheckpointError(f"{directory}: T5X arrays are read with TensorStore, from a local path or gs:// "
                          "only (copy the checkpoint to one of them)")
  return {"driver": "file", "path": os.path.abspath(directory).rstrip("/") + "/"}


def _read_bytes(file: str) -> bytes:
  if not _is_gcs(file):
    return fs.read_bytes(file)
  directory, name = file.rsplit("/", 1)
  try:
    result = ts.KvStore.open(_kvstore(directory)).result().read(name).result()
  except Exception as e:  # network, auth: the path is what the user needs
    raise CheckpointError(f"{file}: cannot read ({type(e).__name__}: {e})") from e
  if result.state != "value":
    raise CheckpointError(f"{file}: does not exist")
  return bytes(result.value)


def _list(kvstore: dict) -> list[bytes]:
  return ts.KvStore.open(kvstore).result().list().result()


def is_ts_spec(leaf: Any) -> bool:
  return isinstance(leaf, dict) and {"driver", "kvstore"} <= set(leaf)


def resolve_ts_spec(spec: dict, directory: str) -> dict:
  """The spec with its kvstore pointing into `directory` (local `file` or `gcs`).

  The relative path is under `kvstore.path` (tensorstore >= 0.1.14) or at the
  top level (older checkpoints, t5x's gs:// writer); the stored driver and
  bucket are stale: they name wherever the checkpoint was first written.
  """
  spec = copy.deepcopy(spec)
  kv = spec.pop("kvstore")
  rel = kv.get("path") or spec.pop("path", None)
  spec.pop("path", None)
  if not rel:
    raise CheckpointError(f"TensorStore spec without a path: {spec}")
  base = _kvstore(directory)
  base["path"] = base["path"] + rel.strip("/") + "/"
  spec["kvstore"] = base
  return spec


@dataclasses.dataclass
class Leaf:
  """One array of the checkpoint, read on demand."""
  name: str  # '/'-joined path in the checkpoint tree
  shape: Optional[tuple[int, ...]]  # None: known once read (optimizer state specs without metadata)
  dtype: Optional[np.dtype]
  value: Optional[np.ndarray] = None  # inline arrays
  spec: Optional[dict] = None  # resolved TensorStore spec otherwise

  @property
  def where(self) -> str:
    if self.spec is None:
      return "inline"
    kv = self.spec["kvstore"]
    return f"gs://{kv['bucket']}/{kv['path']}" if kv["driver"] == "gcs" else kv["path"]

  def read(self) -> np.ndarray:
    if self.value is not None:
      return self.value
    try:
      keys = _list(self.spec["kvstore"])
    except Exception as e:
      raise CheckpointError(f"{self.name}: cannot list its array directory {self.where} "
                            f"({type(e).__name__}: {e})") from e
    # zarr fills absent chunks with the fill value: a deleted directory would
    # read as zeros, so its absence is checked here.
    if not keys:
      raise CheckpointError(f"{self.name}: array directory {self.where} is missing or empty")
    # Newer t5x writes keep zarr metadata only in the msgpack spec.
    assume = b".zarray" not in keys and "metadata" in self.spec
    try:
      store = ts.open(self.spec, open=True, read=True, assume_metadata=assume).result()
      arr = np.asarray(store.read().result())
    except Exception as e:
      raise CheckpointError(f"{self.name}: cannot read {self.where} "
                            f"({type(e).__name__}: {e})") from e
    if self.shape is not None and tuple(arr.shape) != self.shape:
      raise CheckpointError(f"{self.name}: {self.where} holds shape {arr.shape}, "
                            f"its spec says {self.shape}")
    return arr


def _leaf(name: str, x: Any, directory: str, need_shape: bool = True) -> Leaf:
  if is_ts_spec(x):
    spec = resolve_ts_spec(x, directory)
    meta = spec.get("metadata", {})
    if "shape" not in meta and not need_shape:
      return Leaf(name, None, None, spec=spec)
    if "shape" not in meta:  # metadata in the array's .zarray: ask TensorStore
      try:
        store = ts.open(spec, open=True).result()
      except Exception as e:
        raise CheckpointError(f"{name}: cannot open {spec['kvstore']['path']} "
                              f"({type(e).__name__}: {e})") from e
      return Leaf(name, tuple(store.shape), np.dtype(store.dtype.numpy_dtype), spec=spec)
    dtype = spec.get("dtype") or meta.get("dtype")
    return Leaf(name, tuple(meta["shape"]), np.dtype(_dtype(dtype)), spec=spec)
  arr = np.asarray(x)
  if arr.dtype == object:
    raise CheckpointError(f"{name}: not an array ({type(x).__name__})")
  return Leaf(name, tuple(arr.shape), arr.dtype, value=arr)


def _dtype(name: Any):
  if name == "bfloat16":
    return ml_dtypes.bfloat16
  return name


def find_checkpoint_file(path: str) -> str:
  """The msgpack file of a T5X checkpoint directory (or the file itself)."""
  path = path.rstrip("/") if path != "/" else path
  if _is_gcs(path):
    return path if path.endswith("/" + CHECKPOINT_FILE) else f"{path}/{CHECKPOINT_FILE}"
  if fs.isfile(path):
    return path
  if not fs.exists(path):
    raise CheckpointError(f"{path}: does not exist")
  for candidate in (fs.join(path, CHECKPOINT_FILE), fs.join(path, "state", CHECKPOINT_FILE)):
    if fs.isfile(candidate):
      return candidate
  raise CheckpointError(f"{path}: not a T5X checkpoint (no msgpack file named '{CHECKPOINT_FILE}')")


def is_t5x_checkpoint(path: str) -> bool:
  """A gs:// path, a file, or a directory holding a `checkpoint` file."""
  if _is_gcs(path) or fs.isfile(path):
    return True
  return fs.isdir(path) and (fs.isfile(fs.join(path, CHECKPOINT_FILE)) or
                             fs.isfile(fs.join(path, "state", CHECKPOINT_FILE)))


class T5XCheckpoint:
  """The parsed `checkpoint` file: parameters (`target`) and the training step."""

  def __init__(self, path: str):
    self.file = find_checkpoint_file(path)
    self.directory = self.file.rsplit("/", 1)[0] if _is_gcs(self.file) else fs.dirname(self.file)
    try:
      contents = serialization.msgpack_restore(_read_bytes(self.file))
    except CheckpointError:
      raise
    except Exception as e:  # msgpack raises several types for garbage
      raise CheckpointError(f"{self.file}: not a msgpack T5X checkpoint "
                            f"({type(e).__name__}: {e})") from e
    if not isinstance(contents, dict):
      raise CheckpointError(f"{self.file}: not a T5X checkpoint (top level is {type(contents).__name__})")
    self.version = int(contents.get("version", 0))
    state = contents.get("optimizer", contents) if self.version else contents
    if not isinstance(state, dict) or "target" not in state:
      raise CheckpointError(f"{self.file}: no parameters ('optimizer/target' or 'target'); "
                            f"top-level keys {sorted(contents)}")
    self.target = self._leaves(state["target"], "target")
    # Optimizer state: only `step` is used; no I/O for the rest until read.
    self.state = self._leaves(state.get("state") or {}, "state", need_shape=False)
    self.step = int(self.state["step"].read()) if "step" in self.state else None

  def _leaves(self, tree, prefix: str, need_shape: bool = True) -> dict[str, Leaf]:
    if not isinstance(tree, dict):
      raise CheckpointError(f"{self.file}: '{prefix}' is not a tree of arrays")
    flat = traverse_util.flatten_dict(tree, is_leaf=lambda _, x: is_ts_spec(x))
    out = {}
    for k, v in flat.items():
      name = "/".join(map(str, k))
      out[name] = _leaf(f"{prefix}/{name}", v, self.directory, need_shape)
    return out
