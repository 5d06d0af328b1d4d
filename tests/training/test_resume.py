"""Resuming a run equals never having stopped, bit for bit.

`small_run` trains 4 steps straight (checkpoints at 2 and 4). A copy cut back to
what a run stopped after step 2 leaves (checkpoint 2, log rows 1-2) is resumed
to step 4: it must log the same losses at steps 3 and 4 (step 3's loss is the
restored parameters on the third batch, so it needs the data order; step 4's
follows an update that needs the restored optimizer state) and end with the
same parameters, trainable and frozen, and optimizer state.

The final parameters are what the trainer hands its evaluator after the last
step, so the comparison does not depend on what a checkpoint stores; the
optimizer state is read from the final checkpoint."""
import json
import shutil

import jax
import numpy as np
import pytest

from tests.inprocess import FINAL_PARAMS, final_state, train_in_process


def _rows(run):
  return {r["step"]: r for r in map(json.loads, open(run / "train_metrics.jsonl"))}


def _assert_same_tree(a, b, min_leaves):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb and len(la) >= min_leaves
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_stopped_after_two_steps_and_resumed_to_four_equals_four_straight(small_run, tmp_path, capsys):
  run = tmp_path / "run"
  shutil.copytree(small_run, run)
  shutil.rmtree(run / "checkpoints" / "4")
  log = run / "train_metrics.jsonl"
  log.write_text("".join(open(log).readlines()[:2]))
  assert sorted(_rows(run)) == [1, 2]
  capsys.readouterr()
  assert train_in_process(run, capture=True) == 0
  out, err = capsys.readouterr()
  assert f"resuming {run} from step 2" in out
  # the data continue from the position saved with step 2, not replayed
  assert f"input position: restored after 2 batches from {run}/checkpoints/2/input_position" in err
  _assert_same_run(small_run, run)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_damaged_input_position_replays_the_data_and_ends_the_same(small_run, tmp_path, capsys,
                                                                                damage):
  run = tmp_path / "run"
  shutil.copytree(small_run, run)
  shutil.rmtree(run / "checkpoints" / "4")
  position = run / "checkpoints" / "2" / "input_position"
  if damage == "missing":  # a checkpoint written before positions were saved
    shutil.rmtree(position)
  else:  # a save cut short
    data = next(position.glob("*.data-*"))
    data.write_bytes(data.read_bytes()[:25])
  log = run / "train_metrics.jsonl"
  log.write_text("".join(open(log).readlines()[:2]))
  capsys.readouterr()
  assert train_in_process(run, capture=True) == 0
  err = capsys.readouterr().err
  why = ("checkpoint {run}/checkpoints/2 holds no input position" if damage == "missing"
         else "its saved position was damaged").format(run=run)
  assert f"input position: {why}: replaying 8 rows (2 batches of 4)" in err
  if damage == "truncated":
    assert f"moved it to {run}/damaged_checkpoints/2.input_position" in err
    assert len(list((run / "damaged_checkpoints" / "2.input_position").iterdir())) == 3
  _assert_same_run(small_run, run)


def _assert_same_run(small_run, run):
  straight, resumed = _rows(small_run), _rows(run)
  assert sorted(straight) == sorted(resumed) == [1, 2, 3, 4]
  for step in (3, 4):  # the steps the resumed run computed itself
    for k in ("loss", "cross_entropy", "accuracy"):
      assert straight[step][k] == resumed[step][k], (step, k, straight[step][k], resumed[step][k])
  assert len({r["loss"] for r in straight.values()}) == 4
  assert all({"loss", "learning_rate", "tokens_per_sec"} <= set(r) for r in resumed.values())
  (step_a, params_a), (step_b, params_b) = FINAL_PARAMS[str(small_run)], FINAL_PARAMS[str(run)]
  assert step_a == step_b == 4
  _assert_same_tree(params_a, params_b, min_leaves=80)
  sa, sb = final_state(small_run), final_state(run)
  _assert_same_tree(sa["opt_state"], sb["opt_state"], min_leaves=10)
  assert int(sb["step"]) == 4 and sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]
  assert any((run / "tensorboard" / "train").iterdir())
