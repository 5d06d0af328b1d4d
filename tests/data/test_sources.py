"""Data sources: parquet export and P3-release layouts read to the same examples
as the JSONL kit; hf offline fails on first read; SKIP_UNAVAILABLE; inspect."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks
from moe_jax import paths
from moe_jax.data import inspect as data_inspect
from moe_jax.data import jsonl, p3, rank_eval, sources, templates, vocab
from tasks import registration, split_sizes, suites

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (dataset, subset, kit split, rows kept): a training set, two held-out sets (COPA has guarded templates)
KIT = [("rotten_tomatoes", None, "train", 24), ("super_glue", "cb", "validation", 20),
       ("super_glue", "copa", "validation", 40)]


def _kit_rows(dataset, subset, split, n):
  return [json.loads(l) for l in open(jsonl.split_path(dataset, subset, split)).readlines()[:n]]


@pytest.fixture()
def small_kit(tmp_path, monkeypatch):
  """A JSONL kit of the first rows of KIT (and the vocabulary), the data dir of the test."""
  kit = tmp_path / "kit"
  for dataset, subset, split, n in KIT:
    d = kit / dataset / (subset or "_")
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _kit_rows(dataset, subset, split, n)))
  (kit / "t5_vocab").symlink_to(os.path.join(paths.data_dir(), "t5_vocab"))
  monkeypatch.setenv("MOE_JAX_DATA_DIR", str(kit))
  monkeypatch.setenv(sources.SOURCE_ENV, "jsonl")
  return kit


def _read(task, split):
  ds = seqio.get_mixture_or_task(task).get_dataset(sequence_length=None, split=split, shuffle=False,
                                                   use_cached=False)
  out = []
  for r in ds.as_numpy_iterator():
    row = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()
           if k in ("inputs", "targets", "task_id", "domain_id", "choice_idx", "is_correct")}
    if "choice_idx" in r:
      row["idx"] = int(r["idx"])
    out.append(row)
  return out


def test_parquet_export_layout_reads_the_same_examples(small_kit, tmp_path, monkeypatch):
  import pyarrow as pa
  import pyarrow.parquet as pq
  root = tmp_path / "parquet"
  for dataset, subset, split, n in KIT:
    rows = _kit_rows(dataset, subset, split, n)
    # the hub names rotten_tomatoes' config "default"; cb/copa are named configs
    d = root / dataset / (subset or "default") / split
    d.mkdir(parents=True)
    half = n // 2  # two files: read in name order, rows in order
    pq.write_table(pa.Table.from_pylist(rows[:half]), d / "0000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[half:]), d / "0001.parquet")
  cases = [("rotten_tomatoes_Movie_Expressed_Sentiment", "train"),
           ("super_glue_cb_GPT_3_style_score_eval", "validation"),
           ("super_glue_copa__which_may_be_caused_by", "validation")]
  expected = {c: _read(*c) for c in cases}
  monkeypatch.setenv(sources.SOURCE_ENV, f"parquet:{root}")
  for c in cases:
    got = _read(*c)
    assert got == expected[c] and len(got) > 5, c
  rt = suites.T0_TRAIN[[s.key for s in suites.T0_TRAIN].index("rotten_tomatoes")]
  assert rt.missing("train") is None
  imdb = suites.T0_TRAIN[[s.key for s in suites.T0_TRAIN].index("imdb")]
  assert "imdb/default/train/*.parquet" in imdb.missing("train")
  with pytest.raises(Exception, match=r"imdb: the parquet source has no .*imdb/default/train/\*\.parquet"):
    _read("imdb_Movie_Expressed_Sentiment", "train")


def _int64(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _bytes(text):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))


def _write_p3_task(root, name, split, examples, score_eval):
  """One P3 task folder as the release lays it out: inputs without EOS, targets with it."""
  d = root / name
  d.mkdir(parents=True, exist_ok=True)
  feats = {"inputs": {"dtype": "int32", "shape": [None]}, "targets": {"dtype": "int32", "shape": [None]},
           "inputs_pretokenized": {"dtype": "string", "shape": []},
           "targets_pretokenized": {"dtype": "string", "shape": []}}
  if score_eval:
    feats.update(idx={"dtype": "int32", "shape": [2]}, is_correct={"dtype": "bool", "shape": []},
                 weight={"dtype": "float32", "shape": []})
  (d / f"info.{split}.json").write_text(json.dumps({"features": feats, "seqio_version": "0.0.6"}))
  v = vocab.t5_vocabulary()
  with tf.io.TFRecordWriter(str(d / f"{split}.tfrecord-00000-of-00001")) as w:
    for ex in examples:
      f = {"inputs": _int64(v.encode(ex["inputs"])), "targets": _int64(v.encode(ex["targets"]) + [1]),
           "inputs_pretokenized": _bytes(ex["inputs"]), "targets_pretokenized": _bytes(ex["targets"])}
      if score_eval:
        f.update(idx=_int64(ex["idx"]), is_correct=_int64([ex["is_correct"]]),
                 weight=tf.train.Feature(float_list=tf.train.FloatList(value=[1.0])))
      w.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())


def _render_p3(root, dataset, subset, split, n, score_eval, seqio_split):
  """Renders every template of the kit rows with promptsource and writes P3 task folders."""
  rows = _kit_rows(dataset, subset, split, n)
  tpl = templates.dataset_templates(dataset, subset)
  for name in tpl.all_template_names:
    t = tpl[name]
    task = templates.task_name(dataset, subset, name)
    if score_eval and not t.answer_choices:
      continue
    examples = []
    for i, row in enumerate(rows):
      rendered = templates.render(t, row)
      if rendered is None:  # guarded templates: no example, as in P3
        continue
      inputs, target, choices = rendered
      if not score_eval:
        examples.append({"inputs": inputs, "targets": target})
        continue
      stripped = [c.strip() for c in choices]
      if target.strip() not in stripped:
        continue
      for c, choice in enumerate(choices):
        examples.append({"inputs": inputs, "targets": choice, "idx": [i, c],
                         "is_correct": stripped[c] == target.strip()})
    _write_p3_task(root, task + ("_score_eval" if score_eval else ""), seqio_split, examples, score_eval)


@pytest.fixture()
def p3_release(small_kit, tmp_path):
  root = tmp_path / "P3"
  _render_p3(root, "rotten_tomatoes", None, "train", 24, False, "train")
  _render_p3(root, "super_glue", "cb", "validation", 20, True, "validation")
  _render_p3(root, "super_glue", "copa", "validation", 40, True, "validation")
  return root


def test_p3_release_layout_trains_and_ranks_on_the_same_examples(p3_release, monkeypatch):
  train_tasks = [t.name for t in tasks.REGISTERED["rotten_tomatoes"]]
  score_tasks = ["super_glue_cb_GPT_3_style_score_eval", "super_glue_copa__which_may_be_caused_by_score_eval",
                 "super_glue_copa_best_option_score_eval"]
  expected = {t: _read(t, "train") for t in train_tasks}
  expected.update({t: _read(t, "validation") for t in score_tasks})
  sampled = {t: p3.sample_score_rows(t, "validation", 6) for t in score_tasks}
  table = {}  # a scorer that prefers some choices over others, by content
  score = lambda b: np.array([float(np.sum(x * np.arange(len(x))) % 97) for x in b["decoder_target_tokens"]])
  lengths = {"inputs": 256, "targets": 32}
  evals = {(t, k): rank_eval.evaluate_task(score, t, lengths, split="validation", batch_size=8, max_examples=k)
           for t in score_tasks for k in (None, 6)}

  monkeypatch.setenv(sources.SOURCE_ENV, f"p3:{p3_release}")
  for t in train_tasks + score_tasks:
    got = _read(t, "validation" if t in score_tasks else "train")
    assert got == expected[t] and got, t
  for t in score_tasks:  # the subsample draws the same examples though P3 lacks the skipped rows
    got = p3.sample_score_rows(t, "validation", 6)
    keys = ["idx", "choice_idx", "is_correct"]
    assert [[int(r[k]) for k in keys] for r in got] == [[int(r[k]) for k in keys] for r in sampled[t]], t
    for a, b in zip(got, sampled[t]):
      np.testing.assert_array_equal(a["inputs"], b["inputs"])
      np.testing.assert_array_equal(a["targets"], b["targets"])
  for (t, k), ref in evals.items():
    assert rank_eval.evaluate_task(score, t, lengths, split="validation", batch_size=8, max_examples=k) == ref
  # presence is per P3 task folder; a missing folder fails on read naming it
  cb = suites.HELD_OUT[[s.key for s in suites.HELD_OUT].index("super_glue_cb")]
  names = [t.score_eval for t in tasks.REGISTERED["super_glue_cb"] if t.score_eval]
  assert cb.missing("validation", names) is None
  rte = suites.HELD_OUT[[s.key for s in suites.HELD_OUT].index("super_glue_rte")]
  assert "P3 task" in rte.missing("validation", ["super_glue_rte_GPT_3_style_score_eval"])
  with pytest.raises(Exception, match=r"super_glue_rte_GPT_3_style_score_eval: the p3 source has no .*info"):
    _read("super_glue_rte_GPT_3_style_score_eval", "validation")


def test_hf_offline_registers_everything_and_fails_on_first_read(tmp_path):
  script = (
      "import json, seqio, tasks\n"
      "m = tasks.registration.MIXTURES['t0_train']\n"
      "print(json.dumps([len(m), len(seqio.get_mixture_or_task('t0_train').tasks)]))\n"
      "ds = seqio.get_mixture_or_task('rotten_tomatoes_Movie_Expressed_Sentiment').get_dataset(\n"
      "    sequence_length=None, split='train', shuffle=False)\n"
      "try:\n"
      "  next(iter(ds))\n"
      "except Exception as e:\n"
      "  print('ERROR', [l for l in str(e).splitlines() if 'UnavailableDataError' in l])\n")
  env = dict(os.environ, MOE_JAX_DATA_SOURCE="hf", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
             HF_HOME=str(tmp_path / "hf"), JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert json.loads(lines[0]) == [38, sum(len(e.tasks) for e in registration.MIXTURES["t0_train"])]
  assert lines[-1].startswith("ERROR")
  assert "rotten_tomatoes split 'train': the hf source cannot load it (offline and not in the HF cache" in lines[-1]


def test_rates_are_the_mov_releases_on_the_size_table():
  entries = registration.MIXTURES["t0_train"]
  assert len(entries) == 38 and len(split_sizes.TRAIN_SIZES) == 38
  assert {(e.spec.dataset, e.spec.subset) for e in entries} == set(split_sizes.TRAIN_SIZES)
  mixture = seqio.get_mixture_or_task("t0_train")
  for e in entries:
    n = len(templates.dataset_templates(e.spec.dataset, e.spec.subset).all_template_names)
    assert len(e.tasks) == n  # every template, original task or not, as T0
    size = split_sizes.TRAIN_SIZES[(e.spec.dataset, e.spec.subset)]
    # The release's rule (t0_data/tasks.py): cap only a train split above 500,000, by integer division.
    rate = 500_000 // n if size > 500_000 else size
    for t in e.tasks:
      assert mixture.get_rate(seqio.get_mixture_or_task(t)) == rate, (t, rate)
  by_key = {e.spec.key: e for e in entries}
  assert by_key["glue_qqp"].rate == 363_846  # under 500,000: uncapped, though 500000 / 6 is smaller
  assert by_key["amazon_polarity"].rate == 55_555  # 500,000 // 9, not 55,555.6
  assert by_key["rotten_tomatoes"].rate == 8_530
  assert {t.name for t in mixture.tasks} == {t for e in entries for t in e.tasks}
  # The release blacklists gigaword_summarize_; promptsource 0.2.3 registers no such task.
  assert "gigaword_summarize_" not in {t.name for t in mixture.tasks}


def test_skip_unavailable_leaves_out_what_the_kit_lacks(monkeypatch, capsys):
  monkeypatch.setenv(sources.SKIP_ENV, "1")
  try:
    registration.register_all()
    names = {t.name for t in seqio.get_mixture_or_task("t0_train").tasks}
    kept = {e.spec.key for e in registration.MIXTURES["t0_train"] if not e.left_out}
    assert kept == {"glue_mrpc", "wiki_qa", "cosmos_qa", "dream", "quail", "social_i_qa", "rotten_tomatoes",
                    "common_gen", "samsum", "ag_news", "trec"}
    assert names == {t for e in registration.MIXTURES["t0_train"] if not e.left_out for t in e.tasks}
    err = capsys.readouterr().err
    assert "t0_train: SKIP_UNAVAILABLE left out 27 of 38 datasets the jsonl source cannot provide" in err
    assert "glue_qqp" in err and "story_cloze_2016" in err  # the held-out mixture too
  finally:
    monkeypatch.setenv(sources.SKIP_ENV, "0")
    registration.register_all()
  assert len(seqio.get_mixture_or_task("t0_train").tasks) == sum(len(e.tasks) for e in registration.MIXTURES["t0_train"])


def test_jsonl_unavailable_dataset_fails_on_first_read_naming_it():
  qqp = next(e for e in registration.MIXTURES["t0_train"] if e.spec.key == "glue_qqp")
  with pytest.raises(Exception, match=r"glue/qqp: the jsonl source has no .*glue/qqp/train.jsonl"):
    _read(qqp.tasks[0], "train")


def test_inspect_table_and_json_summary(capsys):
  assert data_inspect.main(["--mixture=t0_train"]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  summary = json.loads(out[-1])
  kit = {"glue_mrpc", "wiki_qa", "cosmos_qa", "dream", "quail", "social_i_qa", "rotten_tomatoes", "common_gen",
         "samsum", "ag_news", "trec"}
  assert summary["datasets"] == 38 and summary["available"] == 11
  assert summary["tasks"] == len(seqio.get_mixture_or_task("t0_train").tasks)
  assert set(summary["missing"]) == {s.key for s in suites.T0_TRAIN} - kit
  assert "| glue_qqp | 6 | 363,846.0 | train | no: no " in "\n".join(out)
  assert "| quail | 13 | 10,246.0 | train | yes (kit: validation stands in) |" in out
  assert data_inspect.main(["--mixture=t0_trian"]) == 2
