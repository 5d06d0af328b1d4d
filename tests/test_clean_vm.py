"""A clean-VM rehearsal of a pod run: a fresh copy of the repository with no
`../shared` beside it, every input on `ram://` (TensorFlow's in-memory
filesystem, the tf.io.gfile path gs:// takes), MODEL_DIR there too; train,
evaluate zero-shot and decode read nothing local but the checkout and Python
(see tests/clean_vm_rehearsal.py, which does the run).

Untested without a real bucket: orbax/TensorStore's own GCS driver (the
checkpoints folder stays local here), GCS credentials and latency."""
import json
import os
import subprocess
import sys

from moe_jax import paths

REPO = paths.REPO_ROOT


def test_a_pod_run_reads_every_input_from_a_bucket(tmp_path):
  vm, cache, home, cwd = (tmp_path / d for d in ("vm/moe-jax", "cache", "home", "cwd"))
  for d in (vm, cache, home, cwd):
    d.mkdir(parents=True)
  # The working tree as a fresh clone has it (tracked and untracked, not ignored files).
  files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                         capture_output=True).stdout.decode().split("\0")
  for rel in filter(None, files):
    if os.path.isfile(os.path.join(REPO, rel)):
      (vm / rel).parent.mkdir(parents=True, exist_ok=True)
      (vm / rel).write_bytes(open(os.path.join(REPO, rel), "rb").read())
  assert not (vm.parent / "shared").exists()
  env = {"PATH": os.environ["PATH"], "HOME": str(home), "TMPDIR": str(cache), "XDG_CACHE_HOME": str(cache),
         "MPLCONFIGDIR": str(cache / "matplotlib"), "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1",
         "KERAS_HOME": str(cache / "keras"), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(vm)}
  proc = subprocess.run([sys.executable, str(vm / "tests" / "clean_vm_rehearsal.py"), paths.data_dir(), str(cache)],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["moe_jax"] == str(vm), "the run must use the fresh copy's code"
  assert result["codes"] == {"train": 0, "eval": 0, "infer": 0}, proc.stderr[-3000:]
  assert result["touched"] == [], "read or written locally outside the checkout, Python and the cache"
  assert result["orbax_steps"] == ["3"]
  run = set(result["run"])
  for name in ("run.json", "frozen_source.json", "ids.json", "train_metrics.jsonl", "eval/zero_shot.json",
               "infer/predictions.jsonl"):
    assert name in run, name
  assert any(p.startswith("tensorboard/train/events.out.tfevents") for p in run)
  assert "initial weights from ram://bucket/ckpt/t5_tiny" in proc.stdout
  assert "wrote 2 predictions to ram://bucket/runs/mov/infer/predictions.jsonl" in proc.stdout
  assert os.listdir(cwd) == [] and os.listdir(home) == [], "the working directory and HOME stay empty"
