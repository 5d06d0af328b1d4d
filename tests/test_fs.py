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
  from moe_jax.evaluation import adapter_export, plots
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


def test_the_vocabulary_from_a_url_the_kit_or_the_public_bucket(in_empty_cwd, monkeypatch):
  """VOCABULARY / MOE_JAX_VOCABULARY (local or URL) first, the kit's copy
  next, the public bucket last; when neither default can be read, one error
  names both places."""
  from moe_jax import paths
  from moe_jax.data import vocab
  kit_copy = paths.t5_vocab_path()
  fs.makedirs("ram://vocab_test")
  fs.write_bytes("ram://vocab_test/spiece.model", fs.read_bytes(kit_copy))
  monkeypatch.setenv(vocab.VOCAB_ENV, "")  # restored to unset afterwards, whatever the macro sets below
  monkeypatch.delenv(vocab.VOCAB_ENV)
  assert paths.vocabulary_path() == kit_copy
  v = vocab.t5_vocabulary("ram://vocab_test/spiece.model")
  assert v.vocab_size == 32100 and v.encode("The house is wonderful.") == [37, 629, 19, 1627, 5]
  from moe_jax import gin_utils
  gin_utils.vocabulary("ram://vocab_test/spiece.model")  # the VOCABULARY macro
  assert paths.vocabulary_path() == "ram://vocab_test/spiece.model"
  assert vocab.t5_vocabulary() is v  # loaded once per process and path
  monkeypatch.delenv(vocab.VOCAB_ENV)
  monkeypatch.setenv("MOE_JAX_DATA_DIR", str(in_empty_cwd / "no_kit"))
  assert paths.vocabulary_path() == paths.PUBLIC_VOCABULARY
  monkeypatch.setattr(paths, "PUBLIC_VOCABULARY", "ram://vocab_test/absent.model")  # no network here
  with pytest.raises(FileNotFoundError) as e:
    vocab.t5_vocabulary()
  assert str(in_empty_cwd / "no_kit" / "t5_vocab" / "spiece.model") in str(e.value)
  assert "ram://vocab_test/absent.model" in str(e.value) and vocab.VOCAB_ENV in str(e.value)
  fs.write_bytes("ram://vocab_test/bad.model", b"not a model")
  with pytest.raises(ValueError, match="VOCABULARY=ram://vocab_test/bad.model: not a SentencePiece model"):
    vocab.t5_vocabulary("ram://vocab_test/bad.model")
  fs.rmtree("ram://vocab_test")


def test_a_sharded_hugging_face_directory_on_a_url(in_empty_cwd):
  """config.json + two safetensors shards + index on ram://: the same weights
  as the local copy, read tensor by tensor (RemoteTensor)."""
  import jax
  from moe_jax import frozen_source
  from moe_jax.models import build_model, get_preset, hf, safetensors_io
  model = build_model(get_preset("t5_1_1_tiny"))
  local = hf.save_hf_checkpoint(model, frozen_source.init_params(model, 3), str(in_empty_cwd / "hf"))
  tensors = {k: np.asarray(v) for k, v in safetensors_io.load(f"{local}/model.safetensors").items()}
  names = sorted(tensors)
  url = "ram://hf_test/t5_tiny"
  fs.makedirs(url)
  weight_map = {}
  for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
    shard = f"model-0000{i + 1}-of-00002.safetensors"
    safetensors_io.save(f"{url}/{shard}", {k: tensors[k] for k in part})
    weight_map.update({k: shard for k in part})
  fs.write_text(f"{url}/model.safetensors.index.json", json.dumps({"weight_map": weight_map}))
  fs.write_text(f"{url}/config.json", fs.read_text(f"{local}/config.json"))
  remote = safetensors_io.load(f"{url}/model-00001-of-00002.safetensors")
  assert all(isinstance(t, safetensors_io.RemoteTensor) for t in remote.values())
  _, want = hf.load_hf_checkpoint(local)
  _, got = hf.load_hf_checkpoint(url)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, want, got))
  fs.rmtree("ram://hf_test")


def test_gin_files_and_search_paths_on_a_url(in_empty_cwd):
  import gin
  from moe_jax import gin_utils
  from tests.inprocess import restored_state
  fs.makedirs("ram://gin_test/configs")
  fs.write_text("ram://gin_test/configs/mine.gin", "include 'demo.gin'\nBATCH_SIZE = 6\n")
  with restored_state():
    gin_utils.configure(["--gin_search_paths=ram://gin_test/configs", "--gin_file=mine.gin"])
    assert gin.query_parameter("%BATCH_SIZE") == 6
    gin_utils.configure(["--gin_file=ram://gin_test/configs/mine.gin"])
    assert gin.query_parameter("%BATCH_SIZE") == 6
    with pytest.raises(FileNotFoundError, match="--gin_file=ram://gin_test/configs/absent.gin: not found"):
      gin_utils.configure(["--gin_file=ram://gin_test/configs/absent.gin"])
  fs.rmtree("ram://gin_test")


def test_a_t5x_checkpoint_on_a_url_other_than_gcs(in_empty_cwd):
  from moe_jax.models import t5x
  from moe_jax.models.hf import CheckpointError
  fs.makedirs("ram://t5x_test/ckpt")
  fs.write_bytes("ram://t5x_test/ckpt/checkpoint", b"\x80")
  assert t5x.is_t5x_checkpoint("ram://t5x_test/ckpt")
  with pytest.raises(CheckpointError, match=r"ram://t5x_test/ckpt/checkpoint: no parameters"):
    t5x.T5XCheckpoint("ram://t5x_test/ckpt")  # the msgpack file was read from the URL (an empty map)
  from moe_jax.models.t5x import reader
  with pytest.raises(CheckpointError, match="ram://t5x_test/ckpt: T5X arrays are read with TensorStore"):
    reader._kvstore("ram://t5x_test/ckpt")
  fs.rmtree("ram://t5x_test")


def test_single_file_moves_over_a_url(in_empty_cwd):
  """fs.move of one file: URL to URL, local to URL and URL to local."""
  fs.makedirs("ram://move_test/a")
  fs.write_text("ram://move_test/a/x.txt", "one")
  fs.move("ram://move_test/a/x.txt", "ram://move_test/a/y.txt")
  assert not fs.exists("ram://move_test/a/x.txt") and fs.read_text("ram://move_test/a/y.txt") == "one"
  (in_empty_cwd / "local.txt").write_text("two")
  fs.move(str(in_empty_cwd / "local.txt"), "ram://move_test/a/z.txt")
  assert not (in_empty_cwd / "local.txt").exists() and fs.read_text("ram://move_test/a/z.txt") == "two"
  fs.move("ram://move_test/a/z.txt", str(in_empty_cwd / "back.txt"))
  assert (in_empty_cwd / "back.txt").read_text() == "two" and not fs.exists("ram://move_test/a/z.txt")
  fs.rmtree("ram://move_test")


def test_move_aside_keeps_an_earlier_damaged_copy_of_the_same_step(in_empty_cwd):
  """A step damaged twice (moved aside, rewritten, damaged again) keeps both
  copies: <step>, then <step>.1."""
  from moe_jax import checkpoints
  run = in_empty_cwd / "run"
  for n in range(2):
    (run / "checkpoints" / "4").mkdir(parents=True)
    (run / "checkpoints" / "4" / "marker").write_text(str(n))
    moved = checkpoints.move_aside(str(run / "checkpoints"), 4, str(run / "damaged_checkpoints"))
    assert moved == str(run / "damaged_checkpoints" / ("4" if n == 0 else "4.1"))
  assert (run / "damaged_checkpoints" / "4" / "marker").read_text() == "0"
  assert (run / "damaged_checkpoints" / "4.1" / "marker").read_text() == "1"
  assert not (run / "checkpoints" / "4").exists()
