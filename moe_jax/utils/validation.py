"""Up-front checks of configuration values: types, ranges, divisibility, paths.

Every entry point calls these before it builds a model or touches the disk,
so a bad value stops the run with one line naming the setting (by its gin
macro where one binds it, e.g. `TRAIN_STEPS`) and leaves nothing behind.
Errors are ValueError (exit status 2 through gin_utils.run).
"""
from __future__ import annotations

import difflib
import math
import numbers
import os
import re
from typing import Optional

from gin import config as gin_config

from moe_jax.utils import fs


FEATURE_KEYS = ("inputs", "targets")


def setting(fn: str, param: str) -> str:
  """How the user sets `fn.param`: the macro bound to it (`TRAIN_STEPS`), else `fn.param`."""
  try:
    for (scope, selector), params in gin_config._CONFIG.items():  # pylint: disable=protected-access
      if not scope and selector.split(".")[-1] == fn and param in params:
        ref = params[param]
        if getattr(getattr(ref, "configurable", None), "selector", None) == "gin.macro":
          return ref.scoped_selector.split("/")[0]
  except Exception:  # pylint: disable=broad-except  naming is best effort
    pass
  return f"{fn}.{param}"


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def positive_int(name: str, v, allow_none: bool = False) -> None:
  if v is None and allow_none:
    return
  if not _is_int(v) or v <= 0:
    raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {v!r}")


def non_negative_int(name: str, v) -> None:
  if not _is_int(v) or v < 0:
    raise ValueError(f"{name} must be an integer >= 0, got {v!r}")


def number(name: str, v, positive: bool = False) -> None:
  if not isinstance(v, numbers.Real) or isinstance(v, bool) or math.isnan(v):
    raise ValueError(f"{name} must be a number, got {v!r}")
  if positive and v <= 0:
    raise ValueError(f"{name} must be > 0, got {v!r}")


def feature_lengths(name: str, lengths) -> None:
  """{'inputs': n, 'targets': m} with positive integer lengths."""
  if not isinstance(lengths, dict):
    raise ValueError(f"{name} must be a dict like {{'inputs': 512, 'targets': 128}}, got {lengths!r}")
  missing = [k for k in FEATURE_KEYS if k not in lengths]
  if missing:
    raise ValueError(f"{name} lacks the key {missing[0]!r} (has {sorted(lengths)})")
  unknown = sorted(set(lengths) - set(FEATURE_KEYS))
  if unknown:
    raise ValueError(f"{name} has unknown key(s) {unknown}; expected {list(FEATURE_KEYS)}")
  for k in FEATURE_KEYS:
    if not _is_int(lengths[k]) or lengths[k] <= 0:
      raise ValueError(f"{name}[{k!r}] must be a positive integer, got {lengths[k]!r}")


def output_dir(name: str, path) -> None:
  """`path` can be created as (or already is) a writable directory."""
  if not isinstance(path, str) or not path:
    raise ValueError(f"{name} must be a directory path, got {path!r}")
  if "://" in path:  # gs:// (or another tf.io.gfile filesystem): checked on first write
    return
  p = os.path.abspath(path)
  if os.path.exists(p) and not os.path.isdir(p):
    raise ValueError(f"{name}={path} is a file, not a directory")
  parent = p
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f"{name}={path} lies under the regular file {parent}")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f"{name}={path}: {parent} is not writable")


def existing_path(name: str, path) -> None:
  if not isinstance(path, str) or not path:
    raise ValueError(f"{name} must be a path, got {path!r}")
  if not path.startswith("gs://") and not fs.exists(path):  # gs:// needs credentials: read on use
    raise FileNotFoundError(f"{name}={path}: does not exist")


def regex(name: str, pattern) -> None:
  if pattern is None:
    return
  if not isinstance(pattern, str):
    raise ValueError(f"{name} must be a regular expression string, got {pattern!r}")
  try:
    re.compile(pattern)
  except re.error as e:
    raise ValueError(f"{name}={pattern!r} is not a valid regular expression ({e})") from None


def close_matches(word: str, choices) -> str:
  near = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
  return f"; did you mean {', '.join(near)}?" if near else ""


def names_in(name: str, wanted, known, what: str) -> None:
  """Every entry of the list `wanted` is one of `known`."""
  if isinstance(wanted, str) or not isinstance(wanted, (list, tuple)):
    raise ValueError(f"{name} must be a list of {what} names, got {wanted!r}")
  if not wanted:
    raise ValueError(f"{name} is empty; give at least one {what} (or None for all)")
  for w in wanted:
    if w not in known:
      raise ValueError(f"{name}: unknown {what} {w!r}{close_matches(str(w), known)} "
                       f"(known: {', '.join(sorted(known))})")


def train_args(*, model_dir, mixture_or_task_name, task_feature_lengths, train_steps, batch_size,
               learning_rate, decay_rate, trainable_regex, initial_checkpoint_path, checkpoint_period,
               keep_checkpoints, log_period, eval_period, grad_accum_steps, mesh_shape, seed, shuffle_seed,
               adafactor_step_offset, **_) -> None:
  """The values of `trainer.train`, checked before anything is built or written."""
  s = lambda p: setting("train", p)  # noqa: E731
  output_dir(s("model_dir"), model_dir)
  if not isinstance(mixture_or_task_name, str) or not mixture_or_task_name:
    raise ValueError(f"{s('mixture_or_task_name')} must be a task or mixture name, got {mixture_or_task_name!r}")
  feature_lengths(s("task_feature_lengths"), task_feature_lengths)
  for p, v in (("train_steps", train_steps), ("batch_size", batch_size), ("checkpoint_period", checkpoint_period),
               ("keep_checkpoints", keep_checkpoints), ("log_period", log_period),
               ("grad_accum_steps", grad_accum_steps)):
    positive_int(s(p), v)
  positive_int(s("eval_period"), eval_period, allow_none=True)
  if batch_size % grad_accum_steps:
    raise ValueError(f"{s('grad_accum_steps')}={grad_accum_steps} does not divide "
                     f"{s('batch_size')}={batch_size} (micro-batches must be equal)")
  number(s("learning_rate"), learning_rate, positive=True)
  number(s("decay_rate"), decay_rate, positive=True)
  regex(s("trainable_regex"), trainable_regex)
  if initial_checkpoint_path is not None:
    existing_path(s("initial_checkpoint_path"), initial_checkpoint_path)
  if (not isinstance(mesh_shape, (tuple, list)) or not mesh_shape
      or not all(_is_int(d) and (d > 0 or d == -1) for d in mesh_shape)):
    raise ValueError(f"{s('mesh_shape')} must be a tuple of positive integers (or -1), got {mesh_shape!r}")
  non_negative_int(s("seed"), seed)
  non_negative_int(s("shuffle_seed"), shuffle_seed)
  if adafactor_step_offset is not None:
    non_negative_int(s("adafactor_step_offset"), adafactor_step_offset)


def unused_macros(flag_bindings) -> list[tuple[str, str]]:
  """(macro, close matches) for each `--gin.MACRO=...` that no binding references.

  gin keeps a macro as a binding of `gin.macro` scoped by its name, and a
  reference `%NAME` as a ConfigurableReference to it; a macro set on the
  command line that nothing references is a typo (`LEARNING_RAT`)."""
  bound, referenced = set(), set()

  def walk(v):
    if isinstance(v, gin_config.ConfigurableReference):
      if v.configurable.selector == "gin.macro":
        referenced.add(v.scoped_selector.split("/")[0])
    elif isinstance(v, dict):
      for x in v.values():
        walk(x)
    elif isinstance(v, (list, tuple, set)):
      for x in v:
        walk(x)

  for (scope, selector), params in gin_config._CONFIG.items():  # pylint: disable=protected-access
    if selector == "gin.macro":
      bound.add(scope)
    walk(params)
  out = []
  for b in flag_bindings:
    key = b.split("=", 1)[0].strip()
    if "." in key or "/" in key or key not in bound:
      continue  # a configurable's parameter: gin itself rejects unknown ones
    if key not in referenced:
      out.append((key, close_matches(key, referenced)))
  return out


def check_macros(flag_bindings) -> None:
  bad = unused_macros(flag_bindings)
  if bad:
    key, near = bad[0]
    raise ValueError(f"--gin.{key}: no configuration uses the macro {key}{near}")

