"""Sharded training equals single-device training (8 simulated CPU devices)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_data_model_mesh_matches_one_device():
  out = subprocess.run([sys.executable, os.path.join(REPO, "tests", "multidevice", "mesh_equivalence.py")],
                       capture_output=True, text=True, timeout=600, cwd=REPO,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["devices"] == 8 and r["leaves_on_8_devices"] > 0
  for a, b in zip(r["loss_8"], r["loss_1"]):
    assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
  assert r["max_param_diff"] <= 1e-5
  assert r["loss_8"][0] != r["loss_8"][-1]  # training did something
