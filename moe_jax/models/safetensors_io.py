"""Minimal safetensors reader/writer on numpy (bfloat16 via ml_dtypes).

The format is an 8-byte little-endian header length, a JSON header mapping
each tensor name to dtype/shape/byte offsets, then the raw bytes. We parse it
directly so bfloat16 checkpoints load without torch.
"""
from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np

from moe_jax.utils import fs

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_header(path: str) -> dict:
  with fs.open_file(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw)
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
  header.pop("__metadata__", None)
  return header | {"__offset__": 8 + n}


def load(path: str) -> dict:
  """name -> array: memory-mapped numpy arrays for a local file; for a URL
  (gs://...) `RemoteTensor`s, each read with one ranged read when converted."""
  header = read_header(path)
  base = header.pop("__offset__")
  data = None if fs.is_uri(path) else np.memmap(path, dtype=np.uint8, mode="r")
  out = {}
  for name, info in header.items():
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dtype = np.dtype(_DTYPES[info["dtype"]])
    if data is None:
      out[name] = RemoteTensor(path, base + start, end - start, dtype, tuple(info["shape"]))
    else:
      out[name] = np.frombuffer(data[base + start: base + end], dtype=dtype).reshape(info["shape"])
  return out


class RemoteTensor:
  """A tensor of a safetensors file behind a URL, read when asked for (the
  loaders read one tensor at a time, so a bucket's checkpoint never has to
  fit in host memory whole)."""

  def __init__(self, path: str, offset: int, nbytes: int, dtype: np.dtype, shape: tuple):
    self.path, self.offset, self.nbytes, self.dtype, self.shape = path, offset, nbytes, dtype, shape

  def __array__(self, dtype=None, copy=None):  # pylint: disable=redefined-outer-name
    with fs.open_file(self.path, "rb") as f:
      f.seek(self.offset)
      raw = f.read(self.nbytes)
    if len(raw) != self.nbytes:
      raise ValueError(f"{self.path}: truncated (a tensor needs {self.nbytes} bytes at offset "
                       f"{self.offset}, the file has {len(raw)} there)")
    arr = np.frombuffer(raw, dtype=self.dtype).reshape(self.shape)
    return arr if dtype is None else arr.astype(dtype)


def save(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
  header, offset, blobs = {}, 0, []
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    if arr.dtype not in _NAMES:
      raise ValueError(f"tensor {name!r}: dtype {arr.dtype} cannot be written to safetensors")
    blob = arr.tobytes()
    header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  header["__metadata__"] = metadata or {"format": "pt"}
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
  with fs.open_file(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for blob in blobs:
      f.write(blob)
