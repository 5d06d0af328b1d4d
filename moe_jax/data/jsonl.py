"""Reading the data directory's JSONL files with errors that say where.

Files follow `<dataset>/<subset or _>/<split>.jsonl` in the Hugging Face
`datasets` schema (see ../shared/data/README.md).
"""
from __future__ import annotations

import functools
import json
from typing import Iterator, Optional, Sequence

from moe_jax.utils import fs, paths


from moe_jax.errors import DataError  # noqa: E402  raised by every reader


def split_path(dataset: str, subset: Optional[str], split: str, data_dir: Optional[str] = None) -> str:
  return fs.join(data_dir or paths.data_dir(), dataset, subset or "_", f"{split}.jsonl")


def _kind(v) -> str:
  if isinstance(v, bool):
    return "a boolean"
  if isinstance(v, (int, float)):
    return "a number"
  return {str: "a string", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def numbered_rows(path: str, required: Sequence[str] = (), same_fields: bool = True) -> Iterator[tuple[int, dict]]:
  """Yields (line number, row) per non-blank line. Raises DataError naming
  `file:line` (and the field) for a line that is not UTF-8 or not a JSON
  object, a missing required field, a field whose JSON type differs from the
  one it has on earlier lines (the HF schema gives each field one type; null
  is allowed anywhere) and, with `same_fields`, a row whose fields differ from
  the first row's (every HF row has every column); an empty file is an error
  too."""
  if not fs.exists(path):
    raise DataError(f"{path}: file not found (data dir: {paths.data_dir()}; set MOE_JAX_DATA_DIR)")
  if fs.isdir(path):
    raise DataError(f"{path}: is a directory, not a JSONL file")
  schema: dict[str, tuple[str, int]] = {}
  first_fields = None
  rows = 0
  with fs.open_file(path, "rb") as f:
    for line_no, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(f"{path}:{line_no}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
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
      if same_fields:
        if first_fields is None:
          first_fields = (set(row), line_no)
        elif set(row) != first_fields[0]:
          missing, extra = sorted(first_fields[0] - set(row)), sorted(set(row) - first_fields[0])
          raise DataError(f"{path}:{line_no}: " + (f"missing field {missing[0]!r}" if missing else
                                                   f"unexpected field {extra[0]!r}")
                          + f" (line {first_fields[1]} has {sorted(first_fields[0])})")
      for field, value in row.items():
        if value is None:
          continue
        kind = _kind(value)
        seen = schema.setdefault(field, (kind, line_no))
        if seen[0] != kind:
          raise DataError(f"{path}:{line_no}: field {field!r} is {kind} ({json.dumps(value)[:40]}), "
                          f"but {seen[0]} on line {seen[1]}")
      rows += 1
      yield line_no, row
  if not rows:
    raise DataError(f"{path}: no rows (the file is empty)")


def read_rows(path: str, required: Sequence[str] = ()) -> Iterator[dict]:
  """Yields one dict per line; bad input raises DataError (see numbered_rows)."""
  for _, row in numbered_rows(path, required):
    yield row


@functools.lru_cache(maxsize=64)
def _table(path: str, version) -> tuple:
  return tuple(read_rows(path))


def table(path: str) -> tuple:
  """A file's rows, parsed once per process (and again if the file changes):
  a mixture has one task per template, so each file backs ~10 tasks, and JSON
  parsing dominated start-up."""
  if not fs.exists(path):
    next(read_rows(path))  # raises the DataError naming the file
  return _table(path, fs.version(path))


def count_rows(path: str) -> int:
  with fs.open_file(path, "rb") as f:
    return sum(1 for line in f if line.strip())
