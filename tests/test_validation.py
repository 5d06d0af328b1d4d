"""Up-front configuration checks: unused macros, value ranges, output paths."""
import os

import gin
import pytest

from moe_jax import gin_utils, validation


def test_unused_macros_only_flags_unreferenced_command_line_macros():
  try:
    gin_utils.configure(["--gin_file=gin_configs/demo.gin", "--gin.MODEL_DIR=/tmp/x", "--gin.LEARNING_RATE=0.2",
                         "--gin.EVAL_DATASETS=['super_glue_cb']", "--gin.TRAIN_STEP=5"])
    raise AssertionError("TRAIN_STEP should have been refused")
  except ValueError as e:
    assert str(e) == "--gin.TRAIN_STEP: no configuration uses the macro TRAIN_STEP; did you mean TRAIN_STEPS?"
  finally:
    gin.clear_config()
  try:
    # A macro read only through another macro (EVAL_FEATURE_LENGTHS = %TASK_FEATURE_LENGTHS) is used.
    gin_utils.configure(["--gin_file=gin_configs/runs/finetune.gin", "--gin_file=gin_configs/models/t5_1_1_tiny.gin",
                         "--gin_file=gin_configs/methods/mov.gin", "--gin.MODEL_DIR=/tmp/x",
                         "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}"])
    assert validation.unused_macros(["TASK_FEATURE_LENGTHS = {}", "MoV.num_experts = 3"]) == []
  finally:
    gin.clear_config()


def test_value_checks():
  with pytest.raises(ValueError, match=r"X must be a positive integer, got True"):
    validation.positive_int("X", True)
  validation.positive_int("X", None, allow_none=True)
  with pytest.raises(ValueError, match="must be a number, got nan"):
    validation.number("LR", float("nan"))
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['input'\]"):
    validation.feature_lengths("L", {"inputs": 1, "targets": 1, "input": 2})
  with pytest.raises(ValueError, match="L lacks the key 'inputs'"):
    validation.feature_lengths("L", {"targets": 1})


def test_output_dir(tmp_path):
  validation.output_dir("D", str(tmp_path / "a" / "b"))  # creatable
  (tmp_path / "f").write_text("x")
  with pytest.raises(ValueError, match=f"lies under the regular file {tmp_path / 'f'}"):
    validation.output_dir("D", str(tmp_path / "f" / "a" / "b"))
  assert not (tmp_path / "a").exists()
  # A bucket is checked on first write, not taken for a local directory named "gs:".
  cwd = os.getcwd()
  try:
    os.chdir(tmp_path)
    validation.output_dir("D", "gs://bucket/run")
    assert not os.path.exists("gs:")
  finally:
    os.chdir(cwd)
