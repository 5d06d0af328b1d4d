"""Where a dataset's examples come from: one switch, read when data are read.

`MOE_JAX_DATA_SOURCE` (or gin `DATA_SOURCE`) picks one of

  jsonl            the data kit under $MOE_JAX_DATA_DIR (`<dataset>/<subset or _>/<split>.jsonl`);
                   where the kit lacks a train split another split stands in (DatasetSpec.kit_splits)
  hf               `datasets.load_dataset(dataset, subset, split=...)`, the real splits (hub or cache)
  parquet:<dir>    the hub's parquet export layout, `<dir>/<dataset>/<subset or default>/<split>/*.parquet`
                   (local or gs://, read through tf.io.gfile)
  p3:<dir>         the pre-rendered bigscience/P3 release: `<dir>/<p3 task>/<split>.tfrecord-*` and
                   `info.<split>.json` (see p3_release.py); examples come rendered and tokenised

Registration never reads data; a dataset the source cannot provide fails when
first read (UnavailableDataError, naming it and the source) unless
`MOE_JAX_SKIP_UNAVAILABLE=1` (gin `SKIP_UNAVAILABLE`) leaves it out of the
training mixtures, checked cheaply (files exist; hf: the builder resolves).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from typing import Optional, Sequence

import gin

from moe_jax.utils import fs
from moe_jax.data import jsonl, parquet, schemas
from moe_jax.errors import DataError, UnavailableDataError  # noqa: F401  (raised for every source)

SOURCE_ENV = "MOE_JAX_DATA_SOURCE"
SKIP_ENV = "MOE_JAX_SKIP_UNAVAILABLE"
KINDS = ("jsonl", "hf", "parquet", "p3")


@gin.configurable
def data_source(source: Optional[str] = None, skip_unavailable: Optional[bool] = None) -> "Source":
  """DATA_SOURCE / SKIP_UNAVAILABLE macros -> the environment every reader sees
  (as DATA_DIR does); called by tasks.registration before registering."""
  if source:
    os.environ[SOURCE_ENV] = source
  if skip_unavailable is not None:
    os.environ[SKIP_ENV] = "1" if skip_unavailable else "0"
  return current()


def skip_unavailable() -> bool:
  return os.environ.get(SKIP_ENV, "0").lower() in ("1", "true", "yes")


def current() -> "Source":
  return parse(os.environ.get(SOURCE_ENV, "jsonl"))


@functools.lru_cache(maxsize=16)
def parse(value: str) -> "Source":
  kind, _, root = value.partition(":")
  if kind not in KINDS:
    raise ValueError(f"{SOURCE_ENV}={value!r}: expected one of jsonl, hf, parquet:<dir>, p3:<dir>")
  if kind in ("parquet", "p3") and not root:
    raise ValueError(f"{SOURCE_ENV}={value!r}: the {kind} source needs a directory ({kind}:<dir>)")
  if kind in ("jsonl", "hf") and root:
    raise ValueError(f"{SOURCE_ENV}={value!r}: the {kind} source takes no directory")
  return Source(kind, root.rstrip("/") or None)


@dataclasses.dataclass(frozen=True)
class Source:
  kind: str
  root: Optional[str] = None

  def __str__(self):
    return self.kind + (f":{self.root}" if self.root else "")

  @property
  def renders(self) -> bool:
    """True when examples come as dataset rows we render (all but p3)."""
    return self.kind != "p3"

  def split_name(self, spec, seqio_split: str) -> str:
    """The source's split behind a seqio split (the kit's stand-in for jsonl)."""
    splits = spec.kit_splits if self.kind == "jsonl" else spec.splits
    return dict(splits)[seqio_split]

  def where(self, spec, seqio_split: str) -> str:
    """Where rows of a split are read from, for messages."""
    split = self.split_name(spec, seqio_split)
    if self.kind == "jsonl":
      return spec.file(seqio_split)
    if self.kind == "hf":
      return f"hf:{spec.hf_name}[{split}]"
    return parquet.split_dir(self.root, spec.dataset, spec.subset, split)

  def table(self, spec, seqio_split: str) -> Sequence[dict]:
    """The split's rows (HF schema) by position: len() and [i]. Raises
    UnavailableDataError. Read once per process and split."""
    split = self.split_name(spec, seqio_split)
    if self.kind == "jsonl":
      path = spec.file(seqio_split)
      if not fs.exists(path):
        raise UnavailableDataError(f"{spec.hf_name}: the jsonl source has no {path} "
                                f"(data dir {fs.dirname(fs.dirname(fs.dirname(path)))}; "
                                f"set MOE_JAX_DATA_DIR, choose another {SOURCE_ENV}, or {SKIP_ENV}=1)")
      rows = jsonl.table(path)
      if not spec.files:  # the kit's own files follow the HF schema
        _check_schema(rows, path, spec.dataset, spec.subset)
      return rows
    if self.kind == "hf":
      return _hf_split(spec, split)  # Arrow-backed: rows are read when indexed
    if self.kind == "parquet":
      return _parquet_table(self.root, spec.dataset, spec.subset, split)
    raise ValueError(f"the {self} source serves rendered P3 tasks, not dataset rows ({spec.hf_name})")

  def missing(self, spec, seqio_split: str, task_names=()) -> Optional[str]:
    """Why this source cannot provide the split (None if it can), checked
    cheaply: files exist, or for hf the dataset builder resolves."""
    if seqio_split not in dict(spec.splits):
      return f"{spec.key} has no {seqio_split!r} split"
    split = self.split_name(spec, seqio_split)
    if self.kind == "jsonl":
      path = spec.file(seqio_split)
      return None if fs.exists(path) else f"no {path}"
    if self.kind == "parquet":
        return parquet.missing(self.root, spec.dataset, spec.subset, split)
    if self.kind == "p3":
      from moe_jax.data import p3_release  # pylint: disable=import-outside-toplevel  (TensorFlow, only for p3)
      absent = [t for t in task_names if not p3_release.has_split(self.root, t, seqio_split)]
      return f"no {seqio_split} split of {len(absent)} P3 task(s) under {self.root}, e.g. {absent[0]}" if absent else None
    return _hf_missing(spec.dataset, spec.subset, split)


def _check_schema(rows, path, dataset, subset) -> None:
  key = (id(rows), path, dataset, subset)
  if key in _SCHEMA_CHECKED:
    return
  try:
    schemas.check(rows, path, dataset, subset)
  except ValueError as e:
    raise DataError(str(e)) from None
  _SCHEMA_CHECKED.add(key)


_SCHEMA_CHECKED: set = set()


def _hf_module():
  if importlib.util.find_spec("datasets") is None:
    raise UnavailableDataError(f"{SOURCE_ENV}=hf needs the `datasets` package (pip install datasets)")
  # HF datasets loads only for DATA_SOURCE='hf'
  import datasets  # pylint: disable=import-outside-toplevel
  return datasets


@functools.lru_cache(maxsize=64)
def _parquet_table(root, dataset, subset, split) -> tuple:
  return tuple(parquet.read_rows(root, dataset, subset, split))


@functools.lru_cache(maxsize=64)
def _hf_split(spec, split):
  datasets = _hf_module()
  try:
    return datasets.load_dataset(spec.dataset, spec.subset, split=split)
  except Exception as e:  # offline without a cache, unknown name, gated data: all name the dataset
    offline = os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE")
    raise UnavailableDataError(
        f"{spec.hf_name} split {split!r}: the hf source cannot load it "
        f"({'offline and not in the HF cache; ' if offline else ''}{type(e).__name__}: {e})") from None


@functools.lru_cache(maxsize=None)
def _hf_missing(dataset, subset, split) -> Optional[str]:
  try:
    datasets = _hf_module()
  except UnavailableDataError as e:
    return str(e)
  try:
    builder = datasets.load_dataset_builder(dataset, subset)
  except Exception as e:  # pylint: disable=broad-except
    return f"datasets.load_dataset_builder({dataset!r}, {subset!r}) failed: {type(e).__name__}"
  splits = builder.info.splits
  if splits and split not in splits:
    return f"{dataset}/{subset}: no split {split!r} (has {sorted(splits)})"
  return None
