"""Rank-classification evaluation: oracle, anti-oracle, arithmetic, missing data."""
import os

import numpy as np
import pytest
import seqio

import tasks
from moe_jax import paths
from moe_jax.data import rank_eval

LENGTHS = {"inputs": 256, "targets": 32}


def _gold_table(task_name, n=6):
  """(input tokens, target tokens) -> is_correct, read from the task itself."""
  ds = seqio.get_mixture_or_task(task_name).get_dataset(sequence_length=None, split="validation",
                                                        shuffle=False)
  table = {}
  for row in ds.as_numpy_iterator():
    table[(tuple(row["inputs"]), tuple(row["targets"]))] = bool(row["is_correct"])
  return table


def _scorer(table, sign):
  def score(batch):
    out = []
    for enc, tgt in zip(batch["encoder_input_tokens"], batch["decoder_target_tokens"]):
      key = (tuple(enc[enc > 0]), tuple(tgt[tgt > 0]))
      out.append(sign if table.get(key, False) else -sign)
    return np.array(out, np.float32)
  return score


@pytest.mark.parametrize("task", ["super_glue_cb_GPT_3_style_score_eval", "super_glue_copa_best_option_score_eval"])
def test_oracle_gets_everything_and_anti_oracle_nothing(task):
  table = _gold_table(task)
  good = rank_eval.evaluate_task(_scorer(table, 1.0), task, LENGTHS, split="validation", batch_size=8,
                                 max_examples=10)
  bad = rank_eval.evaluate_task(_scorer(table, -1.0), task, LENGTHS, split="validation", batch_size=8,
                                max_examples=10)
  assert good["examples"] == bad["examples"] == 10
  assert good["accuracy"] == 1.0 and bad["accuracy"] == 0.0


def test_median_and_average_arithmetic():
  t = lambda *accs: [{"accuracy": a, "examples": 10, "truncated": 1} for a in accs]
  report = rank_eval.summarize([
      {"dataset": "a", "status": "ok", "templates": t(0.2, 0.9, 0.5)},
      {"dataset": "b", "status": "ok", "templates": t(0.2, 0.4)},
      {"dataset": "c", "status": "missing", "templates": []},
  ])
  assert report["datasets"][0]["median_accuracy"] == 0.5
  assert report["datasets"][1]["median_accuracy"] == pytest.approx(0.3)
  assert report["average"] == pytest.approx(0.4)
  assert report["missing"] == ["c"] and report["datasets"][0]["truncated"] == 3


def test_truncation_is_counted():
  task = "super_glue_cb_GPT_3_style_score_eval"
  res = rank_eval.evaluate_task(_scorer({}, 1.0), task, {"inputs": 16, "targets": 32}, split="validation",
                                batch_size=8, max_examples=5)
  assert res["truncated"] == 5  # every CB premise is longer than 16 tokens


def test_removed_dataset_is_reported_missing(tmp_path, monkeypatch):
  # A data dir with only CB (and the vocabulary): every other dataset is missing.
  (tmp_path / "super_glue").mkdir()
  (tmp_path / "super_glue" / "cb").symlink_to(os.path.join(paths.data_dir(), "super_glue", "cb"))
  (tmp_path / "t5_vocab").symlink_to(os.path.join(paths.data_dir(), "t5_vocab"))
  monkeypatch.setenv("MOE_JAX_DATA_DIR", str(tmp_path))
  suite = tasks.eval_suite("t0_eval")
  assert [d.key for d in suite if d.present] == ["super_glue_cb"]
  report = rank_eval.evaluate(lambda b: -np.arange(len(b["encoder_input_tokens"]), dtype=np.float32), suite,
                              LENGTHS, batch_size=16, max_examples_per_template=2)
  assert set(report["missing"]) == {d.key for d in suite} - {"super_glue_cb"}
  cb = next(d for d in report["datasets"] if d["dataset"] == "super_glue_cb")
  assert cb["status"] == "ok" and len(cb["templates"]) == 15 and cb["examples_per_template"] == 2
  json_path, md_path = rank_eval.write_report(report, str(tmp_path / "out"))
  md = open(md_path).read()
  assert "| anli_r1 | - | - | missing | - |" in md and "2 examples per template, drawn at random" in md


def test_subsample_spans_the_split_and_matches_the_seqio_pipeline():
  from moe_jax.data import p3
  task = "anli_GPT_3_style_r3_score_eval"
  rows = p3.sample_score_rows(task, "validation", 24)
  idx = sorted({int(r["idx"]) for r in rows})
  assert len(idx) == 24 and len(rows) == 3 * 24  # three choices per ANLI example
  assert idx == sorted(p3.sample_score_rows(task, "validation", 24, seed=p3.SUBSAMPLE_SEED)[i]["idx"]
                       for i in range(0, 72, 3))  # fixed: the same draw every time
  assert idx[-1] > 500  # drawn from the whole split (1200 rows), not its head
  gold = {int(r["idx"]): int(r["choice_idx"]) for r in rows if r["is_correct"]}
  assert len(set(gold.values())) == 3  # the first 16 rows are all label 0; a random draw is not
  # Token for token what seqio's tokenize + append_eos produce for those rows.
  ds = seqio.get_mixture_or_task(task).get_dataset(sequence_length=None, split="validation", shuffle=False)
  reference = {(int(r["idx"]), int(r["choice_idx"])): r for r in ds.take(3 * 1200).as_numpy_iterator()
               if int(r["idx"]) in set(idx[:3])}
  for r in rows:
    if (int(r["idx"]), int(r["choice_idx"])) in reference:
      ref = reference[(int(r["idx"]), int(r["choice_idx"]))]
      np.testing.assert_array_equal(r["inputs"], ref["inputs"])
      np.testing.assert_array_equal(r["targets"], ref["targets"])
      assert bool(r["is_correct"]) == bool(ref["is_correct"])
  assert len(reference) == 9
