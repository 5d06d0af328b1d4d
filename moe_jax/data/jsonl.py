"""Reading the data directory's JSONL files with errors that say where.

Files follow `<dataset>/<subset or _>/<split>.jsonl` in the Hugging Face
`datasets` schema (see ../shared/data/README.md).
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Optional, Sequence

from moe_jax import paths


class DataError(ValueError):
  """Malformed or missing data, with the file (and line, field) named."""


def split_path(dataset: str, subset: Optional[str], split: str, data_dir: Optional[str] = None) -> str:
  return os.path.join(data_dir or paths.data_dir(), dataset, subset or "_", f"{split}.jsonl")


def read_rows(path: str, required: Sequence[str] = ()) -> Iterator[dict]:
  """Yields one dict per line; a bad line or a missing field raises DataError."""
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found (data dir: {paths.data_dir()}; set MOE_JAX_DATA_DIR)")
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError as e:
        raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(row, dict):
        raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
      for field in required:
        if field not in row:
          raise DataError(f"{path}:{line_no}: missing field {field!r} (has {sorted(row)})")
      yield row


def count_rows(path: str) -> int:
  with open(path, encoding="utf-8") as f:
    return sum(1 for line in f if line.strip())
