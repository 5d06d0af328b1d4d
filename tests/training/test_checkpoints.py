"""Orbax checkpoints: keep-N, restore, atomicity under SIGKILL, partial restore."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import checkpoints


def _state(step, scale=1.0):
  return {"trainable": {"a": {"w": jnp.full((3, 2), scale)}}, "frozen": {"b": {"k": jnp.arange(4.0) + step}},
          "opt_state": {"m": jnp.full((2,), -scale)}, "step": np.int64(step), "batches_seen": np.int64(10 * step)}


def test_keep_n_and_restore(tmp_path):
  ckpts = checkpoints.Checkpoints(str(tmp_path / "ckpt"), keep=2)
  for step in (1, 2, 3):
    ckpts.save(step, _state(step, float(step)), force=True)
  assert ckpts.latest_step() == 3
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["2", "3"]
  for step in (2, 3):  # every part of the state comes back from its own step
    restored = ckpts.restore(step, jax.eval_shape(lambda: _state(0)))
    np.testing.assert_array_equal(restored["trainable"]["a"]["w"], np.full((3, 2), float(step)))
    np.testing.assert_array_equal(restored["frozen"]["b"]["k"], np.arange(4.0) + step)
    np.testing.assert_array_equal(restored["opt_state"]["m"], np.full((2,), -float(step)))
    assert (int(restored["step"]), int(restored["batches_seen"])) == (step, 10 * step)
  ckpts.close()
  params = checkpoints.load_params(str(tmp_path / "ckpt"))  # newest step, trainable + frozen
  assert set(params) == {"a", "b"}
  np.testing.assert_array_equal(params["a"]["w"], np.full((3, 2), 3.0))
  np.testing.assert_array_equal(params["b"]["k"], np.arange(4.0) + 3)


def test_killed_save_leaves_previous_checkpoint_loadable(tmp_path):
  # A child saves step 1, then a large step 2 and is SIGKILLed while step 2 is
  # being written (its temporary directory exists): step 1 must stay the latest.
  child = textwrap.dedent(f"""
      import sys, jax.numpy as jnp, numpy as np
      from moe_jax import checkpoints
      c = checkpoints.Checkpoints({str(tmp_path / 'ckpt')!r}, keep=3)
      small = {{"trainable": {{"w": jnp.ones((4,))}}, "frozen": {{}}, "step": np.int64(1)}}
      c.save(1, small, force=True)
      print("saved 1", flush=True)
      big = {{"trainable": {{f"w{{i}}": jnp.ones((4_000_000,)) for i in range(40)}}, "frozen": {{}},
              "step": np.int64(2)}}
      c.save(2, big, force=True)
      print("saved 2", flush=True)
  """)
  proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.stdout.readline().strip() == "saved 1"
  deadline = time.time() + 120
  while time.time() < deadline:
    if any(name.startswith("2") and name != "2" for name in os.listdir(tmp_path / "ckpt")):
      break
    time.sleep(0.005)
  else:
    proc.kill()
    pytest.fail("the child never started writing step 2")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert "2" not in os.listdir(tmp_path / "ckpt"), "step 2 finished before the kill; enlarge it"
  ckpts = checkpoints.Checkpoints(str(tmp_path / "ckpt"))
  assert ckpts.latest_step() == 1
  ckpts.close()
  np.testing.assert_array_equal(checkpoints.load_params(str(tmp_path / "ckpt"))["w"], np.ones(4))


def test_partial_restore_keeps_new_adapters_and_names_mismatches():
  target = {"enc": {"kernel": jnp.zeros((2, 3))}, "enc_adapter": {"v": jnp.ones((3,))}}
  params, fresh = checkpoints.partial_restore(target, {"enc": {"kernel": np.full((2, 3), 7.0)}}, "src")
  np.testing.assert_array_equal(params["enc"]["kernel"], np.full((2, 3), 7.0))
  assert fresh == ["enc_adapter/v"]
  with pytest.raises(checkpoints.CheckpointError, match=r"src: parameter enc/kernel has shape \(3, 2\)"):
    checkpoints.partial_restore(target, {"enc": {"kernel": np.zeros((3, 2))}}, "src")
  with pytest.raises(checkpoints.CheckpointError, match="not in the model.*dec/kernel"):
    checkpoints.partial_restore(target, {"dec": {"kernel": np.zeros((2, 3))}}, "src")


def test_load_params_errors_name_the_path(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
    checkpoints.load_params(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoints.CheckpointError, match="empty: no moe-jax checkpoint"):
    checkpoints.load_params(str(tmp_path / "empty"))
