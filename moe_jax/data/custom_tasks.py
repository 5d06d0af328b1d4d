"""Tasks and mixtures written in gin, no Python: a data file (or a Hugging Face
dataset, or a parquet export) and a Jinja template, or a promptsource
template; promptsource datasets with all their templates; mixtures of any
registered tasks and mixtures (t0_train included) at stated rates.

Each configurable returns a description; `user_tasks.register_tasks` (bound to
the CUSTOM_TASKS macro) registers them after moe-jax's own tasks, with the
machinery of T0's tasks (rendering, tokenising, rank-classification
`<task>_score_eval` tasks for templates with answer choices). See
docs/own_tasks.md and tests/data/user_task/ for a worked example.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional

import gin
import jinja2

from moe_jax.data import templates
from moe_jax.utils import fs, paths
from moe_jax.utils.validation import close_matches


_NAME = re.compile(r"^[\w\d\.\:_]+$")  # seqio's task names


def _origin(name: str) -> str:
  """The gin file that defines `name` (for messages), else the flag."""
  for path in paths.GIN_FILES:
    try:
      if f"'{name}'" in fs.read_text(path) or f'"{name}"' in fs.read_text(path):
        return path
    except OSError:
      continue
  return "--gin.CUSTOM_TASKS"


def _check_name(kind: str, name) -> None:
  if not isinstance(name, str) or not _NAME.match(name):
    raise ValueError(f"{kind}.name: {name!r} is not a task name (letters, digits, '.', ':' and '_')")


@dataclasses.dataclass(frozen=True)
class TemplateTask:
  name: str
  source: str
  files: tuple
  dataset: Optional[str]
  subset: Optional[str]
  splits: tuple
  inputs: Optional[str]
  targets: Optional[str]
  answer_choices: Optional[str]
  promptsource: Optional[str]
  template: Optional[str]
  category: str
  eval_suites: tuple
  origin: str

  def register(self):
    # seqio and TensorFlow load only when this runs
    from moe_jax.data import p3, templates  # pylint: disable=import-outside-toplevel
    from tasks import registration  # pylint: disable=import-outside-toplevel
    where = f"{self.origin}: template_task {self.name!r}"
    if self.promptsource:
      ps_dataset, _, ps_subset = self.promptsource.partition("/")
      key = (ps_dataset, ps_subset or None)
      try:
        names = templates.template_names(*key)
      except KeyError as e:
        raise ValueError(f"{where}: promptsource={self.promptsource!r}: {e.args[0]}") from None
      if self.template not in names:
        raise ValueError(f"{where}: promptsource {self.promptsource} has no template {self.template!r}"
                         f"{close_matches(str(self.template), names)} ({len(names)} templates)")
      template_name = self.template
    else:
      _check_jinja(where, "inputs", self.inputs)
      _check_jinja(where, "targets", self.targets)
      if self.answer_choices is not None:
        _check_jinja(where, "answer_choices", self.answer_choices)
      key = (f"custom:{self.name}", None)
      template_name = self.name
      templates.add_custom(*key, template_name, self.inputs, self.targets, self.answer_choices)
    spec = p3.DatasetSpec(self.dataset or self.name, self.subset, self.splits, self.name, self.category,
                          source=self.source, files=self.files, template_key=key, task_name=self.name,
                          origin=self.origin)
    registration.register_dataset(spec, templates_=[template_name], eval_suites=self.eval_suites)


def _check_jinja(where: str, part: str, source) -> None:
  if not isinstance(source, str) or not source.strip():
    raise ValueError(f"{where}: {part} must be a non-empty Jinja template, got {source!r}")
  if "|||" in source and part != "answer_choices":
    raise ValueError(f"{where}: {part} contains '|||', which separates inputs from targets; "
                     "give inputs and targets separately")
  try:
    templates.jinja_environment().parse(source)
  except jinja2.TemplateSyntaxError as e:
    raise ValueError(f"{where}: {part} template: Jinja syntax error on its line {e.lineno}: {e.message} "
                     f"({source!r})") from None


@gin.configurable
def template_task(name: str = gin.REQUIRED, source: str = "jsonl", files: Optional[dict] = None,
                  dataset: Optional[str] = None, subset: Optional[str] = None, splits: Optional[dict] = None,
                  inputs: Optional[str] = None, targets: Optional[str] = None,
                  answer_choices: Optional[str] = None, promptsource: Optional[str] = None,
                  template: Optional[str] = None, category: Optional[str] = None,
                  eval_suites=()) -> TemplateTask:
  """One task from rows and one template.

  Rows: `source='jsonl'` with `files` {seqio split: path} (HF-schema rows, one
  JSON object per line), or `source='hf'` / `'parquet:<dir>'` with `dataset`,
  `subset` and `splits` {seqio split: the source's split}.
  Template: `inputs` and `targets` (Jinja over a row's fields, as
  promptsource's; `answer_choices` 'a ||| b' for rank classification, usable
  as `answer_choices[label]`), or `promptsource='dataset/subset'` and
  `template` (one of that dataset's template names).
  `category`: the MoA domain (default: the task's name). `eval_suites`:
  suites whose evaluator scores this task (`t0_eval`, `commonsense` or a new
  suite's name, for EVAL_SUITE); it needs answer choices and a split to score
  ('validation', else the last split given)."""
  _check_name("template_task", name)
  origin = _origin(name)
  where = f"{origin}: template_task {name!r}"
  if (promptsource is None) == (inputs is None and targets is None):
    raise ValueError(f"{where}: give either inputs and targets (Jinja) or promptsource and template")
  if promptsource is None and (inputs is None or targets is None):
    raise ValueError(f"{where}: give both inputs and targets")
  if promptsource is not None and not template:
    raise ValueError(f"{where}: promptsource={promptsource!r} needs template (a template name)")
  kind = source.partition(":")[0]
  if kind == "jsonl":
    if not files or not isinstance(files, dict):
      raise ValueError(f"{where}: source 'jsonl' needs files, e.g. {{'train': 'data/train.jsonl'}}")
    files = {split: fs.normalize(os.path.expanduser(path)) for split, path in files.items()}
    for split, path in files.items():
      if not fs.exists(path):
        raise FileNotFoundError(f"{where}: files[{split!r}] = {path}: no such file")
    splits = {s: s for s in files}
  elif kind in ("hf", "parquet"):
    if not dataset:
      raise ValueError(f"{where}: source {source!r} needs dataset (and subset, splits)")
    splits = splits or {"train": "train", "validation": "validation"}
    files = {}
  else:
    raise ValueError(f"{where}: source {source!r}: expected 'jsonl', 'hf' or 'parquet:<dir>'")
  if isinstance(eval_suites, str):
    eval_suites = (eval_suites,)
  return TemplateTask(name, source, tuple(files.items()), dataset, subset, tuple(splits.items()), inputs,
                      targets, answer_choices, promptsource, template, category or name, tuple(eval_suites),
                      origin)


@dataclasses.dataclass(frozen=True)
class PromptsourceDataset:
  dataset: str
  subset: Optional[str]
  splits: tuple
  category: str
  original_task_only: bool
  mixture: str

  def register(self):
    # seqio and TensorFlow load only when this runs
    from moe_jax.data import p3  # pylint: disable=import-outside-toplevel
    from tasks import registration  # pylint: disable=import-outside-toplevel
    key = self.dataset if self.subset is None else f"{self.dataset}_{self.subset}"
    spec = p3.DatasetSpec(self.dataset, self.subset, self.splits, key, self.category)
    registration.register_dataset(spec, original_task_only=self.original_task_only, mixture=self.mixture)


@gin.configurable
def promptsource_dataset(name: str = gin.REQUIRED, splits: Optional[dict] = None, category: Optional[str] = None,
                         original_task_only: bool = False, mixture: Optional[str] = None) -> PromptsourceDataset:
  """Every (or every original-task) promptsource template of `name`
  ('dataset' or 'dataset/subset'), read from the configured DATA_SOURCE as
  T0's datasets are: one task per template, named as P3 names them, and a
  mixture of them all (`mixture`, default the dataset's key, e.g.
  `super_glue_multirc`), equal rates."""
  dataset, _, subset = str(name).partition("/")
  key = dataset if not subset else f"{dataset}_{subset}"
  splits = splits or {"train": "train", "validation": "validation"}
  return PromptsourceDataset(dataset, subset or None, tuple(splits.items()), category or key,
                             bool(original_task_only), mixture or key)


@dataclasses.dataclass(frozen=True)
class CustomMixture:
  name: str
  members: tuple
  origin: str

  def register(self):
    # seqio and TensorFlow load only when this runs
    import seqio  # pylint: disable=import-outside-toplevel
    from tasks import registration  # pylint: disable=import-outside-toplevel
    known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    for member, rate in self.members:
      registration.ensure(member)
      known |= set(seqio.MixtureRegistry.names())
      if member not in known:
        raise ValueError(f"{self.origin}: mixture {self.name!r}: unknown task or mixture {member!r}"
                         f"{close_matches(member, known)}")
      if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate <= 0:
        raise ValueError(f"{self.origin}: mixture {self.name!r}: the rate of {member!r} must be a positive "
                         f"number, got {rate!r}")
    if self.name in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(self.name)
    seqio.MixtureRegistry.add(self.name, list(self.members))


@gin.configurable
def mixture(name: str = gin.REQUIRED, members: dict = gin.REQUIRED) -> CustomMixture:
  """A seqio Mixture of registered tasks and mixtures, {name: rate}. Rates are
  relative: a mixture member's rate is shared among its own tasks by their
  rates (seqio's sub-mixtures), so {'t0_train': 9, 'my_task': 1} draws one
  example in ten from my_task."""
  _check_name("mixture", name)
  origin = _origin(name)
  if not isinstance(members, dict) or not members:
    raise ValueError(f"{origin}: mixture {name!r}: members must be a non-empty dict {{task or mixture: rate}}")
  return CustomMixture(name, tuple(members.items()), origin)
