"""seqio Tasks from P3 templates over the configured data source.

One Task per (dataset, template), named as P3 names them, whose examples are
the template rendered on each row (`inputs`, `targets` text, then tokenised).
For templates with answer choices, also `<task>_score_eval`: one row per
(example, answer choice) with the example's `idx`, the `choice_idx` and
`is_correct`, for rank classification. Rows a guarded template renders
nothing for are skipped, as in T0. Every example carries `task_id` (per
dataset) and `domain_id` (per dataset category) for MOELoRA and MoA.
Rows come from the source `sources.current()` names when the task is read
(JSONL kit, HF `datasets`, parquet export); the `p3` source reads the P3
release's pre-rendered, pre-tokenised examples of the same task instead.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import zlib
from typing import Optional

import numpy as np
import seqio
import tensorflow as tf

from moe_jax.data import ids, jsonl, p3_release, sources, templates, vocab

SHUFFLE_BUFFER = 16
EOS = 1


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A dataset as the suites see it: which dataset split backs each seqio split."""
  dataset: str
  subset: Optional[str]
  splits: tuple[tuple[str, str], ...]  # (seqio split, HF split), e.g. (("validation", "dev_r1"),)
  key: str  # e.g. "anli_r1": the unit of task ids, eval rows and mixtures
  category: str  # domain (T0's task_by_convention)
  suffix: str = ""  # P3 name suffix, e.g. "_r1"
  kit: tuple[tuple[str, str], ...] = ()  # the JSONL kit's stand-in splits, where it lacks the real one
  # A user's task (custom_tasks.py): its own source and files, templates and name.
  source: Optional[str] = None  # e.g. "jsonl", "hf", "parquet:<dir>"; None: the configured DATA_SOURCE
  files: tuple[tuple[str, str], ...] = ()  # (seqio split, JSONL file), for source "jsonl"
  template_key: Optional[tuple[str, Optional[str]]] = None  # whose templates; None: (dataset, subset)
  task_name: Optional[str] = None  # one template registered under this name (None: P3 names)
  origin: Optional[str] = None  # where it was defined (a gin file), for messages

  @property
  def templates_key(self) -> tuple[str, Optional[str]]:
    return self.template_key or (self.dataset, self.subset)

  @property
  def data_source(self) -> "sources.Source":
    return sources.parse(self.source) if self.source else sources.current()

  @property
  def kit_splits(self) -> tuple[tuple[str, str], ...]:
    return tuple((s, dict(self.kit).get(s, f)) for s, f in self.splits)

  @property
  def hf_name(self) -> str:
    return self.dataset if self.subset is None else f"{self.dataset}/{self.subset}"

  def file(self, seqio_split: str) -> str:
    """The JSONL kit's file behind a seqio split (or the task's own file)."""
    if self.files:
      return dict(self.files)[seqio_split]
    return jsonl.split_path(self.dataset, self.subset, dict(self.kit_splits)[seqio_split])

  def missing(self, seqio_split: Optional[str] = None, task_names=()) -> Optional[str]:
    """Why the current source cannot provide this dataset (None if it can)."""
    for split in [seqio_split] if seqio_split else [s for s, _ in self.splits]:
      why = self.data_source.missing(self, split, task_names)
      if why:
        return why
    return None

  def present(self) -> bool:
    return self.missing() is None


def sample_order(indices, seed: int) -> list:
  """`indices` in a fixed pseudo-random order that depends on each index and
  the seed only, not on how many rows there are: the P3 release keeps only the
  rows a template rendered, and must draw the same examples as the raw rows."""
  return sorted(indices, key=lambda i: (zlib.crc32(f"{seed}:{int(i)}".encode()), int(i)))


def row_order(n: int, shuffle_seed: Optional[int] = None, sample_seed: Optional[int] = None):
  """Which row comes at each position: file order, a seeded permutation when
  training (rows are cheap to index, templates are not, so the order is
  shuffled before rendering instead of through a large tf.data buffer), or
  `sample_order` when subsampling."""
  if sample_seed is not None:
    return sample_order(range(n), sample_seed)
  if shuffle_seed is None:
    return range(n)
  return np.random.RandomState(shuffle_seed % (2 ** 32)).permutation(n)


class _Renderer:
  """Row index -> the template's examples of that row (none when a guarded
  template renders nothing, one per answer choice for score-eval tasks).
  A pure function of the index, which is what lets tf.data checkpoint the
  pipeline's position (an index) instead of Python state."""

  def __init__(self, spec, template_name, score_eval, split):
    self.spec, self.template_name, self.score_eval, self.split = spec, template_name, score_eval, split
    self.template = templates.dataset_templates(*spec.templates_key)[template_name]
    self.ids = {"task_id": ids.task_id(spec.key), "domain_id": ids.domain_id(spec.category),
                "template_id": ids.template_id(_p3_name(spec, template_name, False))}
    self._table = self.needed = self.where = None

  @property
  def table(self):
    if self._table is None:  # on first use, so registering and building read no data
      source = self.spec.data_source
      table = source.table(self.spec, self.split)
      first = table[0] if len(table) else {}
      self.where = source.where(self.spec, self.split)
      referenced = templates.referenced_fields(self.template)
      # The fields this template reads, as the first row spells the schema.
      self.needed = referenced & set(first)
      undefined = sorted(referenced - set(first) - templates.PROVIDED)
      if self.spec.origin and undefined:  # a user's template: a field no row has is a typo
        raise jsonl.DataError(f"{self.spec.origin}: template {self.template_name!r} of task {self.spec.task_name!r} "
                              f"uses field {undefined[0]!r}, which {self.where} lacks (fields: {sorted(first)})")
      self._table = table
    return self._table

  def __call__(self, idx: int) -> list[dict]:
    row = self.table[idx]
    missing = self.needed - set(row)
    if missing:  # Jinja would silently render a missing field as ''
      raise jsonl.DataError(f"{self.where}:{idx + 1}: missing field {sorted(missing)[0]!r} "
                            f"needed by template {self.template_name!r}")
    try:
      rendered = templates.render(self.template, row)
    except Exception as e:  # a template error names the row it failed on
      raise jsonl.DataError(f"{self.where}:{idx + 1}: template {self.template_name!r} failed: {e!r}") from e
    if rendered is None:
      if self.spec.origin:  # a user's template renders every row (P3's guarded ones may skip)
        raise jsonl.DataError(f"{self.where}:{idx + 1}: template {self.template_name!r} of task "
                              f"{self.spec.task_name!r} ({self.spec.origin}) rendered empty inputs or targets")
      return []
    inputs, target, choices = rendered
    base = {"inputs": inputs, "idx": idx, **self.ids}
    if not self.score_eval:
      return [dict(base, targets=target)]
    stripped = [c.strip() for c in choices]
    if target.strip() not in stripped:
      return []  # no gold choice to rank (see _tools/template_validation.tsv)
    gold = stripped.index(target.strip())
    return [dict(base, targets=choice, choice_idx=c, is_correct=c == gold) for c, choice in enumerate(choices)]


def _examples(spec, template_name, score_eval, split, shuffle_seed=None, sample_seed=None):
  render = _Renderer(spec, template_name, score_eval, split)
  for idx in row_order(len(render.table), shuffle_seed, sample_seed):
    yield from render(int(idx))


_SIGNATURE = {"inputs": tf.TensorSpec((), tf.string), "targets": tf.TensorSpec((), tf.string),
              "idx": tf.TensorSpec((), tf.int32), "task_id": tf.TensorSpec((), tf.int32),
              "domain_id": tf.TensorSpec((), tf.int32), "template_id": tf.TensorSpec((), tf.int32)}
_SCORE_SIGNATURE = dict(_SIGNATURE, choice_idx=tf.TensorSpec((), tf.int32),
                        is_correct=tf.TensorSpec((), tf.bool))


def _rendered_dataset(spec, template_name, score_eval, split, shuffle_seed) -> tf.data.Dataset:
  """Positions 0..n-1 -> row indices (row_order) -> rendered, tokenised
  examples. Only indices flow through tf.data, so its iterator state
  (positions, shuffle buffers) is the pipeline's whole position: a resume
  restores it instead of rendering every earlier row again (see
  training_input.py). Tokenising here, with the process's one SentencePiece
  model, spares each of a mixture's ~100 tasks loading its own TF tokenizer
  kernel when first sampled (the pipeline's slow start)."""
  render = _Renderer(spec, template_name, score_eval, split)
  signature = _SCORE_SIGNATURE if score_eval else _SIGNATURE
  scalars = [k for k in signature if k not in ("inputs", "targets")]
  order = []  # computed on first use, in whichever process that is

  def row_at(position: int) -> int:
    if not order:
      order.append(row_order(len(render.table), shuffle_seed))
    return int(order[0][position])

  def count(_):
    return np.int64(len(render.table))

  def examples(position):
    # A function of `position` alone: a restored iterator calls it at
    # positions it never visited in this process.
    exs = render(row_at(int(position)))
    v = vocab.t5_vocabulary()
    out = []
    for k in ("inputs", "targets"):
      ids_ = [v.encode(ex[k]) for ex in exs]
      # At least one column: tf.data's unbatch crashes (SIGSEGV) on zero-size
      # slices, as a template rendering an empty target would give.
      padded = np.zeros((len(exs), max([1, *map(len, ids_)])), np.int32)
      for i, t in enumerate(ids_):
        padded[i, :len(t)] = t
      out += [padded, np.asarray([len(t) for t in ids_], np.int32), np.asarray([ex[k] for ex in exs], object)]
    return out + [np.asarray([ex[k] for ex in exs], signature[k].dtype.as_numpy_dtype) for k in scalars]

  def to_features(position):
    types = [tf.int32, tf.int32, tf.string] * 2 + [signature[k].dtype for k in scalars]
    out = tf.numpy_function(examples, [position], types, stateful=False)
    features = {}
    for i, k in enumerate(("inputs", "targets")):
      features.update({k: tf.ensure_shape(out[3 * i], [None, None]), f"{k}_length": tf.ensure_shape(out[3 * i + 1], [None]),
                       f"{k}_pretokenized": tf.ensure_shape(out[3 * i + 2], [None])})
    features.update({k: tf.ensure_shape(t, [None]) for k, t in zip(scalars, out[6:])})
    return features

  def unpad(ex):
    out = {k: v for k, v in ex.items() if not k.endswith("_length")}
    out.update({k: ex[k][:ex[f"{k}_length"]] for k in ("inputs", "targets")})
    return out

  # The row count is read lazily (on the first element), as the rows are.
  n = tf.data.Dataset.from_tensors(np.int64(0)).map(
      lambda x: tf.ensure_shape(tf.numpy_function(count, [x], tf.int64, stateful=False), []))
  positions = n.flat_map(tf.data.Dataset.range)
  return positions.map(to_features).unbatch().map(unpad)


def _dataset_fn(spec, template_name, score_eval, split, shuffle_files=False, seed=None):
  if split not in dict(spec.splits):
    raise ValueError(f"{spec.key} ({template_name}) has no split {split!r}; "
                     f"splits: {[s for s, _ in spec.splits]}")
  shuffle_seed = None
  if shuffle_files:  # a per-task seed, so tasks of one dataset differ in order
    shuffle_seed = (0 if seed is None else int(seed)) * 1_000_003 + zlib.crc32(template_name.encode())
  source = spec.data_source
  if not source.renders:
    return _released_examples(source.root, spec, template_name, score_eval, split, shuffle_seed)
  return _rendered_dataset(spec, template_name, score_eval, split, shuffle_seed)


def _p3_name(spec, template_name, score_eval):
  name = spec.task_name or templates.task_name(spec.dataset, spec.subset, template_name, spec.suffix)
  return f"{name}_score_eval" if score_eval else name


def _released_examples(root, spec, template_name, score_eval, split, shuffle_seed=None) -> tf.data.Dataset:
  """The P3 release's examples of this task, as our features: `idx` (and
  `choice_idx`) from P3's [example, choice] pair (training rows: the record's
  position), the text kept as *_pretokenized, task/domain ids added."""
  ds = p3_release.read(root, _p3_name(spec, template_name, score_eval), split, shuffle_seed=shuffle_seed)
  task_id, domain_id = ids.task_id(spec.key), ids.domain_id(spec.category)
  template_id = ids.template_id(_p3_name(spec, template_name, False))

  def convert(position, ex):
    out = {"inputs": ex["inputs"], "targets": ex["targets"], "task_id": tf.constant(task_id, tf.int32),
           "domain_id": tf.constant(domain_id, tf.int32), "template_id": tf.constant(template_id, tf.int32)}
    for k in ("inputs_pretokenized", "targets_pretokenized"):
      if k in ex:
        out[k] = ex[k]
    if score_eval:
      out.update(idx=ex["idx"][0], choice_idx=ex["idx"][1], is_correct=ex["is_correct"])
    else:
      out["idx"] = tf.cast(position, tf.int32)
    return out
  return ds.enumerate().map(convert)


def _ensure_eos(tokens):
  """P3 appends EOS to targets but not to inputs; our features end both with it."""
  has = tf.reduce_any(tf.equal(tokens[-1:], EOS))  # empty tokens (an empty target) have none
  return tf.cond(has, lambda: tokens, lambda: tf.concat([tokens, tf.constant([EOS], tokens.dtype)], 0))


def tokenize_and_append_eos(dataset: tf.data.Dataset, output_features) -> tf.data.Dataset:
  """Text rows -> seqio's tokenize + append_eos; pre-tokenised rows (the P3
  release) -> EOS ensured. The dtype decides, so one Task serves every source."""
  if dataset.element_spec["inputs"].dtype == tf.string:
    dataset = seqio.preprocessors.tokenize(dataset, output_features)
    return seqio.preprocessors.append_eos(dataset, output_features)
  return dataset.map(lambda ex: dict(ex, inputs=_ensure_eos(ex["inputs"]), targets=_ensure_eos(ex["targets"])))


def preprocessors(spec: DatasetSpec) -> list:
  """The one place a task's preprocessors are assembled (after the source)."""
  del spec  # the same for every dataset today
  return [tokenize_and_append_eos]


SUBSAMPLE_SEED = 0
_SCORE_TASKS: dict[str, tuple[DatasetSpec, str]] = {}  # score-eval task name -> (spec, template)
_TEMPLATES: dict[str, tuple[DatasetSpec, str]] = {}  # template (training task) name -> (spec, template)


def is_moe_jax_task(name: str) -> bool:
  """A task registered here (with the context features it needs)."""
  return name in _TEMPLATES or name in _SCORE_TASKS


def is_score_task(name: str) -> bool:
  return name in _SCORE_TASKS


def sample_score_rows(name: str, split: str, num_examples: int, seed: int = SUBSAMPLE_SEED) -> list[dict]:
  """Tokenised rank-classification rows of `num_examples` examples drawn at random
  (fixed seed) from the whole split, in row order. Rows are visited in
  `sample_order` and only those needed are rendered, so a small, unbiased
  subsample of a large split is cheap (taking the first rows is biased: ANLI
  R3's dev split starts with 16 'entailment' rows). The same rows for every
  template of a dataset, except where a guarded template skips a row, and the
  same examples whichever source the rows come from."""
  spec, template = _SCORE_TASKS[name]
  if split not in dict(spec.splits):
    raise ValueError(f"{name} has no split {split!r}; splits: {[s for s, _ in spec.splits]}")
  source = spec.data_source
  if not source.renders:
    return _sample_released(source.root, spec, template, split, num_examples, seed)
  v = vocab.t5_vocabulary()
  chosen: dict[int, list[dict]] = {}
  for ex in _examples(spec, template, True, split, sample_seed=seed):
    if ex["idx"] not in chosen:
      if len(chosen) == num_examples:
        break
      chosen[ex["idx"]] = []
    chosen[ex["idx"]].append(ex)
  out = []
  for idx in sorted(chosen):
    for ex in chosen[idx]:  # as seqio's tokenize + append_eos would produce them
      out.append(dict(ex, inputs=np.asarray(v.encode(ex["inputs"]) + [EOS], np.int32),
                      targets=np.asarray(v.encode(ex["targets"]) + [EOS], np.int32)))
  return out


def _sample_released(root, spec, template, split, num_examples, seed) -> list[dict]:
  by_idx: dict[int, list[dict]] = {}
  for ex in _released_examples(root, spec, template, True, split).as_numpy_iterator():
    by_idx.setdefault(int(ex["idx"]), []).append(ex)
  out = []
  for idx in sorted(sample_order(by_idx, seed)[:num_examples]):
    for ex in sorted(by_idx[idx], key=lambda e: int(e["choice_idx"])):
      out.append(dict(ex, inputs=_eos_np(ex["inputs"]), targets=_eos_np(ex["targets"])))
  return out


def _eos_np(tokens):
  tokens = np.asarray(tokens, np.int32)
  return tokens if len(tokens) and tokens[-1] == EOS else np.append(tokens, np.int32(EOS))


@dataclasses.dataclass(frozen=True)
class RegisteredTask:
  name: str
  spec: DatasetSpec
  template: str
  score_eval: Optional[str]  # name of the rank-classification task, if any


def register(spec: DatasetSpec, *, original_task_only: bool = False,
             only: Optional[list] = None) -> list[RegisteredTask]:
  """Registers the Tasks of every (or every original-task, or `only` these)
  template of `spec`."""
  out = []
  tpl = templates.dataset_templates(*spec.templates_key)
  ids.task_id(spec.key)
  ids.domain_id(spec.category)
  features = vocab.output_features(_LazyVocab())
  splits = [s for s, _ in spec.splits]
  names = templates.template_names(*spec.templates_key, original_task_only)
  for template_name in (names if only is None else [n for n in names if n in only]):
    name = _p3_name(spec, template_name, False)
    _TEMPLATES[name] = (spec, template_name)
    ids.template_id(name)
    _add(name, seqio.FunctionDataSource(
        functools.partial(_dataset_fn, spec, template_name, False), splits=splits), preprocessors(spec), features)
    score_name = None
    if tpl[template_name].answer_choices:
      score_name = _p3_name(spec, template_name, True)
      _SCORE_TASKS[score_name] = (spec, template_name)
      _add(score_name, seqio.FunctionDataSource(
          functools.partial(_dataset_fn, spec, template_name, True), splits=splits), preprocessors(spec), features)
    out.append(RegisteredTask(name, spec, template_name, score_name))
  return out


def instruction_text(template_task: str) -> str:
  """A template's instruction: its prompt's literal text, with the Jinja
  fields and control blocks (the example's content) left out. A task
  registered outside moe-jax (MIXTURE_OR_TASK_MODULE) has no template here:
  its name stands for its instruction."""
  if template_task not in _TEMPLATES:
    return " ".join(template_task.replace("_", " ").split())
  spec, template_name = _TEMPLATES[template_task]
  source = templates.dataset_templates(*spec.templates_key)[template_name].jinja
  prompt = source.split("|||")[0]
  prompt = re.sub(r"{%.*?%}|{{.*?}}|{#.*?#}", " ", prompt, flags=re.S)
  text = " ".join(prompt.split())
  return text or template_name  # a template made only of fields: its name says what it asks


def _add(name, source, preprocessors_, features):
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  # Rows arrive already shuffled (see row_order); a small buffer suffices
  # and keeps a 100-task mixture from rendering 1000 examples per task first.
  seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors_, output_features=features,
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
