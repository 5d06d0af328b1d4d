"""Zero-shot rank classification, as T0 and the MoV paper evaluate.

For every answer-choice template of a held-out dataset, each example's choices
are scored by the summed log-likelihood of the choice (any function with
`score_batch` semantics); the prediction is the argmax, accuracy is per
template, a dataset's score is the median over its templates, and the suite's
score the average over datasets. A dataset whose files are absent is reported
as `missing`, never dropped. Examples longer than the feature lengths are cut
(keeping EOS) and counted per template.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import seqio

from moe_jax.data import converters, p3
from moe_jax.utils import fs


ScoreFn = Callable[[dict], np.ndarray]  # batch -> [B] summed target log-likelihood


@dataclasses.dataclass
class EvalDataset:
  key: str  # e.g. "anli_r1"
  score_tasks: Sequence[str]  # its `<task>_score_eval` names
  present: bool
  split: str = "validation"


def _example_rows(task: seqio.Task, split: str, max_examples: Optional[int]):
  """Tokenised score-eval rows (untrimmed): all, or `max_examples` examples, a
  fixed random subsample for P3 tasks (see p3.sample_score_rows), else the first."""
  if max_examples is not None and p3.is_score_task(task.name):
    yield from p3.sample_score_rows(task.name, split, max_examples)
    return
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False)
  seen = []
  for row in ds.as_numpy_iterator():
    if not seen or row["idx"] != seen[-1]:
      if max_examples is not None and len(seen) == max_examples:
        break
      seen.append(row["idx"])
    yield row


def evaluate_task(score_fn: ScoreFn, task_name: str, lengths: dict, *, split: str, batch_size: int,
                  max_examples: Optional[int] = None, decoder_only: bool = False) -> dict:
  task = seqio.get_mixture_or_task(task_name)
  rows = list(_example_rows(task, split, max_examples))
  truncated = set()
  for r in rows:
    if len(r["inputs"]) > lengths["inputs"] or len(r["targets"]) > lengths["targets"]:
      truncated.add(int(r["idx"]))
  import tensorflow as tf  # only here: keeps the report code importable without TF
  keys = ["inputs", "targets", "idx", "choice_idx", "is_correct", "task_id", "domain_id", "template_id"]
  ds = tf.data.Dataset.from_generator(
      lambda: ({k: r[k] for k in keys} for r in rows),
      output_signature={k: tf.TensorSpec((None,) if k in ("inputs", "targets") else (),
                                         tf.bool if k == "is_correct" else tf.int32) for k in keys})
  passthrough = converters.CONTEXT_FEATURES + converters.RANK_FEATURES
  if decoder_only:
    ds = converters.prefix_lm(ds, lengths["inputs"] + lengths["targets"], passthrough=passthrough)
  else:
    ds = converters.encdec(ds, lengths, passthrough=passthrough)
  best: dict[int, tuple[float, bool]] = {}
  for batch in converters.batches(ds, batch_size):
    n_real = len(batch["idx"])
    model_batch = {k: _pad_rows(v, batch_size) for k, v in batch.items() if k not in converters.RANK_FEATURES}
    scores = np.asarray(score_fn(model_batch))[:n_real]  # fixed batch shape: one compilation
    for idx, score, correct in zip(batch["idx"], scores, batch["is_correct"]):
      idx = int(idx)
      if idx not in best or score > best[idx][0]:  # ties: the first choice wins
        best[idx] = (float(score), bool(correct))
  n = len(best)
  accuracy = sum(c for _, c in best.values()) / n if n else float("nan")
  return {"task": task_name, "examples": n, "accuracy": accuracy, "truncated": len(truncated)}


def _pad_rows(x, n):
  return np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)]) if len(x) < n else x


def evaluate(score_fn: ScoreFn, suite: Iterable[EvalDataset], lengths: dict, *, batch_size: int = 32,
             max_examples_per_template: Optional[int] = None, decoder_only: bool = False,
             progress: Callable[[str], None] = lambda _: None) -> dict:
  datasets = []
  for d in suite:
    if not d.present:
      datasets.append({"dataset": d.key, "status": "missing", "templates": []})
      continue
    results = []
    for name in d.score_tasks:
      progress(name)
      results.append(evaluate_task(score_fn, name, lengths, split=d.split, batch_size=batch_size,
                                   max_examples=max_examples_per_template, decoder_only=decoder_only))
    datasets.append({"dataset": d.key, "status": "ok", "templates": results})
  report = summarize(datasets)
  report.update(max_examples_per_template=max_examples_per_template, feature_lengths=dict(lengths))
  return report


def summarize(datasets: list[dict]) -> dict:
  """Per dataset the median over templates; overall the mean over present datasets."""
  for d in datasets:
    if d["status"] != "ok":
      continue
    accs = [r["accuracy"] for r in d["templates"]]
    d["median_accuracy"] = statistics.median(accs) if accs else float("nan")
    d["examples_per_template"] = max((r["examples"] for r in d["templates"]), default=0)
    d["truncated"] = sum(r["truncated"] for r in d["templates"])
  done = [d["median_accuracy"] for d in datasets if d["status"] == "ok"]
  return {"datasets": datasets, "average": float(np.mean(done)) if done else float("nan"),
          "missing": [d["dataset"] for d in datasets if d["status"] == "missing"]}


def markdown(report: dict) -> str:
  cap = report.get("max_examples_per_template")
  lines = ["| dataset | templates | examples/template | median accuracy | truncated |",
           "|---|---:|---:|---:|---:|"]
  for d in report["datasets"]:
    if d["status"] == "missing":
      lines.append(f"| {d['dataset']} | - | - | missing | - |")
      continue
    lines.append(f"| {d['dataset']} | {len(d['templates'])} | {d['examples_per_template']} | "
                 f"{100 * d['median_accuracy']:.1f} | {d['truncated']} |")
  lines.append(f"| **average** | | | **{100 * report['average']:.1f}** | |")
  note = (f"\nFixed subsample: {cap} examples per template, drawn at random (seed {p3.SUBSAMPLE_SEED}) "
          "from the whole split (the same rows for every template of a dataset)."
          if cap else "\nAll examples of each split.")
  return "\n".join(lines) + note + "\n"


def write_report(report: dict, directory: str, stem: str = "zero_shot") -> tuple[str, str]:
  """Writes <stem>.json and <stem>.md atomically; returns their paths."""
  fs.makedirs(directory)
  out = []
  for ext, text in (("json", json.dumps(report, indent=1)), ("md", markdown(report))):
    path = fs.join(directory, f"{stem}.{ext}")
    fs.write_text(path, text)
    out.append(path)
  return tuple(out)
