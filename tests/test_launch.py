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
  # The planner first, for the slice's type and with the run's own flags.
  assert "-m moe_jax.plan --topology=v4-64 --gin_file=gin_configs/mov_t5_3b.gin --gin.MODEL_DIR=gs://b/run" in lines[0]
  assert lines[1].startswith("gcloud compute tpus tpu-vm create p") and "v4-64" in lines[1]
  assert "--worker=all" in lines[3] and "python -m moe_jax.train --gin_file=gin_configs/mov_t5_3b.gin" in lines[3]
  assert _run("tpu_pod.sh", "--dry-run", "--", "x").returncode == 2
  skipped = _run("tpu_pod.sh", "--name=p", "--zone=z", "--repo=r", "--skip-plan", "--dry-run", "--", "--gin.X=1")
  assert skipped.returncode == 0 and "moe_jax.plan" not in skipped.stdout
  assert skipped.stdout.startswith("gcloud compute tpus tpu-vm create p")


def test_tpu_pod_stops_before_creating_the_slice_when_the_run_does_not_fit():
  # Not a dry run: the planner runs; gcloud is never reached (not installed here
  # either: reaching it would fail with 127, not the planner's 2).
  import sys
  out = _run("tpu_pod.sh", "--name=p", "--zone=z", "--type=v5litepod-4", "--repo=r", f"--python={sys.executable}",
             "--", "--gin_file=gin_configs/demo.gin", "--gin.BATCH_SIZE=65536",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}")
  assert out.returncode == 2, out.stderr[-2000:]
  assert "error: the train step needs" in out.stderr and "not creating the slice" in out.stderr
  assert "gcloud" not in out.stdout + out.stderr


def test_slurm_dry_run_prints_the_batch_script():
  out = _run("slurm_gpu.sh", "--nodes=4", "--gpus-per-node=8", "--dry-run", "--",
             "--gin_file=gin_configs/mov_t5_3b.gin")
  assert out.returncode == 0, out.stderr
  assert "#SBATCH --nodes=4" in out.stdout and "srun env MOE_JAX_DISTRIBUTED=1" in out.stdout
  assert _run("slurm_gpu.sh", "--bogus").returncode == 2
