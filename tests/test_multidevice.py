"""Sharded training equals single-device training (8 simulated CPU devices)."""
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# What the default rules must do on a (data, model, expert) mesh, written out here
# rather than read from moe_jax.partitioning: weights split over `model` along
# heads / mlp / vocab, adapter experts over `expert`, everything else replicated.
EXPECTED_MESH_AXIS = {"vocab": "model", "mlp": "model", "heads": "model", "joined_kv": "model",
                      "expert": "expert"}


def test_data_model_expert_mesh_places_by_the_rules_and_matches_one_device():
  out = subprocess.run([sys.executable, os.path.join(REPO, "tests", "multidevice", "mesh_equivalence.py")],
                       capture_output=True, text=True, timeout=600, cwd=REPO,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  mesh = r["mesh"]
  assert r["devices"] == 8 and mesh == {"data": 2, "model": 2, "expert": 2}
  split = {"model": 0, "expert": 0}
  for p in r["params"]:
    want = [EXPECTED_MESH_AXIS.get(name) for name in p["logical"]]
    assert p["spec"] == want, (p["name"], p["logical"], p["spec"])
    # Each device holds exactly its block: the global shape divided along the split axes.
    assert p["shard_shapes"] == [[n // mesh[a] if a else n for n, a in zip(p["shape"], want)]], p
    assert p["devices"] == 8
    for a in split:
      split[a] += a in want
  assert split["model"] >= 40 and split["expert"] == 32  # all 32 MoV adapter leaves (experts, routers)
  # Batch rows over `data`: devices at data coordinate i hold rows 4i..4i+3 (and nothing else).
  # Three steps, one compilation: the step's outputs keep the rules' placements.
  assert r["step"] == {"compiles": 1, "kept_placement": True}, r["step"]
  assert r["batch"]["spec"] == ["data", None]
  assert len(r["batch"]["devices"]) == 8
  for d in r["batch"]["devices"]:
    i = d["coords"]["data"]
    assert d["rows"] == list(range(4 * i, 4 * i + 4)) and d["matches"], d
  for a, b in zip(r["loss_8"], r["loss_1"]):
    assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
  trainable = [p for p in r["params"] if p["trainable"]]
  assert len(trainable) == 32
  for p in trainable:  # every update is large, and the 8-device one matches it to 1e-4 of its size
    assert p["update"] >= 1e-3, p
    assert p["update_diff"] <= 1e-4 * p["update"], p


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_joined_by_jax_distributed_match_one_device(tmp_path):
  script = os.path.join(REPO, "tests", "multidevice", "two_process_train.py")
  out = str(tmp_path / "result")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TWO_PROCESS_OUT=out)
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, script, port, str(i)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env) for i in range(2)]
  try:
    results = [p.communicate(timeout=600) for p in procs]
  finally:
    for p in procs:  # a hung peer must not outlive the test
      if p.poll() is None:
        p.kill()
  for p, (_, stderr) in zip(procs, results):
    assert p.returncode == 0, stderr[-3000:]
  outs = [json.load(open(f"{out}.{i}")) for i in range(2)]
  single = subprocess.run([sys.executable, script, "single"], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  ref = json.load(open(f"{out}.single"))
  assert [o["process"] for o in outs] == [0, 1] and all(o["processes"] == 2 and o["devices"] == 2 for o in outs)
  for phase in ("data_parallel", "model_parallel"):
    assert outs[0][phase]["losses"] == outs[1][phase]["losses"]  # one global computation
    np.testing.assert_allclose(outs[0][phase]["losses"], ref[phase]["losses"], rtol=1e-5)  # = one device
    p0, p1, p_ref = (np.asarray(o[phase]["params"]) for o in (outs[0], outs[1], ref))
    np.testing.assert_array_equal(p0, p1)
    # Per parameter: the update is large and the two-process one matches one device's
    # to 1e-4 of its size (reduction order only).
    before = np.asarray(ref["params_before"])
    bounds = np.cumsum([0] + ref["leaf_sizes"])
    assert bounds[-1] == len(p_ref) and len(ref["leaf_sizes"]) == 16
    for lo, hi in zip(bounds[:-1], bounds[1:]):
      update = np.max(np.abs(p_ref[lo:hi] - before[lo:hi]))
      assert update >= 1e-3, (phase, lo, update)
      assert np.max(np.abs(p0[lo:hi] - p_ref[lo:hi])) <= 1e-4 * update, (phase, lo)
  # Per-host input: with the data axis across the hosts each reads and holds its half of
  # every global batch (rows start with 2 + row index); with the model axis across them, all rows.
  assert outs[0]["data_parallel"]["host_rows"] == [{"fed": [2, 3], "held": [2, 3]}] * 3
  assert outs[1]["data_parallel"]["host_rows"] == [{"fed": [4, 5], "held": [4, 5]}] * 3
  assert all(o["model_parallel"]["host_rows"] == [{"fed": [2, 3, 4, 5], "held": [2, 3, 4, 5]}] * 3
             for o in outs)
