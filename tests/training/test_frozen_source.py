"""The frozen-source fingerprint (moe_jax/frozen_source.py): it sees parameters
in another order, gives the same record on any mesh and over several hosts,
and still checks (with a warning) records of the old sum-|x| kind."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from moe_jax import frozen_source

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "tests", "multidevice", "frozen_fingerprint.py")
KERNEL = "encoder/layers_{}/attention/query/kernel"


def _tree(embedding=None, kernel=None):
  """A scanned 2-layer kernel and an embedding (or the given replacements)."""
  rng = np.random.default_rng(0)
  k, e = rng.standard_normal((2, 8, 4, 6), np.float32), rng.standard_normal((16, 8), np.float32)
  return {"encoder": {"layers": {"attention": {"query": {"kernel": k if kernel is None else kernel}}}},
          "token_embedder": {"embedding": e if embedding is None else embedding}}


def test_rows_heads_or_layers_in_another_order_are_refused_by_name():
  t = _tree()
  recorded = frozen_source.fingerprint(t)
  assert recorded["kind"] == frozen_source.KIND and set(recorded["leaves"]) == {
      KERNEL.format(0), KERNEL.format(1), "token_embedder/embedding"}
  frozen_source.check(recorded, t, "here")
  emb, kernel = t["token_embedder"]["embedding"], t["encoder"]["layers"]["attention"]["query"]["kernel"]
  in_another_order = "holds other values or the same ones in another order"
  for changed, why in (
      (_tree(embedding=emb[[3, 1, 2, 0] + list(range(4, 16))]), f"token_embedder/embedding {in_another_order}"),
      (_tree(kernel=kernel[:, :, [1, 0, 2, 3]]), f"{KERNEL.format(0)} {in_another_order}"),  # heads, every layer
      # The scanned stack's two layers swapped: each layer's own values are another layer's.
      (_tree(kernel=kernel[::-1]), f"{KERNEL.format(0)} holds other values \\(L2 norm")):
    with pytest.raises(frozen_source.FrozenSourceError, match=f"here: the frozen backbone changed .*: {why}"):
      frozen_source.check(recorded, changed, "here")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_the_record_is_the_same_on_other_meshes_and_over_two_processes(tmp_path):
  out = str(tmp_path / "fp")
  env = dict(os.environ, JAX_PLATFORMS="cpu", FINGERPRINT_OUT=out)
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, SCRIPT, port, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=env) for i in range(2)]
  try:  # the one-process run meanwhile
    mesh = subprocess.run([sys.executable, SCRIPT, "mesh"], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    results = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:  # a hung peer must not outlive the test
      if p.poll() is None:
        p.kill()
  assert mesh.returncode == 0, mesh.stderr[-3000:]
  for p, (_, stderr) in zip(procs, results):
    assert p.returncode == 0, stderr[-3000:]
  r = json.load(open(f"{out}.mesh"))
  recorded = r["recorded"]  # of the host (numpy) tree
  for mesh_name in ("1 device", "2 devices", "4 devices (2 x 2)"):
    assert r["checks"][f"{mesh_name}, same"] == "accepted"
    assert ("token_embedder/embedding holds other values or the same ones in another order"
            in r["checks"][f"{mesh_name}, rows 0 and 3 of token_embedder/embedding swapped"])
  for i in range(2):
    o = json.load(open(f"{out}.{i}"))
    assert o["process"] == i and not any(o["fully_addressable"])  # each process holds part of every leaf
    fp = o["fingerprint"]
    assert frozen_source.difference(recorded, fp) is None
    # Summed across the hosts in float64: far closer than the tolerance (float32 would give ~1e-8).
    for n, (shape, dtype, probe, l2) in recorded["leaves"].items():
      assert fp["leaves"][n][:2] == [shape, dtype]
      np.testing.assert_allclose(fp["leaves"][n][2:], [probe, l2], rtol=1e-12, err_msg=n)


def _old_record(tree):
  """The file as moe-jax wrote it before the probe: no "kind", sum |x| per (unrolled) parameter."""
  kernel = tree["encoder"]["layers"]["attention"]["query"]["kernel"]
  leaves = {KERNEL.format(i): [[8, 4, 6], "float32", float(np.sum(np.abs(kernel[i]), dtype=np.float64))]
            for i in range(2)}
  emb = tree["token_embedder"]["embedding"]
  leaves["token_embedder/embedding"] = [[16, 8], "float32", float(np.sum(np.abs(emb), dtype=np.float64))]
  return {"initial_checkpoint_path": None, "seed": 0, "digest": frozen_source.fingerprint(tree)["digest"],
          "leaves": leaves}


def test_an_old_sum_abs_record_is_still_checked_with_a_warning(capsys):
  t = _tree()
  old = _old_record(t)
  frozen_source.check(old, t, "resuming R at step 2")
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(
      "warning: resuming R at step 2: frozen_source.json holds the old sum-|x| fingerprint"), err
  # Other values are still refused under the old kind.
  with pytest.raises(frozen_source.FrozenSourceError, match=r"token_embedder/embedding holds other values \(sum \|x\|"):
    frozen_source.check(old, _tree(embedding=t["token_embedder"]["embedding"] * 1.01), "here")
  with pytest.raises(frozen_source.FrozenSourceError, match="unknown kind 'probe99'"):
    frozen_source.check(dict(old, kind="probe99"), t, "here")
