"""Orbax checkpoints of a training run: periodic, keep-N, atomic, resumable.

A checkpoint holds the trainable parameters, the optimizer state, the step
and how many batches the data pipeline has produced (so a resumed run sees
the same data order); with SAVE_FROZEN=True also the frozen parameters.
Without them, the run's `frozen_source.json` says how to rebuild the
backbone (`moe_jax/training/frozen_source.py`). Directories may be local or `gs://`. Orbax writes into a temporary directory and
renames it when complete, so a run killed mid-save leaves the previous
checkpoint as the latest loadable one.

Resuming (`find_resumable`) reads, never writes: it takes the newest step
whose parameter tree matches the model and whose arrays restore, records the
newer ones it had to skip (damaged: missing or truncated array files, an empty
step directory) and refuses a directory that holds another model or method.
The trainer then moves the skipped steps aside (`move_aside`), never deleting
them.
"""
from __future__ import annotations

import contextlib
import logging
from typing import NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from moe_jax.utils import fs


from moe_jax.errors import CheckpointError  # noqa: E402  one class for every checkpoint kind


def directory_of(model_dir: str) -> str:
  """A run's orbax checkpoints folder: MODEL_DIR/checkpoints (local or gs://,
  which orbax writes itself through TensorStore's GCS driver)."""
  return fs.join(model_dir, "checkpoints")


class Checkpoints:
  def __init__(self, directory: str, keep: int = 3):
    self.directory = fs.normalize(directory)
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


class Resume(NamedTuple):
  step: Optional[int]  # None: nothing to resume
  state: Optional[dict]
  skipped: list  # [(step, why)] newer steps that could not be loaded


def step_numbers(directory: str) -> list[int]:
  """The step directories (`<int>`) of a checkpoints folder, oldest first."""
  if not fs.isdir(directory):
    return []
  return sorted(int(d) for d in fs.listdir(directory) if d.isdigit() and fs.isdir(fs.join(directory, d)))


@contextlib.contextmanager
def _quiet_orbax():
  # Reading an item directory directly makes orbax warn that the step's own
  # metadata file is elsewhere; that is expected here.
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _item_dir(step_dir: str) -> str:
  item = fs.join(step_dir, "default")
  return item if fs.exists(item) else step_dir


def _why(e: BaseException) -> str:
  first = next((l.strip() for l in str(e).splitlines() if l.strip()), "")
  return f"{type(e).__name__}: {first[:240]}"


def param_shapes(step_dir: str) -> dict:
  """{"trainable": {path: shape}, "frozen": ... (only if saved)} from a step's
  metadata (no array read)."""
  if not fs.listdir(step_dir):
    raise CheckpointError(f"{step_dir}: empty step directory")
  with _quiet_orbax():
    meta = ocp.StandardCheckpointer().metadata(_item_dir(step_dir))
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, dict) or "trainable" not in tree:
    raise CheckpointError(f"{step_dir}: not a moe-jax training checkpoint (no 'trainable')")
  return {part: {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(tree[part]).items()}
          for part in ("trainable", "frozen") if part in tree}


def compare_params(saved: dict, expected: dict) -> Optional[str]:
  """Why the parameter trees differ (first difference), or None. A checkpoint
  without frozen parameters (PEFT-only) is compared on its trainable ones."""
  for part in ("trainable", "frozen"):
    if part not in saved:
      continue
    s, e = saved[part], expected[part]
    missing, extra = sorted(set(e) - set(s)), sorted(set(s) - set(e))
    if missing:
      return f"it lacks the {part} parameter {missing[0]} ({len(missing)} missing)"
    if extra:
      return f"it has the {part} parameter {extra[0]} this configuration lacks ({len(extra)} in all)"
    for k in sorted(e):
      if s[k] != e[k]:
        return f"{part} parameter {k} has shape {s[k]}, this configuration needs {e[k]}"
  return None


def find_resumable(directory: str, abstract_state: dict, holds: str = "") -> Resume:
  """The newest loadable step of `directory` restored into `abstract_state`
  (without "frozen" when the step has none: PEFT-only).

  A step whose parameter tree differs from `abstract_state`'s is another
  model or method: CheckpointError (`holds` says what the run directory
  records). If steps exist but none loads, CheckpointError listing why."""
  expected = {p: {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract_state[p]).items()}
              for p in ("trainable", "frozen")}
  skipped = []
  for step in reversed(step_numbers(directory)):
    step_dir = fs.join(directory, str(step))
    try:
      saved = param_shapes(step_dir)
    except Exception as e:  # pylint: disable=broad-except  unreadable metadata: a damaged step
      skipped.append((step, _why(e)))
      continue
    differs = compare_params(saved, expected)
    if differs:
      raise CheckpointError(f"{fs.dirname(directory)} holds a run of another model or method "
                            f"(checkpoint step {step}: {differs}){holds}; use a new MODEL_DIR or that "
                            "run's configuration")
    try:
      with _quiet_orbax():
        target = abstract_state if "frozen" in saved else {k: v for k, v in abstract_state.items()
                                                           if k != "frozen"}
        state = ocp.StandardCheckpointer().restore(_item_dir(step_dir), target)
    except Exception as e:  # pylint: disable=broad-except  missing or truncated array files
      skipped.append((step, _why(e)))
      continue
    return Resume(step, state, skipped)
  if skipped:
    raise CheckpointError(f"{directory}: no loadable checkpoint: " + "; ".join(
        f"step {s}: {why}" for s, why in skipped))
  return Resume(None, None, [])


def move_aside(directory: str, step: int, dest: str) -> str:
  """Moves `directory/<step>` to `dest/<step>` (suffixed if taken), out of orbax's view."""
  fs.makedirs(dest)
  target, n = fs.join(dest, str(step)), 1
  while fs.exists(target):
    target, n = fs.join(dest, f"{step}.{n}"), n + 1
  fs.move(fs.join(directory, str(step)), target)
  return target


def load_params(path: str) -> dict:
  """All parameters (trainable and frozen) of a moe-jax checkpoint directory
  (the run's `checkpoints/` folder or one `<step>` folder in it) saved with
  SAVE_FROZEN=True; PEFT-only checkpoints need the model to rebuild the
  backbone: `moe_jax.weights.load_run_checkpoint`."""
  return params_of(load_state(path))


def params_of(state: dict) -> dict:
  """The full parameter tree of a saved state (trainable and frozen merged)."""
  if "frozen" not in state:
    raise CheckpointError("this checkpoint holds only the trained parameters (PEFT-only); rebuild the "
                          "frozen backbone with moe_jax.weights.load_run_checkpoint(model, path)")
  flat = {**traverse_util.flatten_dict(state["frozen"]), **traverse_util.flatten_dict(state["trainable"])}
  return traverse_util.unflatten_dict(flat)


def load_state(path: str) -> dict:
  """The saved state (trainable, opt_state, step, batches_seen and, if it was
  saved, frozen) as host arrays."""
  return load_state_at(path)[1]


def step_dir_of(path: str) -> str:
  """A `<step>` directory: `path` itself or the newest step of a checkpoints folder."""
  path = fs.normalize(path)
  if not fs.exists(path):
    raise CheckpointError(f"{path}: does not exist")
  if fs.exists(fs.join(path, "default")) or fs.exists(fs.join(path, "_CHECKPOINT_METADATA")):
    return path
  steps = sorted(int(d) for d in fs.listdir(path) if d.isdigit()) if fs.isdir(path) else []
  if not steps:
    raise CheckpointError(f"{path}: no moe-jax checkpoint (no <step> directories)")
  return fs.join(path, str(steps[-1]))


def load_state_at(path: str, abstract_state: Optional[dict] = None) -> tuple[str, dict]:
  """(step directory, state) for `path`; restored into `abstract_state`
  (shapes, dtypes and shardings: each device reads only its shards) when
  given, else as host arrays."""
  step_dir = step_dir_of(path)
  try:
    with _quiet_orbax():
      try:
        state = ocp.StandardCheckpointer().restore(_item_dir(step_dir), abstract_state)
      except ValueError as e:
        if abstract_state is not None or "topology" not in str(e).lower():
          raise
        # Written by several hosts (a pod): loaded onto this process's first device.
        state = ocp.StandardCheckpointer().restore(_item_dir(step_dir), _on_one_device(step_dir))
  except Exception as e:  # orbax raises many types; the path is what the user needs
    raise CheckpointError(f"{step_dir}: unreadable checkpoint ({type(e).__name__}: {e})") from e
  if not isinstance(state, dict) or "trainable" not in state:
    raise CheckpointError(f"{step_dir}: not a moe-jax training checkpoint")
  return step_dir, state


def _on_one_device(step_dir: str) -> dict:
  """The saved tree as abstract arrays on this process's first device: a
  checkpoint written by several hosts (a pod) loads on one machine."""
  meta = ocp.StandardCheckpointer().metadata(_item_dir(step_dir))
  tree = getattr(getattr(meta, "item_metadata", meta), "tree", getattr(meta, "item_metadata", meta))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), tree,
                                is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))


def restore_params_like(path: str, like: dict) -> Optional[tuple[str, dict]]:
  """(step directory, {"trainable", "frozen" if saved, "step"}) restored
  straight into `like`'s shardings and dtypes: each device reads only its own
  slices from the checkpoint, nothing else is read. None when the saved
  parameters are not all in `like` with the same shape (another layout: the
  caller goes through host memory and `partial_restore`)."""
  step_dir = step_dir_of(path)
  saved = param_shapes(step_dir)
  flat_like = {"/".join(k): v for k, v in traverse_util.flatten_dict(like).items()}
  if not all(isinstance(v, jax.Array) for v in flat_like.values()):
    return None
  item = {}
  for part, shapes in saved.items():
    if any(n not in flat_like or tuple(flat_like[n].shape) != s for n, s in shapes.items()):
      return None
    item[part] = traverse_util.unflatten_dict({
        tuple(n.split("/")): jax.ShapeDtypeStruct(s, flat_like[n].dtype, sharding=flat_like[n].sharding)
        for n, s in shapes.items()})
  item["step"] = np.zeros((), np.int64)
  try:
    with _quiet_orbax():
      state = ocp.PyTreeCheckpointer().restore(_item_dir(step_dir), args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except  orbax raises many types
    raise CheckpointError(f"{step_dir}: unreadable checkpoint ({type(e).__name__}: {e})") from e
  return step_dir, state


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
