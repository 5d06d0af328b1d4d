"""The real P3 prompt templates (promptsource 0.2.3) applied to HF-schema rows."""
from __future__ import annotations

import functools
import re
from typing import Optional
import warnings

from jinja2 import meta


_CUSTOM: dict = {}  # (dataset, subset) -> CustomTemplates, for tasks written in gin (custom_tasks.py)


class CustomTemplates:
  """A user's templates for a dataset, shaped like promptsource's DatasetTemplates."""

  def __init__(self, templates_: dict):
    self.templates = dict(templates_)

  @property
  def all_template_names(self) -> list[str]:
    return list(self.templates)

  def __getitem__(self, name):
    return self.templates[name]


def add_custom(dataset: str, subset: Optional[str], name: str, inputs: str, targets: str,
               answer_choices: Optional[str] = None):
  """A template written as two Jinja strings (promptsource's own Template class,
  so it renders exactly as P3's do: `inputs ||| targets`, `answer_choices`
  separated by `|||`)."""
  _import_promptsource()
  # promptsource loads only when a template is used
  from promptsource.templates import Template
  template = Template(name, f"{inputs} ||| {targets}", "", answer_choices=answer_choices)
  template.metadata.original_task = True  # the user's own task: its templates are the task
  _CUSTOM.setdefault((dataset, subset), CustomTemplates({})).templates[name] = template
  return template


def _import_promptsource():
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # promptsource imports pkg_resources
    try:
      # promptsource loads only when a template is used
      from promptsource.templates import DatasetTemplates
    except ImportError as e:
      raise ImportError(
          f"the P3 templates need promptsource 0.2.3 ({e}); install it with `pip install --no-deps "
          "--ignore-requires-python promptsource==0.2.3` and `pip install 'setuptools<81'` "
          "(`make venv` does both)") from e
  _cache_compiled_jinja()
  return DatasetTemplates


def dataset_templates(dataset: str, subset: Optional[str]):
  """A dataset's templates: the user's (custom_tasks.py) or promptsource's."""
  if (dataset, subset) in _CUSTOM:
    return _CUSTOM[(dataset, subset)]
  return _promptsource_templates(dataset, subset)


@functools.lru_cache(maxsize=None)
def _promptsource_templates(dataset: str, subset: Optional[str]):
  DatasetTemplates = _import_promptsource()
  key = dataset if subset is None else f"{dataset}/{subset}"
  templates = DatasetTemplates(dataset, subset)
  if not templates.all_template_names:
    raise KeyError(f"promptsource has no templates for {key}")
  return templates


def _cache_compiled_jinja() -> None:
  """promptsource compiles a template's Jinja source on every apply (~2 ms, most
  of the rendering time); the sources are a few hundred fixed strings, so we
  memoise its environment's `from_string` (compiled templates are immutable)."""
  # promptsource loads only when a template is used
  from promptsource import templates as ps
  if not hasattr(ps.env.from_string, "cache_info"):
    ps.env.from_string = functools.lru_cache(maxsize=8192)(ps.env.from_string)


def template_names(dataset: str, subset: Optional[str], original_task_only: bool = False) -> list[str]:
  t = dataset_templates(dataset, subset)
  names = sorted(t.all_template_names)
  if original_task_only:
    names = [n for n in names if t[n].metadata.original_task]
  return names


def task_name(dataset: str, subset: Optional[str], template: str, suffix: str = "") -> str:
  """P3 / T0 naming: dataset_subset_template, runs of other characters -> '_'."""
  name = dataset + (f"_{subset}_" if subset else "_") + template + suffix
  return re.sub(r"[^\w\d\._]+", "_", name)


def jinja_environment():
  """promptsource's Jinja environment (its filters, e.g. `choice`)."""
  _import_promptsource()
  # promptsource loads only when a template is used
  from promptsource.templates import env
  return env


# Names promptsource's apply() defines besides the row's fields.
PROVIDED = frozenset({"answer_choices"})


@functools.lru_cache(maxsize=None)
def _referenced(jinja_source: str) -> frozenset:
  from promptsource.templates import env  # knows promptsource's filters (choice, ...)
  return frozenset(meta.find_undeclared_variables(env.parse(jinja_source)))


def referenced_fields(template) -> frozenset:
  """Top-level names the template's Jinja reads (row fields, among others)."""
  return _referenced(template.jinja)


def render(template, row: dict):
  """(inputs, targets, answer_choices) or None when a guarded template renders
  nothing for this row (T0 skips such examples)."""
  parts = template.apply(row)
  if len(parts) != 2 or not parts[0].strip():
    return None
  choices = template.get_answer_choices_list(row) if template.answer_choices else None
  label = row.get("label")
  if (choices and isinstance(label, int) and not isinstance(label, bool) and not -1 <= label < len(choices)
      and "label" in referenced_fields(template)):
    # Jinja renders answer_choices[label] past the end as '' : an empty target, silently.
    raise ValueError(f"field 'label' = {label} is out of range: the template has {len(choices)} answer choices")
  return parts[0], parts[1], choices
