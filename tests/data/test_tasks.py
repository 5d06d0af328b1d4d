"""Task registration on the real data: names, counts, score-eval rows, mixtures."""
import collections
import json
import os

import numpy as np
import pytest
import seqio

import tasks
from moe_jax import paths
from moe_jax.data import ids, jsonl, registry, templates
from tasks import suites


def _rows(task_name, split, n):
  ds = seqio.get_mixture_or_task(task_name).get_dataset(sequence_length=None, split=split, shuffle=False)
  return list(ds.take(n).as_numpy_iterator())


def test_one_task_per_template_with_p3_names():
  cb = tasks.REGISTERED["super_glue_cb"]
  assert len(cb) == len(templates.dataset_templates("super_glue", "cb").all_template_names) == 15
  names = {t.name for t in cb}
  assert "super_glue_cb_GPT_3_style" in names and "super_glue_cb_always_sometimes_never" in names
  rt = [t for t in tasks.REGISTERED["rotten_tomatoes"]]
  assert len(rt) == len(templates.dataset_templates("rotten_tomatoes", None).all_template_names)
  anli = {t.name for t in tasks.REGISTERED["anli_r2"]}
  assert "anli_GPT_3_style_r2" in anli
  # the held-out suite keeps only original-task templates
  hs = tasks.REGISTERED["hellaswag"]
  assert len(hs) == len(templates.template_names("hellaswag", None, original_task_only=True)) == 4


def test_score_eval_rows_have_one_correct_choice_per_example():
  for task, n_choices in (("super_glue_cb_GPT_3_style_score_eval", 3),
                          ("super_glue_copa_best_option_score_eval", 2),
                          ("hellaswag_complete_first_then_score_eval", 4)):
    rows = _rows(task, "validation", 40)
    by_idx = collections.defaultdict(list)
    for r in rows:
      by_idx[int(r["idx"])].append(r)
    full = [v for v in by_idx.values() if len(v) == n_choices]
    assert len(full) >= 5
    for choices in full:
      assert sorted(int(c["choice_idx"]) for c in choices) == list(range(n_choices))
      assert sum(bool(c["is_correct"]) for c in choices) == 1
  # The gold choice is the dataset's label: CB's first validation row.
  first = json.loads(open(jsonl.split_path("super_glue", "cb", "validation")).readline())
  rows = [r for r in _rows("super_glue_cb_GPT_3_style_score_eval", "validation", 3)]
  assert [bool(r["is_correct"]) for r in rows].index(True) == first["label"]


def test_guarded_templates_skip_examples():
  # COPA's "...which may be caused by" renders only for 'cause' questions.
  rows = _rows("super_glue_copa__which_may_be_caused_by", "validation", 100)
  data = [json.loads(l) for l in open(jsonl.split_path("super_glue", "copa", "validation"))]
  assert rows and all(data[int(r["idx"])]["question"] == "cause" for r in rows)
  assert len(rows) == sum(d["question"] == "cause" for d in data)


def test_mixtures_hold_whole_suites_and_absent_datasets_are_known():
  # Rates are checked against the size table in test_sources.py; here: what the mixtures hold.
  mixture = seqio.get_mixture_or_task("t0_train")
  assert {t.name for s in suites.T0_TRAIN for t in tasks.REGISTERED[s.key]} == {t.name for t in mixture.tasks}
  eval_mix = seqio.get_mixture_or_task("t0_eval_score_eval")
  assert all(t.name.endswith("_score_eval") for t in eval_mix.tasks)
  assert any("story_cloze" in t.name for t in eval_mix.tasks)  # the whole held-out suite
  present = {d.key: d.present for d in tasks.eval_suite("t0_eval")}
  assert present["story_cloze_2016"] is False and present["super_glue_cb"] is True  # the kit lacks story_cloze


def test_task_and_domain_ids_are_in_examples_and_saved(tmp_path):
  row = _rows("super_glue_rte_GPT_3_style", "validation", 1)[0]
  assert row["task_id"] == ids.current()["task_ids"]["super_glue_rte"]
  assert row["domain_id"] == ids.current()["domain_ids"]["NLI"]
  path = str(tmp_path / "ids.json")
  ids.save(path)
  assert json.load(open(path)) == ids.current()


def test_unknown_names_list_close_matches():
  with pytest.raises(KeyError, match="super_glue_cb_GPT_3_style"):
    registry.get_task_or_mixture("super_glue_cb_GPT3_style")
  with pytest.raises(KeyError, match="t0_train"):
    registry.get_task_or_mixture("t0_trian")


def test_bad_jsonl_names_file_line_and_field(tmp_path, monkeypatch):
  d = tmp_path / "super_glue" / "cb"
  d.mkdir(parents=True)
  good = open(jsonl.split_path("super_glue", "cb", "validation")).readline()
  (d / "validation.jsonl").write_text(good + "{not json\n")
  (tmp_path / "t5_vocab").symlink_to(os.path.join(paths.data_dir(), "t5_vocab"))
  monkeypatch.setenv("MOE_JAX_DATA_DIR", str(tmp_path))
  # tf.data re-raises generator errors as its own type; the message is ours.
  with pytest.raises(Exception, match=r"cb/validation.jsonl:2: invalid JSON"):
    _rows("super_glue_cb_GPT_3_style", "validation", 5)
  row = json.loads(good)
  del row["hypothesis"]
  (d / "validation.jsonl").write_text(good + json.dumps(row) + "\n")
  with pytest.raises(Exception, match=r"cb/validation.jsonl:2: missing field 'hypothesis'"):
    _rows("super_glue_cb_GPT_3_style", "validation", 5)


def test_an_empty_rendering_tokenises_to_eos_alone(monkeypatch):
  """A template may render an empty target (or input) for some row: it becomes
  [EOS], as seqio's tokenize + append_eos makes it, in a stream that goes on
  (zero-length token rows once crashed tf.data's unbatch)."""
  real = templates.render

  def render(template, row):
    inputs, target, choices = real(template, row)
    return (inputs, "", choices) if row["label"] == 1 else ("", target, choices)
  monkeypatch.setattr(templates, "render", render)
  task = seqio.get_mixture_or_task("rotten_tomatoes_Movie_Expressed_Sentiment")
  rows = list(task.get_dataset(sequence_length=None, split="train", shuffle=True, seed=0).take(12)
              .as_numpy_iterator())  # shuffled: the file starts with its positive rows
  data = [json.loads(l) for l in open(jsonl.split_path("rotten_tomatoes", None, "train"))]
  assert {data[int(r["idx"])]["label"] for r in rows} == {0, 1}
  for r in rows:
    empty = "targets" if data[int(r["idx"])]["label"] == 1 else "inputs"
    assert r[empty].tolist() == [1] and len(r["inputs" if empty == "targets" else "targets"]) > 1
