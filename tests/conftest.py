"""Shared test set-up: offline HF, quiet TF, and reference-model factories."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402




@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
  """One small trained run (4 MoV steps, checkpoints 2 and 4) shared by the
  bad-input and resume tests; tests copy it before changing anything. Its final
  parameters are in tests.inprocess.FINAL_PARAMS[str(run)]."""
  from tests.inprocess import train_in_process
  run = tmp_path_factory.mktemp("small_run") / "run"
  assert train_in_process(run, capture=True) == 0
  return run
