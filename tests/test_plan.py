"""The memory planner: AOT-compiles the configured train step on simulated devices."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan(*flags):
  out = subprocess.run([sys.executable, "-m", "moe_jax.plan", *flags], cwd=REPO, capture_output=True, text=True,
                       timeout=900, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


def test_plan_reports_the_step_on_simulated_devices_and_sees_rematerialisation():
  tiny = ["--gin_file=gin_configs/demo.gin", "--devices=2", "--gin.MESH_SHAPE=(2, 1)", "--gin.BATCH_SIZE=8",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 64}"]
  plain, text = _plan(*tiny)
  full, _ = _plan(*tiny, "--gin.REMAT_POLICY=full")
  assert set(plain) >= {"params", "trainable", "per_device_argument_gib", "per_device_temp_gib",
                        "per_device_output_gib", "flops_per_device", "compile_s"}
  assert plain["devices"] == 2 and plain["mesh"] == {"data": 2, "model": 1}
  from flax import linen as nn

  from moe_jax.models import build_model, get_preset
  from moe_jax.peft import MoV
  from moe_jax.peft.trainable import count, trainable_mask
  params = nn.unbox(build_model(get_preset("t5_1_1_tiny"), MoV(num_experts=10)).abstract_variables()["params"])
  assert (plain["params"], plain["trainable"]) == (count(params), count(params, trainable_mask(params)))
  assert "temporaries per device" in text
  # Recomputing each layer in the backward pass: more FLOPs. (Its memory saving
  # is not asserted: on XLA:CPU at this size the two temporaries agree to the
  # MiB, 0.099 GiB each, the saving being within the allocator's rounding.)
  assert full["flops_per_device"] > 1.1 * plain["flops_per_device"]


@pytest.mark.slow
def test_mov_t5_3b_fits_the_pod_targets():
  # README "Sizing a run": 8 devices, mesh (4, 2), the preset as shipped.
  r, _ = _plan("--gin_file=gin_configs/mov_t5_3b.gin", "--devices=8", "--gin.MESH_SHAPE=(4, 2)")
  assert r["per_device_temp_gib"] <= 8 and r["per_device_argument_gib"] <= 3 and r["compile_s"] <= 30
