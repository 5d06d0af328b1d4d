"""The tasks a run can name: moe-jax's own (`import tasks`), then the user's.

t5x's `MIXTURE_OR_TASK_MODULE` (a module name or a list): modules imported
before the task or mixture is looked up, so their `seqio.TaskRegistry.add` /
`MixtureRegistry.add` calls run; they may use moe-jax's tasks and mixtures
(`t0_train`, ...). `CUSTOM_TASKS`: tasks and mixtures written in gin
(`moe_jax.data.custom_tasks`), registered after the modules.

A plain seqio Task has only `inputs` and `targets`; the methods that route by
task or domain read `task_id` / `domain_id` (MOELoRA, MoA). Tasks registered
outside moe-jax get them here, each its own id, named as the task (the MoA
domain of a user's task is its name), unless its examples already carry them.
"""
from __future__ import annotations

import functools
import importlib
import traceback
from typing import Sequence, Union

import gin


@gin.configurable
def register_tasks(modules: Union[None, str, Sequence[str]] = None, custom: Sequence = ()) -> list[str]:
  """Registers every task a run may name; returns the user modules imported."""
  import tasks  # noqa: F401  pylint: disable=import-outside-toplevel  (TF and promptsource: only when used)
  names = [modules] if isinstance(modules, str) else list(modules or [])
  for name in names:
    _import(name)
  for item in custom:
    item.register()
  supply_context_features()
  return names


def _import(name: str) -> None:
  if not isinstance(name, str) or not name:
    raise ValueError(f"MIXTURE_OR_TASK_MODULE: expected a module name (or a list of them), got {name!r}")
  try:
    importlib.import_module(name)
  except Exception as e:  # pylint: disable=broad-except  any error while importing the user's module
    where = ""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename]
    if frames and not isinstance(e, ModuleNotFoundError):
      where = f" at {frames[-1].filename}:{frames[-1].lineno}"
    hint = " (is its directory on PYTHONPATH?)" if isinstance(e, ModuleNotFoundError) and e.name == name else ""
    raise ValueError(f"MIXTURE_OR_TASK_MODULE: cannot import {name!r}{hint}: "
                     f"{type(e).__name__}: {e}{where}") from None


def supply_context_features() -> None:
  """Appends `_with_context` to every registered Task that moe-jax did not
  create and has not yet seen."""
  # seqio and TensorFlow load only when this runs
  import seqio  # pylint: disable=import-outside-toplevel
  from moe_jax.data import ids, p3  # pylint: disable=import-outside-toplevel
  for name in seqio.TaskRegistry.names():
    if p3.is_moe_jax_task(name):
      continue
    task = seqio.TaskRegistry.get(name)
    steps = tuple(task._preprocessor_constructor_args)  # pylint: disable=protected-access
    if any(getattr(s, "supplies_context", False) for s in steps):
      continue
    step = functools.partial(_with_context, task_id=ids.task_id(name), domain_id=ids.domain_id(name),
                             template_id=ids.template_id(name))
    step.supplies_context = True
    # seqio keeps a Task's steps private; appended last, after any cache placeholder.
    task._preprocessor_constructor_args = (*steps, step)  # pylint: disable=protected-access
    task.__dict__.pop("preprocessors", None)  # its cached copy


def _with_context(dataset, *, task_id: int, domain_id: int, template_id: int):
  # TensorFlow loads only when this runs
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  present = set(dataset.element_spec)

  def add(ex):
    out = dict(ex)
    for key, value in (("task_id", task_id), ("domain_id", domain_id), ("template_id", template_id)):
      if key not in present:
        out[key] = tf.constant(value, tf.int32)
    return out
  return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)


