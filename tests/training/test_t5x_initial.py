"""INITIAL_CHECKPOINT_PATH pointing at a T5X checkpoint written by t5x, through the gin entry."""
import os
import subprocess
import sys

import numpy as np

from moe_jax import checkpoints
from tests.models.t5x import common

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# t5_1_1_tiny with the fixture's dimensions (2+2 layers and the T5 vocabulary already match).
FIXTURE_DIMS = "--gin.model.config_overrides={'d_model': 8, 'd_kv': 3, 'num_heads': 4, 'd_ff': 16}"


def _train(model_dir, *extra, initial=common.TINY_T5):
  return subprocess.run(
      [sys.executable, "-m", "moe_jax.train", "--gin_file=gin_configs/demo.gin", f"--gin.MODEL_DIR={model_dir}",
       "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
       "--gin.MIXTURE_OR_TASK_NAME=rotten_tomatoes_Movie_Expressed_Sentiment", "--gin.EVALUATOR=None",
       f"--gin.INITIAL_CHECKPOINT_PATH={initial}", *extra],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600)


def test_mov_trains_from_a_t5x_checkpoint_with_the_backbone_unchanged(tmp_path):
  out = _train(tmp_path / "run", FIXTURE_DIMS, "--gin.SAVE_FROZEN=True")  # to read the backbone back
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"initial weights from {common.TINY_T5} (step 0)" in out.stdout
  fresh = int(out.stdout.split("(step 0); ")[1].split(" parameters start fresh")[0])
  assert fresh > 0  # the MoV experts and routers
  state = checkpoints.load_state(str(tmp_path / "run" / "checkpoints"))
  assert int(state["step"]) == 2
  t, frozen = common.raw_target(), state["frozen"]
  np.testing.assert_array_equal(frozen["token_embedder"]["embedding"], t["token_embedder/embedding"])
  np.testing.assert_array_equal(frozen["decoder"]["layers_1"]["encoder_decoder_attention"]["out"]["kernel"],
                                t["decoder/layers_1/encoder_decoder_attention/out/kernel"].reshape(4, 3, 8))
  np.testing.assert_array_equal(frozen["decoder"]["logits_dense"]["kernel"], t["decoder/logits_dense/kernel"])
  assert "Adafactor step offset 0:" in out.stdout  # the fixture was saved at step 0


def test_the_t5x_step_becomes_the_adafactor_step_offset(tmp_path):
  # T5X fine-tuning continues the pretrained step (1,100,000 for the LM-adapted
  # T5 v1.1), so the first update's second-moment decay is 1 - 1100001^-0.8.
  ckpt = common.write_checkpoint(tmp_path / "ckpt", common.raw_target(), step=1_100_000)
  out = _train(tmp_path / "run", FIXTURE_DIMS, "--gin.TRAIN_STEPS=1", initial=ckpt)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "(step 1100000)" in out.stdout
  assert "Adafactor step offset 1100000: the first update's second-moment decay is 0.999985" in out.stdout


def test_a_checkpoint_that_does_not_fit_the_model_stops_with_its_shapes(tmp_path):
  out = _train(tmp_path / "run")  # t5_1_1_tiny's own dimensions
  assert out.returncode == 2, out.stderr[-3000:]
  assert "the checkpoint's shapes imply d_ff=16 (config says 128)" in out.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints") or not os.listdir(tmp_path / "run" / "checkpoints")
