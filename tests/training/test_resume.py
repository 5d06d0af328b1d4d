"""Resuming a run equals never having stopped, bit for bit.

A run trained 2 steps and then resumed to 4 must log the same losses at steps
3 and 4 as a run trained 4 steps straight (step 3's loss is the restored
parameters on the third batch: it needs the data order; step 4's follows an
update that needs the restored optimizer state) and end with the same
parameters, trainable and frozen, and optimizer state.

The final parameters come from the run itself: the trainer hands them to its
evaluator after the last step, so the comparison does not depend on what a
checkpoint stores. The optimizer state is read from the final checkpoint."""
import json

import gin
import jax
import numpy as np

from tests.inprocess import final_state, train_in_process

_FINAL = {}  # model_dir -> the parameters the trainer's last step handed to the evaluator


@gin.configurable
def resume_test_capture(model, params, step, *, run=gin.REQUIRED):
  del model
  _FINAL[run] = (step, jax.device_get(params))


def _train(run, *extra):
  return train_in_process(run, "--gin.EVALUATOR=@resume_test_capture",
                          f"--gin.resume_test_capture.run='{run}'", *extra)


def _rows(run):
  return {r["step"]: r for r in map(json.loads, open(run / "train_metrics.jsonl"))}


def _assert_same_tree(a, b, min_leaves):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb and len(la) >= min_leaves
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_two_steps_then_resume_to_four_equals_four_straight(tmp_path, capsys):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  assert _train(straight) == 0
  assert _train(resumed, "--gin.TRAIN_STEPS=2") == 0
  assert sorted(_rows(resumed)) == [1, 2] and _FINAL[str(resumed)][0] == 2
  capsys.readouterr()
  assert _train(resumed) == 0
  assert f"resuming {resumed} from step 2" in capsys.readouterr().out
  a, b = _rows(straight), _rows(resumed)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  for step in (3, 4):  # the steps the resumed run computed itself
    for k in ("loss", "cross_entropy", "accuracy"):
      assert a[step][k] == b[step][k], (step, k, a[step][k], b[step][k])
  assert len({a[s]["loss"] for s in a}) == 4  # every step saw a different batch or parameters
  assert _FINAL[str(straight)][0] == _FINAL[str(resumed)][0] == 4
  _assert_same_tree(_FINAL[str(straight)][1], _FINAL[str(resumed)][1], min_leaves=80)
  sa, sb = final_state(straight), final_state(resumed)
  _assert_same_tree(sa["opt_state"], sb["opt_state"], min_leaves=10)
  assert int(sb["step"]) == 4
  assert (resumed / "tensorboard" / "train").is_dir()
