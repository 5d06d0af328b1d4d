"""Rows of the Hugging Face hub's parquet export, local or on gs://.

Layout: `<root>/<dataset>/<subset or default>/<split>/*.parquet` (files read in
name order), as the hub's `refs/convert/parquet` branch lays a dataset out. A
dataset without subset whose only config has another name (the hub calls
ANLI's `plain_text`) is found under that single config. Read through
tf.io.gfile so `gs://` works wherever TensorFlow reaches the bucket.
"""
from __future__ import annotations

import posixpath
from typing import Iterator, Optional

from moe_jax.errors import DataError, UnavailableDataError


def _gfile():
  # TensorFlow loads only when this runs
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.io.gfile


def _config_dir(root: str, dataset: str, subset: Optional[str]) -> str:
  base = posixpath.join(root, dataset)
  if subset is not None:
    return posixpath.join(base, subset)
  default = posixpath.join(base, "default")
  gfile = _gfile()
  if gfile.isdir(default) or not gfile.isdir(base):
    return default
  configs = [c.rstrip("/") for c in gfile.listdir(base) if gfile.isdir(posixpath.join(base, c))]
  return posixpath.join(base, configs[0]) if len(configs) == 1 else default


def split_dir(root: str, dataset: str, subset: Optional[str], split: str) -> str:
  return posixpath.join(_config_dir(root, dataset, subset), split)


def files(root: str, dataset: str, subset: Optional[str], split: str) -> list[str]:
  return sorted(_gfile().glob(posixpath.join(split_dir(root, dataset, subset, split), "*.parquet")))


def missing(root: str, dataset: str, subset: Optional[str], split: str) -> Optional[str]:
  return None if files(root, dataset, subset, split) else f"no {split_dir(root, dataset, subset, split)}/*.parquet"


def read_rows(root: str, dataset: str, subset: Optional[str], split: str) -> Iterator[dict]:
  """One dict per row, in file then row order (the HF schema, as load_dataset gives)."""
  # pyarrow loads only for a parquet source
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  paths = files(root, dataset, subset, split)
  if not paths:
    name = dataset if subset is None else f"{dataset}/{subset}"
    raise UnavailableDataError(f"{name}: the parquet source has no "
                               f"{split_dir(root, dataset, subset, split)}/*.parquet")
  for path in paths:
    with _gfile().GFile(path, "rb") as f:  # one file in memory (the hub's shards are <= ~500 MB)
      data = f.read()
    try:
      batches = pq.ParquetFile(pa.BufferReader(data)).iter_batches(batch_size=1024)
      batches = [b.to_pylist() for b in batches]
    except Exception as e:  # a truncated or foreign file names itself
      raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    del data
    for batch in batches:
      yield from batch
