"""The path layer on a non-local filesystem: TensorFlow's in-memory `ram://`
stands in for `gs://` (the same tf.io.gfile code path, no network). Any
`os.*` call left on a run's way would miss it or create a local `ram:` folder."""
import json
import os

import numpy as np
import pytest

from moe_jax import fs


@pytest.fixture
def in_empty_cwd(tmp_path):
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    yield tmp_path
  finally:
    assert not os.path.exists(tmp_path / "ram:"), "a URI was used as a local path"
    os.chdir(cwd)


def test_files_and_trees_on_a_uri(in_empty_cwd):
  root = "ram://fs_test/run"
  assert fs.normalize(root + "/") == root and fs.dirname(root) == "ram://fs_test"
  assert fs.join(root, "a", "b.json") == "ram://fs_test/run/a/b.json" and fs.basename(root) == "run"
  fs.makedirs(fs.join(root, "a", "sub"))
  fs.write_text(fs.join(root, "a", "x.json"), '{"k": 1}')
  fs.write_bytes(fs.join(root, "a", "sub", "y.bin"), b"\0\1")
  assert sorted(fs.listdir(fs.join(root, "a"))) == ["sub", "x.json"]  # no ".tmp" left behind
  assert fs.isdir(fs.join(root, "a")) and not fs.isdir(fs.join(root, "a", "x.json"))
  fs.move(fs.join(root, "a"), fs.join(root, "moved"))
  assert not fs.exists(fs.join(root, "a"))
  assert json.loads(fs.read_text(fs.join(root, "moved", "x.json"))) == {"k": 1}
  assert fs.read_bytes(fs.join(root, "moved", "sub", "y.bin")) == b"\0\1"
  fs.rmtree(root)
  assert not fs.exists(root)
  assert fs.normalize("rel") == os.path.join(str(in_empty_cwd), "rel")  # local paths: absolute


def test_a_training_run_writes_its_directory_through_the_path_layer(tmp_path, monkeypatch, capsys):
  """MODEL_DIR=ram://...: run.json, ids.json, frozen_source.json, the metrics
  log (rewritten whole on resume: object stores cannot append), TensorBoard,
  moved-aside damaged checkpoints. Orbax's checkpoints folder is the one part
  kept local here: orbax reaches gs:// through TensorStore's GCS driver, which
  has no in-memory stand-in."""
  from moe_jax import checkpoints
  from tests.inprocess import train_in_process
  assert not os.path.exists("ram:")  # the gin files resolve from the repository, the cwd here
  local = tmp_path / "orbax"
  monkeypatch.setattr(checkpoints, "directory_of", lambda model_dir: str(local / fs.basename(model_dir)))
  run = "ram://train_test/run"
  assert train_in_process(run, "--gin.TRAIN_STEPS=2") == 0
  for name in ("run.json", "ids.json", "frozen_source.json", "train_metrics.jsonl"):
    assert fs.exists(fs.join(run, name)), name
  assert json.loads(fs.read_text(fs.join(run, "run.json")))["method"] == "MoV"
  assert [json.loads(l)["step"] for l in fs.read_text(fs.join(run, "train_metrics.jsonl")).splitlines()] == [1, 2]
  events = fs.listdir(fs.join(run, "tensorboard", "train"))
  assert events and all(e.startswith("events.out.tfevents") for e in events)
  assert sorted(os.listdir(local / "run")) == ["2"]
  # Resume to 4 on the same URI: the log keeps steps 1-2 and appends 3-4.
  capsys.readouterr()
  assert train_in_process(run, "--gin.TRAIN_STEPS=4") == 0
  assert "resuming ram://train_test/run from step 2" in capsys.readouterr().out
  assert [json.loads(l)["step"] for l in fs.read_text(fs.join(run, "train_metrics.jsonl")).splitlines()] == [1, 2, 3, 4]
  assert not os.path.exists("ram:"), "a URI was used as a local path"
  fs.rmtree("ram://train_test")


def test_reports_plots_and_adapters_on_a_uri(in_empty_cwd):
  from moe_jax import adapter_export, plots
  from moe_jax.data import rank_eval
  out = "ram://report_test/eval"
  report = {"suite": "t0_eval", "step": 3, "average": 0.5, "max_examples_per_template": None,
            "datasets": [{"dataset": "rte", "status": "ok", "median_accuracy": 0.5, "templates": {"t": 0.5},
                          "examples_per_template": 4, "truncated": 0}]}
  json_path, md_path = rank_eval.write_report(report, out)
  assert json.loads(fs.read_text(json_path))["average"] == 0.5 and "rte" in fs.read_text(md_path)
  png = plots.expert_heatmaps({"rte": {"encoder/layers_0/x_adapter": np.array([0.25, 0.75])}},
                              fs.join(out, "expert_probs.png"))
  assert fs.read_bytes(png)[:8] == b"\x89PNG\r\n\x1a\n"
  path = adapter_export.save_adapters({"a_adapter": {"w": np.arange(3.0)}}, "ram://report_test/export/adapters.safetensors")
  assert fs.read_bytes(path)[8:9] == b"{"  # header length, then the JSON header
  fs.rmtree("ram://report_test")
