"""Orbax checkpoints of a training run: periodic, keep-N, atomic, resumable.

A checkpoint holds the trainable and frozen parameters, the optimizer state,
the step and how many batches the data pipeline has produced (so a resumed
run sees the same data order). Orbax writes into a temporary directory and
renames it when complete, so a run killed mid-save leaves the previous
checkpoint as the latest loadable one.
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util


class CheckpointError(ValueError):
  pass


class Checkpoints:
  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, force: bool = False) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state), force=force)
    self.manager.wait_until_finished()

  def restore(self, step: int, abstract_state: dict) -> dict:
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def close(self):
    self.manager.close()


def load_params(path: str) -> dict:
  """All parameters (trainable and frozen) of a moe-jax checkpoint directory
  (the run's `checkpoints/` folder or one `<step>` folder in it)."""
  return params_of(load_state(path))


def params_of(state: dict) -> dict:
  """The full parameter tree of a saved state (trainable and frozen merged)."""
  flat = {**traverse_util.flatten_dict(state["frozen"]), **traverse_util.flatten_dict(state["trainable"])}
  return traverse_util.unflatten_dict(flat)


def load_state(path: str) -> dict:
  """The saved state (trainable, frozen, opt_state, step, ...) as host arrays."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: does not exist")
  step_dir = path
  if not os.path.exists(os.path.join(path, "default")) and not os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")):
    steps = sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []
    if not steps:
      raise CheckpointError(f"{path}: no moe-jax checkpoint (no <step> directories)")
    step_dir = os.path.join(path, str(steps[-1]))
  checkpointer = ocp.StandardCheckpointer()
  item = os.path.join(step_dir, "default")
  try:
    state = checkpointer.restore(item if os.path.exists(item) else step_dir)
  except Exception as e:  # orbax raises many types; the path is what the user needs
    raise CheckpointError(f"{step_dir}: unreadable checkpoint ({type(e).__name__}: {e})") from e
  if not isinstance(state, dict) or "trainable" not in state or "frozen" not in state:
    raise CheckpointError(f"{step_dir}: not a moe-jax training checkpoint")
  return state


def partial_restore(target: dict, source: dict, where: str) -> tuple[dict, list[str]]:
  """Copies every source parameter into `target` (same path, same shape).

  Returns (params, paths that kept their fresh initialisation, e.g. new
  adapters). A shape mismatch or a source parameter the model lacks raises.
  """
  t, s = traverse_util.flatten_dict(target), traverse_util.flatten_dict(source)
  check_compatible(target, source, where)
  fresh = sorted("/".join(k) for k in set(t) - set(s))
  merged = {k: (place_like(s[k], t[k]) if k in s else t[k]) for k in t}
  return traverse_util.unflatten_dict(merged), fresh


def place_like(value, like):
  """`value` (host array, or anything sliceable with a .shape) as an array with
  `like`'s dtype and, when `like` is sharded, its sharding: each device reads
  only its own slice, so no device holds the whole tensor."""
  dtype = like.dtype
  sharding = getattr(like, "sharding", None)
  if sharding is None or isinstance(value, jax.Array):
    return jax.numpy.asarray(value, dtype) if sharding is None else jax.device_put(
        jax.numpy.asarray(value, dtype), sharding)
  placed = jax.make_array_from_callback(tuple(like.shape), sharding,
                                        lambda idx: np.asarray(value[idx]).astype(dtype))
  getattr(value, "release", lambda: None)()
  return placed


def check_compatible(target: dict, source: dict, where: str) -> None:
  """Every source parameter exists in `target` (arrays or abstract shapes) with its shape."""
  t, s = traverse_util.flatten_dict(target), traverse_util.flatten_dict(source)
  unknown = sorted("/".join(k) for k in set(s) - set(t))
  if unknown:
    raise CheckpointError(f"{where}: parameters not in the model: {unknown[:5]}")
  for k, v in s.items():
    if tuple(np.shape(v)) != tuple(np.shape(t[k])):
      raise CheckpointError(f"{where}: parameter {'/'.join(k)} has shape {tuple(np.shape(v))}, "
                            f"the model needs {tuple(np.shape(t[k]))}")
