"""The pre-rendered bigscience/P3 release, as the released MoV code reads it.

One folder per P3 task (`super_glue_cb_GPT_3_style`,
`super_glue_cb_GPT_3_style_score_eval`, `anli_GPT_3_style_r1`, ...) holding
`<split>.tfrecord-NNNNN-of-NNNNN` files of tf.train.Example and
`info.<split>.json` (seqio's cache info: `{"features": {name: {"dtype", "shape"}}}`).
Features: `inputs` / `targets` (T5 token ids; P3 appends EOS to targets only),
`inputs_pretokenized` / `targets_pretokenized`, and for `_score_eval` tasks
`idx` ([example, choice]), `is_correct`, `weight`. Integers and booleans are
stored as int64, as seqio's cache writes them.
"""
from __future__ import annotations

import json
import posixpath
from typing import Optional

import numpy as np
import tensorflow as tf

from moe_jax.errors import DataError, UnavailableDataError

SHUFFLE_BUFFER = 1_000

_STORED = {"int32": tf.int64, "int64": tf.int64, "bool": tf.int64, "float32": tf.float32, "string": tf.string}


def info_path(root: str, task: str, split: str) -> str:
  return posixpath.join(root, task, f"info.{split}.json")


def has_split(root: str, task: str, split: str) -> bool:
  return tf.io.gfile.exists(info_path(root, task, split))


def files(root: str, task: str, split: str) -> list[str]:
  return sorted(tf.io.gfile.glob(posixpath.join(root, task, f"{split}.tfrecord-*")))


def features(root: str, task: str, split: str) -> dict:
  """name -> (dtype name, shape) from info.<split>.json."""
  path = info_path(root, task, split)
  try:
    with tf.io.gfile.GFile(path) as f:
      info = json.load(f)
    out = {k: (v["dtype"], tuple(v["shape"])) for k, v in info["features"].items()}
  except (KeyError, TypeError, ValueError) as e:
    raise DataError(f"{path}: not a seqio cache info file ({type(e).__name__}: {e})") from None
  for name, (dtype, _) in out.items():
    if dtype not in _STORED:
      raise DataError(f"{path}: feature {name!r} has unsupported dtype {dtype!r}")
  return out


def _description(spec: dict) -> dict:
  desc = {}
  for name, (dtype, shape) in spec.items():
    if any(d is None or d < 0 for d in shape):  # variable length (seqio writes [null])
      desc[name] = tf.io.FixedLenSequenceFeature([], _STORED[dtype], allow_missing=True)
    else:
      desc[name] = tf.io.FixedLenFeature(shape, _STORED[dtype])
  return desc


def read(root: str, task: str, split: str, *, shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
  """The task's examples with their declared dtypes (int32, bool, float32, string)."""
  if not has_split(root, task, split):
    raise UnavailableDataError(f"{task}: the p3 source has no {info_path(root, task, split)}")
  spec = features(root, task, split)
  paths = files(root, task, split)
  if not paths:
    raise UnavailableDataError(f"{task}: the p3 source has {info_path(root, task, split)} but no "
                               f"{split}.tfrecord-* files")
  if shuffle_seed is not None:  # files in a seeded order, records through seqio's default buffer
    paths = [paths[i] for i in np.random.RandomState(shuffle_seed % (2 ** 32)).permutation(len(paths))]
  ds = tf.data.TFRecordDataset(paths)
  if shuffle_seed is not None:
    # 1,000 as seqio's SHUFFLE_BUFFER_SIZE, which T0's cached P3 tasks trained
    # with: a buffer is filled when its task is first sampled (start-up) and
    # is saved with every checkpoint's input position (10,000 made it ~2 GB
    # per host for a 106-task mixture of P3-sized records).
    ds = ds.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed)
  desc = _description(spec)

  def parse(record):
    ex = tf.io.parse_single_example(record, desc)
    return {k: tf.cast(v, getattr(tf, spec[k][0])) if spec[k][0] != "string" else v for k, v in ex.items()}
  return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
