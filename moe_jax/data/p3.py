"""seqio Tasks from P3 templates over the data directory's JSONL files.

One Task per (dataset, template), named as P3 names them, whose examples are
the template rendered on each row (`inputs`, `targets` text, then tokenised).
For templates with answer choices, also `<task>_score_eval`: one row per
(example, answer choice) with the example's `idx`, the `choice_idx` and
`is_correct`, for rank classification. Rows a guarded template renders
nothing for are skipped, as in T0. Every example carries `task_id` (per
dataset) and `domain_id` (per dataset category) for MOELoRA and MoA.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import zlib
from typing import Optional

import numpy as np
import seqio
import tensorflow as tf

from moe_jax.data import ids, jsonl, templates, vocab

SOURCES = ("jsonl", "hf")
SHUFFLE_BUFFER = 16  # MOE_JAX_DATA_SOURCE: local JSONL (default) or HF `datasets`


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A dataset as the suites see it: which file split backs each seqio split."""
  dataset: str
  subset: Optional[str]
  splits: tuple[tuple[str, str], ...]  # (seqio split, file split), e.g. (("validation", "dev_r1"),)
  key: str  # e.g. "anli_r1": the unit of task ids, eval rows and mixtures
  category: str  # domain (T0's task_by_convention)
  suffix: str = ""  # P3 name suffix, e.g. "_r1"

  def file(self, seqio_split: str) -> str:
    return jsonl.split_path(self.dataset, self.subset, dict(self.splits)[seqio_split])

  def present(self) -> bool:
    return all(os.path.exists(self.file(s)) for s, _ in self.splits)


def _rows(spec: DatasetSpec, split: str):
  source = os.environ.get("MOE_JAX_DATA_SOURCE", "jsonl")
  if source == "hf":  # for users with network or a local HF cache; not used in tests
    import datasets  # pylint: disable=import-outside-toplevel
    yield from datasets.load_dataset(spec.dataset, spec.subset, split=dict(spec.splits)[split])
    return
  if source != "jsonl":
    raise ValueError(f"MOE_JAX_DATA_SOURCE={source!r}; expected one of {SOURCES}")
  yield from _parsed_rows(spec.file(split))


@functools.lru_cache(maxsize=64)
def _parsed_file(path: str, mtime_ns: int) -> tuple:
  return tuple(jsonl.read_rows(path))


def _parsed_rows(path: str):
  """A file's rows, parsed once per process: a mixture has one task per
  template, so each file backs ~10 tasks, and JSON parsing dominated start-up."""
  if not os.path.exists(path):
    yield from jsonl.read_rows(path)  # raises the DataError naming the file
    return
  yield from _parsed_file(path, os.stat(path).st_mtime_ns)


def _ordered_rows(spec, split, shuffle_seed):
  """(row index, row) in file order, or in a seeded random order when training:
  rows are cheap to read, templates are not, so the order is shuffled before
  rendering instead of through a large tf.data shuffle buffer."""
  rows = enumerate(_rows(spec, split))
  if shuffle_seed is None:
    return rows
  rows = list(rows)
  order = np.random.RandomState(shuffle_seed % (2 ** 32)).permutation(len(rows))
  return (rows[i] for i in order)


def _examples(spec, template_name, score_eval, split, shuffle_seed=None):
  template = templates.dataset_templates(spec.dataset, spec.subset)[template_name]
  task_id, domain_id = ids.task_id(spec.key), ids.domain_id(spec.category)
  needed = None
  for idx, row in _ordered_rows(spec, split, shuffle_seed):
    if needed is None:  # the fields this template reads, as the first row spells the schema
      needed = templates.referenced_fields(template) & set(row)
    missing = needed - set(row)
    if missing:  # Jinja would silently render a missing field as ''
      raise jsonl.DataError(f"{spec.file(split)}:{idx + 1}: missing field {sorted(missing)[0]!r} "
                            f"needed by template {template_name!r}")
    try:
      rendered = templates.render(template, row)
    except Exception as e:  # a template error names the row it failed on
      raise jsonl.DataError(f"{spec.file(split)}:{idx + 1}: template {template_name!r} failed: {e!r}") from e
    if rendered is None:
      continue
    inputs, target, choices = rendered
    base = {"inputs": inputs, "idx": idx, "task_id": task_id, "domain_id": domain_id}
    if not score_eval:
      yield dict(base, targets=target)
      continue
    stripped = [c.strip() for c in choices]
    if target.strip() not in stripped:
      continue  # no gold choice to rank (see _tools/template_validation.tsv)
    gold = stripped.index(target.strip())
    for c, choice in enumerate(choices):
      yield dict(base, targets=choice, choice_idx=c, is_correct=c == gold)


_SIGNATURE = {"inputs": tf.TensorSpec((), tf.string), "targets": tf.TensorSpec((), tf.string),
              "idx": tf.TensorSpec((), tf.int32), "task_id": tf.TensorSpec((), tf.int32),
              "domain_id": tf.TensorSpec((), tf.int32)}
_SCORE_SIGNATURE = dict(_SIGNATURE, choice_idx=tf.TensorSpec((), tf.int32),
                        is_correct=tf.TensorSpec((), tf.bool))


def _dataset_fn(spec, template_name, score_eval, split, shuffle_files=False, seed=None):
  if split not in dict(spec.splits):
    raise ValueError(f"{spec.key} ({template_name}) has no split {split!r}; "
                     f"splits: {[s for s, _ in spec.splits]}")
  shuffle_seed = None
  if shuffle_files:  # a per-task seed, so tasks of one dataset differ in order
    shuffle_seed = (0 if seed is None else int(seed)) * 1_000_003 + zlib.crc32(template_name.encode())
  gen = functools.partial(_examples, spec, template_name, score_eval, split, shuffle_seed)
  return tf.data.Dataset.from_generator(gen, output_signature=_SCORE_SIGNATURE if score_eval else _SIGNATURE)


SUBSAMPLE_SEED = 0
_SCORE_TASKS: dict[str, tuple[DatasetSpec, str]] = {}  # score-eval task name -> (spec, template)


def is_score_task(name: str) -> bool:
  return name in _SCORE_TASKS


def sample_score_rows(name: str, split: str, num_examples: int, seed: int = SUBSAMPLE_SEED) -> list[dict]:
  """Tokenised rank-classification rows of `num_examples` examples drawn at random
  (fixed seed) from the whole split, in row order. Rows are visited in a seeded
  permutation and only those needed are rendered, so a small, unbiased subsample
  of a large split is cheap (taking the first rows is biased: ANLI R3's dev
  split starts with 16 'entailment' rows). The same rows for every template of
  a dataset, except where a guarded template skips a row."""
  spec, template = _SCORE_TASKS[name]
  if split not in dict(spec.splits):
    raise ValueError(f"{name} has no split {split!r}; splits: {[s for s, _ in spec.splits]}")
  v = vocab.t5_vocabulary()
  chosen: dict[int, list[dict]] = {}
  for ex in _examples(spec, template, True, split, shuffle_seed=seed):
    if ex["idx"] not in chosen:
      if len(chosen) == num_examples:
        break
      chosen[ex["idx"]] = []
    chosen[ex["idx"]].append(ex)
  out = []
  for idx in sorted(chosen):
    for ex in chosen[idx]:  # as seqio's tokenize + append_eos would produce them
      out.append(dict(ex, inputs=np.asarray(v.encode(ex["inputs"]) + [1], np.int32),
                      targets=np.asarray(v.encode(ex["targets"]) + [1], np.int32)))
  return out


@dataclasses.dataclass(frozen=True)
class RegisteredTask:
  name: str
  spec: DatasetSpec
  template: str
  score_eval: Optional[str]  # name of the rank-classification task, if any


def register(spec: DatasetSpec, *, original_task_only: bool = False) -> list[RegisteredTask]:
  """Registers the Tasks of every (or every original-task) template of `spec`."""
  out = []
  tpl = templates.dataset_templates(spec.dataset, spec.subset)
  ids.task_id(spec.key)
  ids.domain_id(spec.category)
  features = vocab.output_features(_LazyVocab())
  preprocessors = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]
  for template_name in templates.template_names(spec.dataset, spec.subset, original_task_only):
    name = templates.task_name(spec.dataset, spec.subset, template_name, spec.suffix)
    splits = [s for s, _ in spec.splits]
    _add(name, seqio.FunctionDataSource(
        functools.partial(_dataset_fn, spec, template_name, False), splits=splits), preprocessors, features)
    score_name = None
    if tpl[template_name].answer_choices:
      score_name = f"{name}_score_eval"
      _SCORE_TASKS[score_name] = (spec, template_name)
      _add(score_name, seqio.FunctionDataSource(
          functools.partial(_dataset_fn, spec, template_name, True), splits=splits), preprocessors, features)
    out.append(RegisteredTask(name, spec, template_name, score_name))
  return out


def _add(name, source, preprocessors, features):
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  # Rows arrive already shuffled (see _ordered_rows); a small buffer suffices
  # and keeps a 100-task mixture from rendering 1000 examples per task first.
  seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors, output_features=features,
                         shuffle_buffer_size=SHUFFLE_BUFFER)


class _LazyVocab(seqio.Vocabulary):
  """The T5 vocabulary, loaded on first use so registering needs no data dir."""

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  def _v(self):
    return vocab.t5_vocabulary()

  @property
  def eos_id(self):
    return 1

  @property
  def unk_id(self):
    return 2

  @property
  def _base_vocab_size(self):
    return self._v.vocab_size

  def _encode(self, s):
    return self._v.encode(s)

  def _decode(self, ids_):
    return self._v.decode(ids_)

  def _encode_tf(self, s):
    return self._v.encode_tf(s)

  def _decode_tf(self, ids_):
    return self._v.decode_tf(ids_)

  def __eq__(self, other):
    return isinstance(other, (_LazyVocab, seqio.SentencePieceVocabulary))

  def __hash__(self):
    return hash("t5_vocab")
