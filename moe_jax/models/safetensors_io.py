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

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_header(path: str) -> dict:
  with open(path, "rb") as f:
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


def load(path: str) -> dict[str, np.ndarray]:
  header = read_header(path)
  base = header.pop("__offset__")
  data = np.memmap(path, dtype=np.uint8, mode="r")
  out = {}
  for name, info in header.items():
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    buf = data[base + start: base + end]
    out[name] = np.frombuffer(buf, dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
  return out


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
  from moe_jax import fs  # local or gs://
  with fs.open_file(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for blob in blobs:
      f.write(blob)
