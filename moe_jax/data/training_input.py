"""The trainer's input: a host's batches of the training mixture, and their
position, saved with every checkpoint so a resume
continues the data stream where it stopped instead of reading, rendering and
tokenising every earlier row again (t5x's `checkpoint_dataset` does the same).

Each process saves its own tf.data iterator state (`tf.train.Checkpoint`,
through TensorFlow's file systems, so gs:// works) inside the orbax step
directory it belongs to, which orbax's pruning and the damaged-step move-aside
then carry with the step:

    checkpoints/<step>/input_position/process_<i>-of-<n>.index / .data-*
    checkpoints/<step>/input_position/process_<i>-of-<n>.json   written last

The JSON names the layout the state belongs to (process, host rows, the
pipeline's settings) and the batches it had served. A resume under another
layout, or without a readable state, falls back to replaying the stream from
its start, with one line saying why and how long that should take; the
batches are the same either way.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from moe_jax.utils import fs
from moe_jax.data import converters, sources

DIR = "input_position"
PROBE_BATCHES = 8  # replayed before the fallback estimates how long the rest takes


def build(task_or_mixture, lengths: dict, *, first_row: int, host_rows: int, batch_size: int,
          shuffle_seed: int, pack: bool, family: str, process_index: int = 0,
          process_count: int = 1) -> "TrainingInput":
  """The rows `first_row .. first_row + host_rows - 1` of every global batch
  of `batch_size` (a seqio Task or Mixture's train split, shuffled with
  `shuffle_seed`, endlessly), converted for an encoder-decoder (`pack`ed or
  not) or decoder-only (`family`) model."""
  extra = {}
  if hasattr(task_or_mixture, "tasks"):  # a seqio Mixture keeps only inputs/targets unless told
    extra["passthrough_features"] = converters.CONTEXT_FEATURES
  if host_rows != batch_size:
    # seqio and TensorFlow load only when this runs
    import seqio  # pylint: disable=import-outside-toplevel
    extra["shard_info"] = seqio.ShardInfo(index=first_row // host_rows, num_shards=batch_size // host_rows)

  def rows():
    ds = task_or_mixture.get_dataset(sequence_length=lengths, split="train", shuffle=True, seed=shuffle_seed,
                                     num_epochs=None, use_cached=False, **extra)
    if family == "decoder":
      return converters.prefix_lm(ds, lengths["inputs"] + lengths["targets"])
    return converters.encdec(ds, lengths, pack=pack, passthrough=converters.CONTEXT_FEATURES)
  return TrainingInput(rows, {
      "process_index": process_index, "process_count": process_count, "first_row": first_row,
      "host_rows": host_rows, "batch_size": batch_size, "task": task_or_mixture.name,
      "task_feature_lengths": dict(lengths), "pack": bool(pack), "shuffle_seed": int(shuffle_seed),
      "family": family, "data_source": str(sources.current())})


def _name(layout: dict) -> str:
  return f"process_{layout['process_index']}-of-{layout['process_count']}"


def _rows(layout: dict) -> str:
  first, n = layout["first_row"], layout["host_rows"]
  return f"process {layout['process_index']} of {layout['process_count']}, rows {first}-{first + n - 1} of {layout['batch_size']}"


def _pipeline_difference(saved: dict, layout: dict) -> Optional[str]:
  for key in sorted(set(saved) | set(layout)):
    if key not in ("process_index", "process_count", "first_row", "host_rows", "batch_size") and \
        saved.get(key) != layout.get(key):
      return f"{key} was {saved.get(key)!r}, is {layout.get(key)!r}"
  return None


class TrainingInput:
  """A host's training batches (dicts of numpy arrays), drawn from the rows
  `rows()` builds in batches of `layout["host_rows"]`, whose position saves
  and restores.

  `layout` says which stream this is: `process_index`, `process_count`,
  `first_row`, `host_rows`, `batch_size`, plus whatever decides the rows
  (task, lengths, packing, seed, source); a saved position is used only
  under an equal layout."""

  def __init__(self, rows: Callable[[], tf.data.Dataset], layout: dict):
    self.layout = dict(layout)
    self._rows = rows
    self._current = None

  @property
  def _iterator(self):
    # The first iterator of a freshly built dataset: a second one over the
    # same dataset would draw other shuffle and sampling orders.
    if self._current is None:
      options = tf.data.Options()
      # The Python steps (rendering, numpy_function) are pure functions of the
      # row index and the tokenizer holds no position: nothing to lose.
      options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
      batches = self._rows().batch(self.layout["host_rows"], drop_remainder=True)
      self._current = iter(batches.prefetch(2).with_options(options))
    return self._current

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._iterator)
    return {k: np.asarray(v) for k, v in batch.items()}

  def save(self, step_dir: str, batches_seen: int) -> None:
    """This process's position after `batches_seen` batches, into the step."""
    directory = fs.join(step_dir, DIR)
    prefix = fs.join(directory, _name(self.layout))
    fs.makedirs(directory)
    tf.train.Checkpoint(iterator=self._iterator).write(prefix)
    fs.write_text(prefix + ".json", json.dumps({"layout": self.layout, "batches_seen": int(batches_seen)},
                                               indent=1, sort_keys=True))

  def resume(self, step_dir: str, batches_seen: int, damaged_dir: str) -> bool:
    """Continues after `batches_seen` batches: from the position saved in
    `step_dir` when it fits this layout (True), else by replaying them. A
    state that exists but cannot be read is moved to `damaged_dir`."""
    if not batches_seen:
      return False
    why = self._restore(step_dir, batches_seen, damaged_dir)
    if why is None:
      print(f"input position: restored after {batches_seen} batches from {fs.join(step_dir, DIR)}",
            file=sys.stderr)
      return True
    self._current = None  # a failed restore may have moved the iterator
    self._replay(batches_seen, why)
    return False

  def _restore(self, step_dir, batches_seen, damaged_dir) -> Optional[str]:
    """None when restored, else why not."""
    directory = fs.join(step_dir, DIR)
    prefix = fs.join(directory, _name(self.layout))
    if not fs.exists(prefix + ".json"):
      others = sorted(n[:-len(".json")] for n in fs.listdir(directory) if n.endswith(".json")) \
          if fs.isdir(directory) else []
      if not others:
        return f"checkpoint {step_dir} holds no input position"
      try:
        saved = json.loads(fs.read_text(fs.join(directory, others[0] + ".json")))["layout"]
        return f"the position in {step_dir} was saved by {_rows(saved)}; this run is {_rows(self.layout)}"
      except (OSError, ValueError, KeyError, TypeError):
        return f"the position in {step_dir} was saved by {', '.join(others)}; this run is {_rows(self.layout)}"
    try:
      saved = json.loads(fs.read_text(prefix + ".json"))
      layout, seen = saved["layout"], int(saved["batches_seen"])
      if layout == self.layout and seen != batches_seen:
        raise ValueError(f"it holds {seen} batches, the checkpoint {batches_seen}")
    except (OSError, ValueError, KeyError, TypeError) as e:
      return self._damaged(directory, damaged_dir, f"{prefix}.json: {type(e).__name__}: {e}")
    if layout != self.layout:
      if layout.get("host_rows") != self.layout["host_rows"] or layout.get("first_row") != self.layout["first_row"]:
        return f"the position in {step_dir} was saved by {_rows(layout)}; this run is {_rows(self.layout)}"
      return f"the position in {step_dir} belongs to other data ({_pipeline_difference(layout, self.layout)})"
    try:
      tf.train.Checkpoint(iterator=self._iterator).read(prefix).assert_consumed()
    except Exception as e:  # pylint: disable=broad-except  truncated or foreign files
      first = next((l.strip() for l in str(e).splitlines() if l.strip()), "")
      return self._damaged(directory, damaged_dir, f"{prefix}: {type(e).__name__}: {first[:200]}")
    return None

  def _damaged(self, directory, damaged_dir, why) -> str:
    """Moves this process's files aside; the run falls back to replaying."""
    name = _name(self.layout)
    dest = fs.join(damaged_dir, f"{fs.basename(fs.dirname(directory))}.{DIR}")
    fs.makedirs(dest)
    for path in fs.glob(fs.join(directory, name + ".*")):
      fs.move(path, fs.join(dest, fs.basename(path)))
    print(f"warning: input position {why}; moved it to {dest}", file=sys.stderr)
    return "its saved position was damaged"

  def _replay(self, batches_seen: int, why: str) -> None:
    rows = batches_seen * self.layout["host_rows"]
    start = time.perf_counter()
    probe = min(batches_seen, PROBE_BATCHES)
    for _ in range(probe):
      next(self._iterator)
    spent = time.perf_counter() - start
    rate = probe * self.layout["host_rows"] / max(spent, 1e-9)
    left = (batches_seen - probe) * self.layout["host_rows"] / rate
    print(f"input position: {why}: replaying {rows} rows ({batches_seen} batches of {self.layout['host_rows']}) "
          f"to continue the same stream, about {spent + left:.0f} s at the {rate:.0f} rows/s of the first "
          f"{probe} batches", file=sys.stderr, flush=True)
    for _ in range(batches_seen - probe):
      next(self._iterator)
