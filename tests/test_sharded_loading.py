"""Initial checkpoints load straight into a sharded, scanned model (8 simulated devices)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_t5x_hf_and_moe_jax_checkpoints_load_into_the_shards():
  out = subprocess.run([sys.executable, os.path.join(REPO, "tests", "multidevice", "sharded_loading.py")],
                       capture_output=True, text=True, timeout=600, cwd=REPO,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["devices"] == 8
  for source in ("t5x", "hf", "moe_jax"):
    # Every leaf has the sharded init's sharding (FSDP rules on a (4, 2) mesh split
    # most of them) and the values of an unsharded load, exactly.
    assert r[source]["same_shardings"] and r[source]["split_leaves"] >= 30, (source, r[source])
    assert r[source]["max_diff"] == 0.0 and r[source]["compared"] >= 29, (source, r[source])
  # T5X parameters are converted one at a time (a 2-layer stack at most), never the whole backbone.
  assert 1 <= r["t5x_peak_params_on_host"] <= 2 < r["t5x_params"], r
  # A same-layout moe-jax checkpoint is read by orbax into the shards, not through host memory.
  assert r["moe_jax_read_sharded"] and r["moe_jax_step"] == 5
