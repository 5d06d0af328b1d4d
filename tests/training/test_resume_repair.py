"""Crashes that damage a run directory still resume, bit for bit.

A SIGKILL during the append to train_metrics.jsonl leaves a torn last line; a
damaged newest checkpoint (a missing or truncated array file, an empty step
directory) must not block the resume while an older one is intact. The
directory states are made by hand, exactly as such a crash leaves them, from a
copy of one uninterrupted 4-step run (`small_run`, checkpoints 2 and 4); the
resumed run must end with the same parameters and optimizer state."""
import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from tests.inprocess import final_state, train_in_process


def _assert_same_state(a, b):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb and len(la) > 100
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _steps(path):
  return [json.loads(l)["step"] for l in open(path)]


def test_torn_metrics_line_is_dropped_and_the_run_resumes(small_run, tmp_path, capsys):
  run = tmp_path / "run"
  shutil.copytree(small_run, run)
  # Killed during step 3's append, after the step-2 checkpoint: step 4 never happened.
  shutil.rmtree(run / "checkpoints" / "4")
  log = run / "train_metrics.jsonl"
  lines = open(log).read().splitlines(keepends=True)
  assert _steps(log) == [1, 2, 3, 4]
  log.write_text(lines[0] + lines[1] + lines[2][:len(lines[2]) // 2])  # no newline: torn
  capsys.readouterr()
  assert train_in_process(run) == 0
  out = capsys.readouterr()
  assert "train_metrics.jsonl:3: dropped an unreadable line" in out.err
  assert "resuming" in out.out and "from step 2" in out.out
  assert _steps(log) == [1, 2, 3, 4]
  _assert_same_state(final_state(run), final_state(small_run))


def _damage(step_dir, how):
  if how == "empty step directory":
    shutil.rmtree(step_dir)
    os.mkdir(step_dir)
    return
  # The largest data file of orbax's OCDBT store holds the arrays (the trained
  # adapters and their optimizer state: checkpoints are PEFT-only); the step's
  # metadata stays intact, so only the full restore can notice.
  files = sorted(glob.glob(os.path.join(step_dir, "default", "ocdbt.process_0", "d", "*")), key=os.path.getsize)
  assert files and os.path.getsize(files[-1]) > 20_000, files
  if how == "missing array file":
    os.remove(files[-1])
  else:  # truncated array file
    with open(files[-1], "r+b") as f:
      f.truncate(os.path.getsize(files[-1]) // 2)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax, failed read
@pytest.mark.parametrize("how", ["missing array file", "truncated array file", "empty step directory"])
def test_damaged_latest_checkpoint_falls_back_and_is_moved_aside(small_run, tmp_path, capsys, how):
  run = tmp_path / "run"
  shutil.copytree(small_run, run)
  _damage(run / "checkpoints" / "4", how)
  damaged_files = sorted(os.listdir(run / "checkpoints" / "4"))
  capsys.readouterr()
  assert train_in_process(run) == 0
  out = capsys.readouterr()
  assert "warning: checkpoint step 4 is damaged (" in out.err
  assert f"moved it to {run / 'damaged_checkpoints' / '4'}" in out.err
  assert "from step 2" in out.out
  # Kept, not deleted; the step was redone from step 2.
  assert sorted(os.listdir(run / "damaged_checkpoints" / "4")) == damaged_files
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
  assert _steps(run / "train_metrics.jsonl") == [1, 2, 3, 4]
  _assert_same_state(final_state(run), final_state(small_run))


def test_no_loadable_checkpoint_is_an_error_that_changes_nothing(small_run, tmp_path, capsys):
  from tests.inprocess import snapshot
  run = tmp_path / "run"
  shutil.copytree(small_run, run)
  for step in ("2", "4"):
    _damage(run / "checkpoints" / step, "empty step directory")
  before = snapshot(run)
  capsys.readouterr()
  assert train_in_process(run, "--gin.TRAIN_STEPS=6") == 2
  err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "no loadable checkpoint: step 4: " in err[0] and "step 2: " in err[0]
  assert snapshot(run) == before
