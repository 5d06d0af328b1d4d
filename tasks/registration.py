"""Registers the suites' Tasks and Mixtures with seqio."""
from __future__ import annotations

import seqio

from moe_jax.data import jsonl, p3
from moe_jax.data.rank_eval import EvalDataset
from tasks import suites

T0_CAP = 500_000  # T0's per-dataset example cap (Sanh et al. 2022)
REGISTERED: dict[str, list[p3.RegisteredTask]] = {}  # spec key -> its tasks


def _register(spec, original_task_only=False):
  key = (spec.key, original_task_only)
  if key not in _DONE:
    _DONE[key] = p3.register(spec, original_task_only=original_task_only)
    REGISTERED.setdefault(spec.key, [])
    names = {t.name for t in REGISTERED[spec.key]}
    REGISTERED[spec.key] += [t for t in _DONE[key] if t.name not in names]
  return _DONE[key]


_DONE: dict = {}


def _add_mixture(name, tasks_and_rates):
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  if tasks_and_rates:
    seqio.MixtureRegistry.add(name, tasks_and_rates)


def register_all():
  train = []
  for spec in suites.T0_TRAIN:
    registered = _register(spec)
    if not spec.present():
      continue
    rows = jsonl.count_rows(spec.file("train"))
    rate = min(rows, T0_CAP / len(registered))
    train += [(t.name, rate) for t in registered]
  _add_mixture("t0_train", train)

  held_out = []
  for spec in suites.HELD_OUT:
    registered = _register(spec, original_task_only=True)
    if spec.present():
      held_out += [t.score_eval for t in registered if t.score_eval]
  _add_mixture("t0_eval_score_eval", [(n, 1.0) for n in held_out])

  cs_train, cs_eval = [], []
  for spec in suites.COMMONSENSE:
    registered = _register(spec, original_task_only=True)
    if not spec.present():
      continue
    if "train" in dict(spec.splits):
      cs_train += [(t.name, 1.0) for t in registered]
    cs_eval += [(t.score_eval, 1.0) for t in registered if t.score_eval]
  _add_mixture("commonsense_train", cs_train)
  _add_mixture("commonsense_score_eval", cs_eval)


def eval_suite(name: str = "t0_eval") -> list[EvalDataset]:
  """The datasets of a zero-shot suite, with presence checked now."""
  if name == "t0_eval":
    specs, split_of = suites.HELD_OUT, {}
  elif name == "commonsense":
    specs, split_of = suites.COMMONSENSE, suites.COMMONSENSE_EVAL_SPLIT
  else:
    raise KeyError(f"unknown eval suite {name!r}; known: ['t0_eval', 'commonsense']")
  out = []
  for spec in specs:
    tasks_ = _register(spec, original_task_only=True)
    out.append(EvalDataset(spec.key, [t.score_eval for t in tasks_ if t.score_eval], spec.present(),
                           split_of.get(spec.key, "validation")))
  return out
