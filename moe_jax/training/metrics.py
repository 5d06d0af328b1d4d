"""Training observability: train_metrics.jsonl, TensorBoard, a console progress line."""
from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.models import layer_layout
from moe_jax.utils import fs


def mean_router_entropy(router_stats) -> jax.Array:
  """Mean over routers and examples of H(p) of the sown expert probabilities."""
  leaves = [x for x in jax.tree_util.tree_leaves(layer_layout.unstack_layers(router_stats)) if x.ndim == 2]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  ent = [jnp.mean(-jnp.sum(p * jnp.log(jnp.maximum(p, 1e-9)), -1)) for p in leaves]
  return jnp.mean(jnp.stack(ent))


def read_log(path: str, up_to_step: int) -> tuple[list[str], list[tuple[int, str]]]:
  """The lines of train_metrics.jsonl to keep when resuming from `up_to_step`
  (later ones are redone), and (line number, why) for lines that do not parse:
  a SIGKILL during an append leaves a torn last line, which must not stop the
  resume. Reads only."""
  if not fs.exists(path):
    return [], []
  keep, dropped = [], []
  with fs.open_file(path, "rb") as f:
    for line_no, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        row = json.loads(raw.decode("utf-8"))
        step = row["step"]
      except (ValueError, KeyError, TypeError) as e:
        dropped.append((line_no, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"))
        continue
      if step <= up_to_step:
        keep.append(json.dumps(row) + "\n")
  return keep, dropped


def write_log(path: str, lines: list[str]) -> None:
  """Replaces the log by `lines` atomically."""
  fs.write_text(path, "".join(lines))


def host_rows(x) -> np.ndarray:
  """The rows of a batch-sharded array that this process holds, in order: on
  several hosts a global array cannot be fetched whole, and each host's task
  ids describe its own rows only."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  parts = {}
  for shard in x.addressable_shards:  # model-axis replicas repeat a row range
    parts.setdefault(shard.index[0].start or 0, np.asarray(shard.data))
  return np.concatenate([parts[k] for k in sorted(parts)])


class Logger:
  def __init__(self, model_dir: str, total_steps: int, batch_size: int, start_step: int,
               kept_lines: tuple = (), write: bool = True):
    import tensorflow as tf  # TensorBoard summaries (gfile: local or gs://)
    self._tf = tf
    self.path = fs.join(model_dir, "train_metrics.jsonl")
    self.write = write  # False: another process writes the log; this one only computes rows
    self.writer = tf.summary.create_file_writer(fs.join(model_dir, "tensorboard", "train")) if write else None
    # Object stores cannot append: a URI log is rewritten whole from these lines.
    self._lines = list(kept_lines) if fs.is_uri(self.path) else None
    self.total, self.batch_size = total_steps, batch_size
    self.start_step, self.t0 = start_step, time.time()
    self._tokens, self._window_start, self._window_step = 0, time.time(), start_step
    self._task_loss: dict[int, list[float]] = {}

  def log(self, step, m, learning_rate, tokens, task_ids, force=False) -> dict:
    self._tokens += tokens
    if task_ids is not None:
      per_example = host_rows(m["per_example_cross_entropy"])
      for t, l in zip(np.asarray(task_ids), per_example):
        self._task_loss.setdefault(int(t), []).append(float(l))
    if not force:
      return {}
    now = time.time()
    elapsed = max(now - self._window_start, 1e-9)
    steps = step - self._window_step
    row = {"step": step, "loss": float(m["loss"]), "learning_rate": float(learning_rate),
           "tokens_per_sec": self._tokens / elapsed, "steps_per_sec": steps / elapsed}
    for k in ("cross_entropy", "z_loss", "aux_loss", "accuracy", "router_entropy", "grad_norm"):
      if k in m:
        row[k] = float(m[k])
    if self._task_loss:
      row["task_loss"] = {str(k): float(np.mean(v)) for k, v in sorted(self._task_loss.items())}
    self._tokens, self._window_start, self._window_step = 0, now, step
    self._task_loss = {}
    if not self.write:
      return row
    line = json.dumps(row) + "\n"
    if self._lines is None:
      with open(self.path, "a") as f:
        f.write(line)
    else:
      self._lines.append(line)
      write_log(self.path, self._lines)
    with self.writer.as_default():
      for k, v in row.items():
        if isinstance(v, float):
          self._tf.summary.scalar(k, v, step=step)
      for t, v in row.get("task_loss", {}).items():
        self._tf.summary.scalar(f"task_loss/task_{t}", v, step=step)
    self.writer.flush()
    rate = row["steps_per_sec"]
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    print(f"step {step}/{self.total} | loss {row['loss']:.4f} | {rate:.2f} steps/s | "
          f"{row['tokens_per_sec']:.0f} tokens/s | ETA {eta:.0f}s", file=sys.stderr, flush=True)
    return row

  def close(self):
    if self.writer is not None:
      self.writer.close()
