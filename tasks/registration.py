"""Registers the suites' Tasks and Mixtures with seqio.

Nothing here reads data or touches the network: template counts come from
promptsource, train sizes from tasks/split_sizes.py. A dataset the data source
cannot provide fails when first read, or is left out of the training mixtures
when SKIP_UNAVAILABLE is set (see moe_jax.data.sources); `MIXTURES` keeps what
each mixture was meant to hold and what was left out, for
`python -m moe_jax.data.inspect`.
"""
from __future__ import annotations

import dataclasses
import sys

import seqio

from moe_jax.data import p3, registry, sources
from moe_jax.data.rank_eval import EvalDataset
from tasks import split_sizes, suites

T0_CAP = 500_000  # T0's per-dataset example cap (Sanh et al. 2022)
REGISTERED: dict[str, list[p3.RegisteredTask]] = {}  # spec key -> its tasks


@dataclasses.dataclass
class MixtureEntry:
  spec: p3.DatasetSpec
  tasks: list[str]  # the tasks of this dataset the mixture is meant to hold
  rate: float  # per task
  left_out: str | None = None  # why SKIP_UNAVAILABLE left it out


MIXTURES: dict[str, list[MixtureEntry]] = {}


def t0_rate(train_size: int, num_templates: int) -> int:
  """Rate of each of a dataset's tasks, as the MoV release computes it
  (for-ai/parameter-efficient-moe t0_data/tasks.py, `mixture_cap`): the train
  size, unless that exceeds 500,000; then 500,000 // templates. Not
  min(size, 500000 / templates): glue/qqp (363,846 rows, 6 templates) keeps
  363,846 per task."""
  return T0_CAP // num_templates if train_size > T0_CAP else train_size


def _register(spec, original_task_only=False, only=None):
  key = (spec, original_task_only, tuple(only) if only else None)  # a changed spec registers anew
  if key not in _DONE:
    _DONE[key] = p3.register(spec, original_task_only=original_task_only, only=only)
    REGISTERED.setdefault(spec.key, [])
    names = {t.name for t in REGISTERED[spec.key]}
    REGISTERED[spec.key] += [t for t in _DONE[key] if t.name not in names]
  return _DONE[key]


_DONE: dict = {}


def _add_mixture(name, entries, split):
  """Registers `name` over the entries' tasks; with SKIP_UNAVAILABLE, entries
  the source cannot provide are left out (and said so on stderr)."""
  skip = sources.skip_unavailable()
  for e in entries:
    e.left_out = e.spec.missing(split, e.tasks) if skip else None
  MIXTURES[name] = entries
  left_out = [e.spec.key for e in entries if e.left_out]
  if left_out:
    print(f"{name}: SKIP_UNAVAILABLE left out {len(left_out)} of {len(entries)} datasets the "
          f"{sources.current()} source cannot provide: {', '.join(left_out)}", file=sys.stderr)
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  tasks_and_rates = [(t, e.rate) for e in entries if not e.left_out for t in e.tasks]
  if tasks_and_rates:
    seqio.MixtureRegistry.add(name, tasks_and_rates)


def register_dataset(spec, *, original_task_only=False, templates_=None, eval_suites=(), mixture=None):
  """A dataset outside the suites (moe_jax.data.custom_tasks): its tasks, a
  mixture of them when `mixture` is named (equal rates), and its
  rank-classification tasks added to `eval_suites`."""
  registered = _register(spec, original_task_only, templates_)
  if not registered:
    raise ValueError(f"{spec.key}: no template to register (original_task_only={original_task_only})")
  if mixture:
    _add_mixture(mixture, [MixtureEntry(spec, [t.name for t in registered], 1.0)], "train")
  for suite in eval_suites:
    score = [t.score_eval for t in registered if t.score_eval]
    if not score:
      raise ValueError(f"{spec.origin or spec.key}: {spec.key} joins eval suite {suite!r} but has no answer "
                       "choices to rank (rank classification scores each choice)")
    split = "validation" if "validation" in dict(spec.splits) else spec.splits[-1][0]
    _EXTRA_EVAL.setdefault(suite, {})[spec.key] = (spec, score, split)
  return registered


_EXTRA_EVAL: dict = {}  # suite -> {dataset key: (spec, score tasks, split)}, from register_dataset


def _t0_plus(name, extra):
  """T0's mixture plus `extra` datasets, every template, T0's rates."""
  def register():
    entries = list(MIXTURES["t0_train"])
    for spec in extra:
      registered = _register(spec)
      rate = t0_rate(split_sizes.train_size(spec.dataset, spec.subset), len(registered))
      entries.append(MixtureEntry(spec, [t.name for t in registered], rate))
    _add_mixture(name, entries, "train")
  return register


def ensure(name: str) -> None:
  """Registers a mixture registered on first use (T0+, T0++)."""
  # seqio and TensorFlow load only when this runs
  from moe_jax.data import registry  # pylint: disable=import-outside-toplevel
  registry.ensure(name)


def register_all():
  sources.data_source()  # gin DATA_SOURCE / SKIP_UNAVAILABLE, when configured, reach the env
  train = []
  for spec in suites.T0_TRAIN:
    # Every template, as T0 (its rate counts them all). The release's TASK_BLACKLIST
    # also drops `gigaword_summarize_`, but promptsource 0.2.3 has no such template
    # (its gigaword tasks are TLDR, first_sentence_title, ...), so nothing to drop.
    registered = _register(spec)
    rate = t0_rate(split_sizes.train_size(spec.dataset, spec.subset), len(registered))
    train.append(MixtureEntry(spec, [t.name for t in registered], rate))
  _add_mixture("t0_train", train, "train")

  held_out = []
  for spec in suites.HELD_OUT:
    registered = _register(spec, original_task_only=True)
    held_out.append(MixtureEntry(spec, [t.score_eval for t in registered if t.score_eval], 1.0))
  _add_mixture("t0_eval_score_eval", held_out, "validation")

  cs_train, cs_eval = [], []
  for spec in suites.COMMONSENSE:
    registered = _register(spec, original_task_only=True)
    if "train" in dict(spec.splits):
      cs_train.append(MixtureEntry(spec, [t.name for t in registered], 1.0))
    cs_eval.append(MixtureEntry(spec, [t.score_eval for t in registered if t.score_eval], 1.0))
  _add_mixture("commonsense_train", cs_train, "train")
  _add_mixture("commonsense_score_eval", cs_eval, None)  # None: every split of the spec

  # T0+ and T0++ re-register datasets that the held-out and commonsense suites
  # define with other splits and categories, so only when a run names them.
  registry.LAZY["t0_plus_train"] = _t0_plus("t0_plus_train", suites.T0_PLUS_EXTRA)
  registry.LAZY["t0_plus_plus_train"] = _t0_plus("t0_plus_plus_train",
                                                 suites.T0_PLUS_EXTRA + suites.T0_PLUS_PLUS_EXTRA)


def eval_suite(name: str = "t0_eval") -> list[EvalDataset]:
  """The datasets of a zero-shot suite, with presence (in the current source) checked now."""
  if name == "t0_eval":
    specs, split_of = suites.HELD_OUT, {}
  elif name == "commonsense":
    specs, split_of = suites.COMMONSENSE, suites.COMMONSENSE_EVAL_SPLIT
  elif name in _EXTRA_EVAL:
    specs, split_of = [], {}
  else:
    raise KeyError(f"unknown eval suite {name!r}; known: {suite_names()}")
  out = []
  for spec in specs:
    tasks_ = _register(spec, original_task_only=True)
    score = [t.score_eval for t in tasks_ if t.score_eval]
    split = split_of.get(spec.key, "validation")
    out.append(EvalDataset(spec.key, score, spec.missing(split, score) is None, split))
  for key, (spec, score, split) in _EXTRA_EVAL.get(name, {}).items():  # the user's tasks
    out.append(EvalDataset(key, score, spec.missing(split, score) is None, split))
  return out


def suite_names() -> list[str]:
  return ["t0_eval", "commonsense", *[s for s in _EXTRA_EVAL if s not in ("t0_eval", "commonsense")]]
