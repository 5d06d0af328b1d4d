"""The gin entry point: flag parsing, bad input, paper presets, eval / infer / export
(resuming: tests/training/test_resume.py)."""
import os
import subprocess
import sys

import gin
import pytest

from moe_jax import gin_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def test_flags_become_gin_bindings():
  files, bindings, search = gin_utils.parse_flags(
      ["--gin_file=a.gin", "--gin_file=b.gin", "--gin.MODEL_DIR=/tmp/x", "--gin.TRAIN_STEPS=60",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 8}", "--gin_search_paths=p1,p2"])
  assert files == ["a.gin", "b.gin"] and search == ["p1", "p2"]
  assert bindings == ["MODEL_DIR = '/tmp/x'", "TRAIN_STEPS = 60", "TASK_FEATURE_LENGTHS = {'inputs': 8}"]
  with pytest.raises(ValueError, match="unknown flag"):
    gin_utils.parse_flags(["--model_dir=/tmp"])


@pytest.mark.parametrize("preset", ["mov_t5_3b", "molora_t5_3b", "ia3_t5_3b", "lora_t5_3b"])
def test_paper_presets_parse_and_build_abstractly(preset):
  gin.clear_config()
  try:
    gin_utils.configure([f"--gin_file=gin_configs/{preset}.gin", "--gin.MODEL_DIR=/tmp/unused",
                         "--gin.INITIAL_CHECKPOINT_PATH=/ckpt/unused"])
    assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"inputs": 1024, "targets": 256}
    assert gin.query_parameter("%BATCH_SIZE") == 32 and gin.query_parameter("%TRAIN_STEPS") == 500000
    assert gin.query_parameter("%LOSS_NORMALIZING_FACTOR") == "average_per_sequence"
    model = gin_utils.model()
    assert model.config.d_model == 2048 and model.config.dropout_rate == 0.1
    assert model.config.dtype == "bfloat16"
    variables = model.abstract_variables()  # shapes only, no memory
    assert "params" in variables
  finally:
    gin.clear_config()


def _run(module, args, timeout=600):
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=timeout)


def _train(model_dir, steps, extra=()):
  return _run("moe_jax.train", [
      "--gin_file=gin_configs/demo.gin", f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={steps}",
      "--gin.MIXTURE_OR_TASK_NAME=rotten_tomatoes_Movie_Expressed_Sentiment",
      "--gin.CHECKPOINT_PERIOD=20", "--gin.LOG_PERIOD=10", "--gin.EVALUATOR=None", *extra])


@pytest.fixture(scope="module")
def run40(tmp_path_factory):
  """A 40-step MoV run (checkpoints at 20 and 40) shared by the tests below."""
  run = tmp_path_factory.mktemp("run") / "run"
  out = _train(run, 40)
  assert out.returncode == 0, out.stderr[-2000:]
  return run


def _leftovers(path):
  return sorted(os.listdir(path)) if os.path.exists(path) else []


def test_bad_inputs_exit_nonzero_with_a_message(tmp_path):
  out = _train(tmp_path / "a", 5, ["--gin.NO_SUCH_MACRO_USER=3", "--gin.train.frobnicate=1"])
  assert out.returncode == 2 and "frobnicate" in out.stderr
  out = _train(tmp_path / "b", 5, ["--gin.MIXTURE_OR_TASK_NAME=t0_trian"])
  assert out.returncode == 2 and "t0_train" in out.stderr
  assert not _leftovers(tmp_path / "b" / "checkpoints")


def test_missing_and_mismatched_checkpoints_are_named(run40, tmp_path):
  out = _train(tmp_path / "a", 5, [f"--gin.INITIAL_CHECKPOINT_PATH={tmp_path / 'nope'}"])
  assert out.returncode == 2 and f"{tmp_path / 'nope'}: does not exist" in out.stderr
  out = _train(tmp_path / "b", 5, [f"--gin.INITIAL_CHECKPOINT_PATH={run40 / 'checkpoints'}",
                                   "--gin.MoV.num_experts=4"])
  assert out.returncode == 2, out.stderr[-2000:]
  assert "k_adapter/experts has shape (10, 4, 16), the model needs (4, 4, 16)" in out.stderr
  assert not _leftovers(tmp_path / "a" / "checkpoints") and not _leftovers(tmp_path / "b" / "checkpoints")


def test_unparsable_data_file_names_file_and_line(tmp_path):
  from moe_jax import paths
  data = tmp_path / "data"
  (data / "rotten_tomatoes" / "_").mkdir(parents=True)
  os.symlink(os.path.join(paths.data_dir(), "t5_vocab"), data / "t5_vocab")
  good = open(os.path.join(paths.data_dir(), "rotten_tomatoes", "_", "train.jsonl")).readlines()[:3]
  (data / "rotten_tomatoes" / "_" / "train.jsonl").write_text("".join(good) + '{"text": "cut off\n')
  out = _train(tmp_path / "run", 5, [f"--gin.DATA_DIR={data}"])
  assert out.returncode == 2, out.stderr[-2000:]
  assert "rotten_tomatoes/_/train.jsonl:4: invalid JSON" in out.stderr
  assert not _leftovers(tmp_path / "run" / "checkpoints")


def test_divergence_stops_before_any_checkpoint(tmp_path):
  out = _train(tmp_path / "run", 5, ["--gin.LEARNING_RATE=1e999", "--gin.CHECKPOINT_PERIOD=1"])
  assert out.returncode == 1, out.stderr[-2000:]
  assert "training diverged at step 1" in out.stderr and "last checkpoint: none" in out.stderr
  assert not _leftovers(tmp_path / "run" / "checkpoints")
  assert not os.path.exists(tmp_path / "run" / "eval")

