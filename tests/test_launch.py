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
  assert "--worker=0" in lines[3] and "moe_jax.preflight" in lines[3]  # the pre-flight on worker 0
  assert "--worker=all" in lines[4] and "python -m moe_jax.train --gin_file=gin_configs/mov_t5_3b.gin" in lines[4]
  assert _run("tpu_pod.sh", "--dry-run", "--", "x").returncode == 2
  skipped = _run("tpu_pod.sh", "--name=p", "--zone=z", "--repo=r", "--skip-plan", "--dry-run", "--", "--gin.X=1")
  assert skipped.returncode == 0 and "moe_jax.plan" not in skipped.stdout
  assert skipped.stdout.startswith("gcloud compute tpus tpu-vm create p")


def test_tpu_pod_carries_the_inputs_to_every_worker_and_checks_them_on_worker_0():
  inputs = ["--data-source=parquet:gs://b/pq", "--data-dir=gs://b/kit", "--vocabulary=gs://b/spiece.model",
            "--initial-checkpoint=gs://b/t5-xl"]
  out = _run("tpu_pod.sh", "--name=p", "--zone=z", "--type=v4-64", "--repo=r", *inputs, "--dry-run", "--",
             "--gin_file=gin_configs/mov_t5_3b.gin", "--gin.MODEL_DIR=gs://b/run")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  macros = ("--gin.DATA_SOURCE=parquet:gs://b/pq --gin.DATA_DIR=gs://b/kit --gin.VOCABULARY=gs://b/spiece.model "
            "--gin.INITIAL_CHECKPOINT_PATH=gs://b/t5-xl")
  assert lines[0].endswith("--gin.MODEL_DIR=gs://b/run " + macros)  # the planner here
  preflight, train = lines[3], lines[4]
  assert "--worker=0" in preflight and f"moe_jax.plan --topology=v4-64 --gin_file=gin_configs/mov_t5_3b.gin " \
      f"--gin.MODEL_DIR=gs://b/run {macros} && .venv/bin/python -m moe_jax.preflight" in preflight
  assert preflight.endswith(macros + '"')
  assert "--worker=all" in train and "-m moe_jax.train" in train and train.endswith(macros + '"')
  skipped = _run("tpu_pod.sh", "--name=p", "--zone=z", "--repo=r", "--skip-preflight", "--dry-run", "--", "--gin.X=1")
  assert skipped.returncode == 0 and "moe_jax.preflight" not in skipped.stdout


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
  with_inputs = _run("slurm_gpu.sh", "--dry-run", "--data-dir=/shared/kit", "--vocabulary=gs://b/spiece.model",
                     "--", "--gin_file=gin_configs/mov_t5_3b.gin").stdout.splitlines()
  pre = with_inputs.index("srun --nodes=1 --ntasks=1 .venv/bin/python -m moe_jax.preflight --gin_file=gin_configs/"
                          "mov_t5_3b.gin --gin.DATA_DIR=/shared/kit --gin.VOCABULARY=gs://b/spiece.model || exit 2")
  assert with_inputs[pre + 1].endswith("moe_jax.train --gin_file=gin_configs/mov_t5_3b.gin --gin.DATA_DIR=/shared/kit "
                                       "--gin.VOCABULARY=gs://b/spiece.model")
  assert _run("slurm_gpu.sh", "--bogus").returncode == 2


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# A stand-in for gcloud: logs each call; the train command is stopped by a
# preemption twice (exit 75, the trainer's line), then finishes; the slice is
# READY after the first stop and PREEMPTED after the second.
echo "$*" >> "$FAKE_DIR/calls"
case "$*" in
  *"moe_jax.train"*)
    n=$(( $(cat "$FAKE_DIR/trains" 2>/dev/null || echo 0) + 1 )); echo $n > "$FAKE_DIR/trains"
    if (( n < 3 )); then
      echo "stopped by SIGTERM at step $((n * 7)): saved checkpoint step $((n * 7)); rerun the same command to resume (exit code 75)"
      exit 75
    fi
    echo "step 30/30"; exit 0 ;;
  *describe*)
    n=$(cat "$FAKE_DIR/trains"); if (( n == 1 )); then echo READY; else echo PREEMPTED; fi ;;
esac
exit 0
"""


def _fake_gcloud(tmp_path):
  fake = tmp_path / "gcloud"
  fake.write_text(FAKE_GCLOUD)
  fake.chmod(0o755)
  return dict(os.environ, MOE_JAX_GCLOUD=str(fake), FAKE_DIR=str(tmp_path), MOE_JAX_POLL_SECONDS="0")


def test_tpu_pod_relaunch_resumes_after_each_preemption_until_the_run_finishes(tmp_path):
  env = _fake_gcloud(tmp_path)
  args = ["--name=p", "--zone=z", "--repo=r", "--skip-plan", "--skip-preflight", "--spot", "--relaunch", "--",
          "--gin_file=gin_configs/demo.gin"]
  out = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_pod.sh"), *args], capture_output=True, text=True,
                       env=env, timeout=60)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "relaunch 1: the run was stopped by SIGTERM at step 7; resuming from the newest checkpoint (step 7)" in out.stdout
  assert "slice p is PREEMPTED: recreating it" in out.stdout
  assert "relaunch 2: the run was stopped by SIGTERM at step 14; resuming" in out.stdout
  assert "training finished (relaunches: 2)" in out.stdout
  calls = (tmp_path / "calls").read_text().splitlines()
  creates = [c for c in calls if c.startswith("compute tpus tpu-vm create p")]
  assert len(creates) == 2 and all(c.endswith("--spot") for c in creates)  # the first, and after PREEMPTED
  assert sum("tpu-vm delete p" in c for c in calls) == 1
  assert sum("moe_jax.train --gin_file=gin_configs/demo.gin" in c for c in calls) == 3
  # Another failure is not a preemption: no relaunch.
  (tmp_path / "calls").unlink()
  (tmp_path / "trains").write_text("2")  # the next train "finishes"... as a crash:
  crash = env | {"MOE_JAX_GCLOUD": str(tmp_path / "crash")}
  (tmp_path / "crash").write_text("#!/usr/bin/env bash\ncase \"$*\" in *moe_jax.train*) exit 1;; "
                                  "*describe*) echo READY;; esac\nexit 0\n")
  (tmp_path / "crash").chmod(0o755)
  out = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_pod.sh"), *args], capture_output=True, text=True,
                       env=crash, timeout=60)
  assert out.returncode == 1 and "exit code 1 on a READY slice (not a preemption); not relaunching" in out.stderr


def test_slurm_asks_for_a_signal_before_the_time_limit_and_requeues_on_a_preemption(tmp_path):
  out = _run("slurm_gpu.sh", "--nodes=2", "--signal-seconds=300", "--dry-run", "--", "--gin_file=gin_configs/demo.gin")
  assert out.returncode == 0, out.stderr
  assert "#SBATCH --signal=TERM@300" in out.stdout and "#SBATCH --requeue" in out.stdout
  script = tmp_path / "job.sh"
  script.write_text(out.stdout)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  # srun: the preflight passes; training is stopped twice (exit 75), then finishes.
  (bin_dir / "srun").write_text(
      "#!/usr/bin/env bash\ncase \"$*\" in *moe_jax.train*) n=$(( $(cat $FAKE_DIR/n 2>/dev/null || echo 0) + 1 )); "
      "echo $n > $FAKE_DIR/n; (( n < 3 )) && exit 75; exit 0;; esac\nexit 0\n")
  (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho \"$*\" >> $FAKE_DIR/scontrol\n")
  for f in ("srun", "scontrol"):
    (bin_dir / f).chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_DIR=str(tmp_path), SLURM_JOB_ID="42")
  codes = [subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True).returncode for _ in range(3)]
  assert codes == [0, 0, 0]  # requeued twice (Slurm runs the script again), then done
  assert (tmp_path / "scontrol").read_text().splitlines() == ["requeue 42", "requeue 42"]
