"""Adapter-only export and MOELoRA per-task merged HF checkpoints (the
gin-configurable `export` that `python -m moe_jax.export` runs; see there)."""
from __future__ import annotations

import json
from typing import Optional, Sequence

from flax import traverse_util
import flax.linen as nn
import gin
import numpy as np

from moe_jax.models import build_model, layer_layout, safetensors_io, save_hf_checkpoint
from moe_jax.models.configured import model as configured_model
from moe_jax.training import checkpoints, frozen_source, weights
from moe_jax.utils import fs, validation


ADAPTERS_FILE = "adapters.safetensors"


def save_adapters(trainable: dict, path: str, metadata: Optional[dict] = None) -> str:
  """Writes the trainable parameters as one safetensors file, atomically."""
  flat = traverse_util.flatten_dict(trainable)
  tensors = {"/".join(k): np.asarray(v, np.float32) for k, v in flat.items()}
  fs.makedirs(fs.dirname(fs.normalize(path)))
  tmp = path + ".tmp"
  safetensors_io.save(tmp, tensors, {"format": "moe-jax-adapters", **(metadata or {})})
  fs.replace(tmp, path)
  return path


def load_adapters(path: str) -> dict:
  """The nested parameter dict written by `save_adapters`."""
  if not fs.exists(path):
    raise FileNotFoundError(f"{path}: no adapter file")
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in safetensors_io.load(path).items()})


def _task_ids(checkpoint_path: str) -> dict:
  run_dir = fs.normalize(checkpoint_path)
  while not fs.exists(fs.join(run_dir, "ids.json")) and fs.dirname(run_dir) != run_dir:
    run_dir = fs.dirname(run_dir)
  path = fs.join(run_dir, "ids.json")
  if not fs.exists(path):
    raise FileNotFoundError(f"no ids.json in {checkpoint_path} or its parents (the run's task ids)")
  return json.loads(fs.read_text(path))["task_ids"]


def check_merge(model, task_ids: dict, merge_tasks: Sequence[str]) -> None:
  """MERGE_TASKS needs a MOELoRA model and names tasks of the run."""
  if not model.adapters.merges_per_task:
    raise ValueError(f"MERGE_TASKS needs a MOELoRA model; this one uses {type(model.adapters).__name__}")
  unknown = [t for t in merge_tasks if t not in task_ids]
  if unknown:
    raise KeyError(f"MERGE_TASKS {unknown} are not in the run's task ids {sorted(task_ids)}")


def merged_exports(model, params, task_ids: dict, merge_tasks: Sequence[str], out_dir: str) -> list[str]:
  """MOELoRA: one HF checkpoint per task with that task's weights merged in."""
  check_merge(model, task_ids, merge_tasks)
  plain = build_model(model.config)
  return [save_hf_checkpoint(plain, model.adapters.merge_task(params, task_ids[t]),
                             fs.join(out_dir, "merged", t), overwrite=True) for t in merge_tasks]


@gin.configurable
def export(checkpoint_path: str = gin.REQUIRED, export_dir: str = gin.REQUIRED,
           merge_tasks: Sequence[str] = ()) -> list[str]:
  """Everything is checked (configuration, checkpoint, MERGE_TASKS) before the
  first file is written; an export directory this call created is removed if
  writing fails."""
  s = lambda p: validation.setting("export", p)  # noqa: E731
  validation.existing_path(s("checkpoint_path"), checkpoint_path)
  validation.output_dir(s("export_dir"), export_dir)
  if isinstance(merge_tasks, str) or not isinstance(merge_tasks, (list, tuple)):
    raise ValueError(f"{s('merge_tasks')} must be a list of task keys, got {merge_tasks!r}")
  model = configured_model()
  task_ids = None
  if merge_tasks:
    task_ids = _task_ids(checkpoint_path)
    check_merge(model, task_ids, merge_tasks)
  state = checkpoints.load_state(checkpoint_path)
  # A checkpoint of another model or method would export silently wrong weights.
  abstract = nn.unbox(model.abstract_variables()["params"])
  checkpoints.check_compatible(abstract, layer_layout.match_layout(
      checkpoints.params_of(state) if "frozen" in state else state["trainable"], abstract), checkpoint_path)
  params = checkpoints.params_of(state) if "frozen" in state else None
  if merge_tasks and params is None:  # the merged backbones need every weight: rebuild the frozen ones
    params, _, _ = weights.load_initial(model, frozen_source.init_params(model, 0), checkpoint_path)
  created = not fs.exists(export_dir)
  try:
    written = [save_adapters(state["trainable"], fs.join(export_dir, ADAPTERS_FILE),
                             {"step": str(int(state["step"]))})]
    if merge_tasks:
      written += merged_exports(model, params, task_ids, merge_tasks, export_dir)
  except BaseException:
    if created:
      fs.rmtree(export_dir)
    raise
  for w in written:
    print(f"wrote {w}")
  return written
