"""Launch scripts print the exact commands with --dry-run and reject bad options."""
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
  return subprocess.run(["bash", os.path.join(REPO, "launch", script), *args], capture_output=True, text=True)


def test_tpu_pod_dry_run_runs_the_train_command_on_all_workers():
  out = _run("tpu_pod.sh", "--name=p", "--zone=z", "--type=v4-64", "--repo=https://example.invalid/r.git",
             "--dry-run", "--", "--gin_file=gin_configs/mov_t5_3b.gin", "--gin.MODEL_DIR=gs://b/run")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert lines[0].startswith("gcloud compute tpus tpu-vm create p") and "v4-64" in lines[0]
  assert "--worker=all" in lines[2] and "python -m moe_jax.train --gin_file=gin_configs/mov_t5_3b.gin" in lines[2]
  assert _run("tpu_pod.sh", "--dry-run", "--", "x").returncode == 2


def test_slurm_dry_run_prints_the_batch_script():
  out = _run("slurm_gpu.sh", "--nodes=4", "--gpus-per-node=8", "--dry-run", "--",
             "--gin_file=gin_configs/mov_t5_3b.gin")
  assert out.returncode == 0, out.stderr
  assert "#SBATCH --nodes=4" in out.stdout and "srun env MOE_JAX_DISTRIBUTED=1" in out.stdout
  assert _run("slurm_gpu.sh", "--bogus").returncode == 2
