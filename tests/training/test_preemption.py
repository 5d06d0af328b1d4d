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
import types

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
  return types.SimpleNamespace(state=final_state(run), losses=_losses(run), run=run)


def _losses(run):
  return [(r["step"], r["loss"]) for r in map(json.loads, open(run / "train_metrics.jsonl"))]


def _interrupt(run, signals, *, extra=(), when, program=("-m", "moe_jax.train")):
  """Starts the trainer; at the first stderr line for which `when(line)` is
  true, sends the next of `signals` (then looks for the next trigger);
  returns (exit code, stderr)."""
  cmd = [sys.executable, *program, *SMALL_TRAIN, *FLAGS, f"--gin.MODEL_DIR={run}", *extra]
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


def test_sigterm_saves_at_the_next_step_and_the_rerun_ends_identical(reference, tmp_path):
  _stop_and_resume(reference, tmp_path / "run", signal.SIGTERM, random.Random(15).randint(3, STEPS - 8))


# SIGINT (Ctrl-C) takes the same path: in the default run through the
# evaluation test below (in process); in a separate process in these trials.


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(6))
def test_repeated_stops_at_random_steps(reference, tmp_path, trial):
  rng = random.Random(1000 + trial)
  _stop_and_resume(reference, tmp_path / "run", rng.choice([signal.SIGTERM, signal.SIGINT]), rng.randint(1, STEPS - 5))


def _stop_and_resume(reference, run, sig, k):
  code, err = _interrupt(run, [sig], when=lambda line, _: line.startswith(f"step {k}/{STEPS} "))
  assert code == preemption.EXIT_CODE, err[-3000:]
  steps = sorted(int(s) for s in os.listdir(run / "checkpoints") if s.isdigit())
  assert len(steps) == 1 and k <= steps[0] <= k + 2, (k, steps)
  saved = steps[0]
  assert (f"stopped by {sig.name} at step {saved}: saved checkpoint step {saved}; rerun the same command "
          f"to resume (exit code {preemption.EXIT_CODE})") in err
  assert _losses(run)[-1][0] == saved  # the log is flushed up to the saved step
  assert train_in_process(run, *FLAGS) == 0  # the same command resumes
  _same(final_state(run), reference.state)
  assert _losses(run) == reference.losses


@pytest.mark.slow  # 40 s; the default run keeps the SIGTERM case (make test-all runs this)
def test_a_second_signal_during_the_stop_save_exits_at_once_and_the_rerun_ends_identical(reference, tmp_path):
  """Periodic saves at 7, 14, ...; the first SIGTERM at step 8, the second
  as soon as the stop save has been handed to orbax (the process sends it to
  itself: tests/training/stop_during_save.py). The process leaves at once;
  whatever orbax had finished is complete (its atomic rename), and the rerun
  resumes from the newest complete step and ends identical."""
  run = tmp_path / "run"
  code, err = _interrupt(run, [signal.SIGTERM], extra=["--gin.CHECKPOINT_PERIOD=7"],
                         when=lambda line, _: line.startswith(f"step 8/{STEPS} "),
                         program=[os.path.join(REPO, "tests", "training", "stop_during_save.py")])
  assert code == preemption.EXIT_CODE, err[-3000:]
  assert "sending the second SIGTERM during the save of step" in err
  assert "SIGTERM again during the save: exiting without it" in err, err[-3000:]
  assert "stopped by SIGTERM at step 8" not in err  # it did not wait for the save to finish
  assert train_in_process(run, *FLAGS, "--gin.CHECKPOINT_PERIOD=7") == 0
  _same(final_state(run), reference.state)
  assert [l for _, l in _losses(run)] == [l for _, l in reference.losses]


EVAL = ["--gin.EVALUATOR=@ZeroShotEvaluator()", "--gin.EVAL_DATASETS=['super_glue_cb']",
        "--gin.EVAL_MAX_EXAMPLES_PER_TEMPLATE=1", "--gin.EVAL_BATCH_SIZE=4",
        "--gin.EVAL_FEATURE_LENGTHS={'inputs': 128, 'targets': 8}"]


def _signal_at_template(monkeypatch, n, sig=signal.SIGTERM):
  """A real signal to this process just before the n-th template is scored."""
  from moe_jax import evaluation
  seen, call = [], evaluation.EvalProgress.__call__

  def progress(self, template):
    seen.append(template)
    if len(seen) == n:
      os.kill(os.getpid(), sig)
    return call(self, template)
  monkeypatch.setattr(evaluation.EvalProgress, "__call__", progress)
  return seen


@pytest.mark.slow  # 40 s; the default run keeps the SIGTERM case (make test-all runs this)
def test_ctrl_c_during_the_evaluation_stops_it_saves_and_the_rerun_ends_identical(reference, tmp_path,
                                                                                  monkeypatch, capsys):
  run = tmp_path / "run"
  seen = _signal_at_template(monkeypatch, 2, signal.SIGINT)
  assert train_in_process(run, *FLAGS, *EVAL, "--gin.EVAL_PERIOD=3") == preemption.EXIT_CODE
  assert len(seen) == 2  # the signal came as template 2 was about to be scored: stopped there
  assert "stopped by SIGINT at step 3: saved checkpoint step 3" in capsys.readouterr().err
  assert sorted(os.listdir(run / "checkpoints")) == ["3"] and not (run / "eval").exists()
  monkeypatch.undo()
  assert train_in_process(run, *FLAGS) == 0
  _same(final_state(run), reference.state)


def test_a_signal_outside_training_stops_with_nothing_half_written(reference, tmp_path, monkeypatch, capsys):
  """`python -m moe_jax.eval` (in process): SIGTERM mid-evaluation ends it with
  exit 75 and one line; no report or temporary file is left."""
  from tests.inprocess import MODEL_FILES, run_entry
  run = reference.run
  _signal_at_template(monkeypatch, 2)
  out = tmp_path / "eval_out"
  rc = run_entry("eval", ["--gin_file=gin_configs/runs/eval.gin", *MODEL_FILES, f"--gin.CHECKPOINT_PATH={run}/checkpoints",
                          f"--gin.MODEL_DIR={out}", *[f for f in EVAL if "EVALUATOR" not in f]])
  err = capsys.readouterr().err
  assert rc == preemption.EXIT_CODE, err[-2000:]
  assert f"stopped by SIGTERM; nothing half-written (exit code {preemption.EXIT_CODE})" in err
  written = [os.path.join(r, f) for r, _, fs_ in os.walk(out) for f in fs_] if out.exists() else []
  assert not any(f.endswith(".tmp") or "zero_shot" in f for f in written), written
