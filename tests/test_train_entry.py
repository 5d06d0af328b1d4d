"""The gin entry point: flag parsing, bad input, paper presets, train + resume."""
import json
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


def _train(model_dir, steps, extra=()):
  return subprocess.run(
      [sys.executable, "-m", "moe_jax.train", "--gin_file=gin_configs/demo.gin", f"--gin.MODEL_DIR={model_dir}",
       f"--gin.TRAIN_STEPS={steps}", "--gin.MIXTURE_OR_TASK_NAME=rotten_tomatoes_Movie_Expressed_Sentiment",
       "--gin.CHECKPOINT_PERIOD=20", "--gin.LOG_PERIOD=10", "--gin.EVALUATOR=None", *extra],
      cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def test_bad_inputs_exit_nonzero_with_a_message(tmp_path):
  out = _train(tmp_path / "a", 5, ["--gin.NO_SUCH_MACRO_USER=3", "--gin.train.frobnicate=1"])
  assert out.returncode == 2 and "frobnicate" in out.stderr
  out = _train(tmp_path / "b", 5, ["--gin.MIXTURE_OR_TASK_NAME=t0_trian"])
  assert out.returncode == 2 and "t0_train" in out.stderr
  assert not os.path.exists(tmp_path / "b" / "checkpoints") or not os.listdir(tmp_path / "b" / "checkpoints")


def test_train_then_resume_appends_steps(tmp_path):
  run = tmp_path / "run"
  first = _train(run, 40)
  assert first.returncode == 0, first.stderr[-2000:]
  rows = [json.loads(l) for l in open(run / "train_metrics.jsonl")]
  assert [r["step"] for r in rows] == [10, 20, 30, 40]
  assert all({"loss", "learning_rate", "tokens_per_sec"} <= set(r) for r in rows)
  assert sorted(os.listdir(run / "checkpoints")) == ["20", "40"]
  second = _train(run, 60)
  assert second.returncode == 0, second.stderr[-2000:]
  assert "resuming" in second.stdout and "from step 40" in second.stdout
  rows = [json.loads(l) for l in open(run / "train_metrics.jsonl")]
  assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
  assert "60" in os.listdir(run / "checkpoints")
  assert os.listdir(run / "tensorboard" / "train")
