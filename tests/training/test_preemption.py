"""Stop signals in real processes: SIGTERM (a preempted TPU VM, Slurm,
Kubernetes) or SIGINT (Ctrl-C) to `python -m moe_jax.train` saves a checkpoint
at the next step and exits with preemption.EXIT_CODE; rerunning the same
command resumes there and ends bit-identical to a run never interrupted."""
import json
import os
import random
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from moe_jax import preemption
from tests.inprocess import SMALL_TRAIN, final_state, train_in_process

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 30
# CHECKPOINT_PERIOD beyond the run: only the stop (and the last step) save.
FLAGS = [f"--gin.TRAIN_STEPS={STEPS}", "--gin.CHECKPOINT_PERIOD=1000", "--gin.LOG_PERIOD=1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run: its final state and logged losses."""
  run = tmp_path_factory.mktemp("reference") / "run"
  assert train_in_process(run, *FLAGS) == 0
  return final_state(run), _losses(run)


def _losses(run):
  return [(r["step"], r["loss"]) for r in map(json.loads, open(run / "train_metrics.jsonl"))]


def _interrupt(run, signals, *, extra=(), when):
  """Starts the trainer; at the first stderr line for which `when(line)` is
  true, sends the next of `signals` (then looks for the next trigger);
  returns (exit code, stderr)."""
  cmd = [sys.executable, "-m", "moe_jax.train", *SMALL_TRAIN, *FLAGS, f"--gin.MODEL_DIR={run}", *extra]
  proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines, pending = [], list(signals)
  try:
    for line in proc.stderr:
      lines.append(line)
      if pending and when(line, len(pending)):
        proc.send_signal(pending.pop(0))
    proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, "".join(lines)


def _same(a, b):
  leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_at_the_next_step_and_the_rerun_ends_identical(reference, tmp_path, sig):
  k = random.Random(sig).randint(3, STEPS - 8)
  run = tmp_path / "run"
  code, err = _interrupt(run, [sig], when=lambda line, _: line.startswith(f"step {k}/{STEPS} "))
  assert code == preemption.EXIT_CODE, err[-3000:]
  steps = sorted(int(s) for s in os.listdir(run / "checkpoints") if s.isdigit())
  assert len(steps) == 1 and k <= steps[0] <= k + 2, (k, steps)
  saved = steps[0]
  assert (f"stopped by {sig.name} at step {saved}: saved checkpoint step {saved}; rerun the same command "
          f"to resume (exit code {preemption.EXIT_CODE})") in err
  assert _losses(run)[-1][0] == saved  # the log is flushed up to the saved step
  assert train_in_process(run, *FLAGS) == 0  # the same command resumes
  state, losses = reference
  _same(final_state(run), state)
  assert _losses(run) == losses


def test_a_second_signal_during_the_stop_save_exits_at_once_and_the_rerun_ends_identical(reference, tmp_path):
  """Periodic saves at 7, 14, ...; the first SIGTERM at step 8, the second as
  the stop save starts: that step is not left half-written, the rerun
  resumes from step 7."""
  run = tmp_path / "run"

  def trigger(line, left):
    return line.startswith(f"step 8/{STEPS} ") if left == 2 else line.startswith("saving checkpoint step")
  code, err = _interrupt(run, [signal.SIGTERM, signal.SIGTERM], extra=["--gin.CHECKPOINT_PERIOD=7"], when=trigger)
  assert code == preemption.EXIT_CODE, err[-3000:]
  assert "SIGTERM again during the save: exiting without it" in err, err[-3000:]
  steps = sorted(int(s) for s in os.listdir(run / "checkpoints") if s.isdigit())
  assert steps == [7], steps  # the interrupted stop save left no step
  assert train_in_process(run, *FLAGS, "--gin.CHECKPOINT_PERIOD=7") == 0
  state, losses = reference
  _same(final_state(run), state)
  assert [l for _, l in _losses(run)] == [l for _, l in losses]
