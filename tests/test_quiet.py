"""The entry points' console: seqio's per-task warning dropped, other warnings kept,
TensorFlow's C++ start-up log muted."""
import logging
import os
import subprocess
import sys

from moe_jax import quiet


def test_uncached_dataset_warning_is_dropped_and_others_kept(caplog):
  quiet.install()
  quiet.install()  # idempotent
  logger = logging.getLogger("absl")
  assert logger.filters.count(quiet._FILTER) == 1
  with caplog.at_level(logging.WARNING, logger="absl"):
    logger.warning("Using an uncached FunctionDataset for training is not recommended since ...")
    logger.warning("a real warning")
  assert [r.getMessage() for r in caplog.records] == ["a real warning"]


def test_tensorflow_import_is_muted():
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  code = ("from moe_jax import quiet; quiet.import_tensorflow(); import sys, tensorflow; "
          "print('kept', file=sys.stderr)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode == 0 and out.stderr.strip() == "kept", out.stderr[-2000:]
