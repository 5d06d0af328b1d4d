"""Stable integer ids for tasks (MOELoRA's gate), domains (MoA's routers) and
prompt templates (instruction-embedding routing).

Ids are assigned in registration order (tasks/ registers in a fixed order) and
saved with a run (`save`), so inference reuses exactly the training ids
(`restore` before building datasets).
"""
from __future__ import annotations

import json

from moe_jax.utils import fs

_MAPS: dict[str, dict[str, int]] = {"task_ids": {}, "domain_ids": {}, "template_ids": {}}
_OPTIONAL = ("template_ids",)  # absent from runs saved before it existed


def id_for(kind: str, name: str) -> int:
  table = _MAPS[kind]
  if name not in table:
    table[name] = len(table)
  return table[name]


def task_id(name: str) -> int:
  return id_for("task_ids", name)


def domain_id(name: str) -> int:
  return id_for("domain_ids", name)


def template_id(name: str) -> int:
  """Id of a prompt template, named as its (training) P3 task."""
  return id_for("template_ids", name)


def name_of(kind: str, wanted: int) -> str:
  for name, i in _MAPS[kind].items():
    if i == wanted:
      return name
  raise KeyError(f"no {kind} entry with id {wanted}")


def current() -> dict[str, dict[str, int]]:
  return {k: dict(v) for k, v in _MAPS.items()}


def save(path: str) -> None:
  tmp = path + ".tmp"
  with fs.open_file(tmp, "w") as f:
    json.dump(current(), f, indent=1, sort_keys=True)
  fs.replace(tmp, path)


def restore(path: str) -> None:
  """Replace the maps by a run's saved ones; ids present there win."""
  with fs.open_file(path) as f:
    saved = json.load(f)
  for kind in _MAPS:
    if kind not in saved and kind in _OPTIONAL:
      saved[kind] = {}
    if kind not in saved:
      raise ValueError(f"{path}: no {kind!r} map")
    merged = dict(saved[kind])
    for name in _MAPS[kind]:
      if name not in merged:
        merged[name] = max(merged.values(), default=-1) + 1
    _MAPS[kind] = merged
