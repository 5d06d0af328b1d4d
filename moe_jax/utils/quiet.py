"""A quiet console for the entry points: only what concerns the user.

Import this before TensorFlow is imported. It silences TensorFlow's C++
log (oneDNN notice, "could not find cuda drivers", cuInit on a machine
without a GPU; TensorFlow only feeds data here, and its errors still surface
as Python exceptions) and seqio's "uncached FunctionDataset" warning, emitted
once per task (100+ times for the T0 mixture: tasks are rendered on the fly
by design). Other warnings are kept. Setting TF_CPP_MIN_LOG_LEVEL yourself
wins (and then TensorFlow's import is not muted either).
"""
from __future__ import annotations

import logging
import os
import sys

_USER_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Messages (prefixes) that are expected by design, not the user's business.
_SILENCED = (
    "Using an uncached FunctionDataset",
)


class _Drop(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    try:
      msg = record.getMessage()
    except Exception:  # pylint: disable=broad-except  a malformed record is not ours to drop
      return True
    return not msg.startswith(_SILENCED)


_FILTER = _Drop()


def install() -> None:
  """Adds the filter to absl's logger (seqio logs through absl). Idempotent."""
  logger = logging.getLogger("absl")
  if _FILTER not in logger.filters:
    logger.addFilter(_FILTER)


def import_tensorflow() -> None:
  """Imports TensorFlow with the process's stderr (fd 2) muted: TF 2.21 logs its
  start-up notices through absl C++ before TF_CPP_MIN_LOG_LEVEL applies. An
  import error still raises (and prints) after stderr is restored."""
  if "tensorflow" in sys.modules or _USER_LEVEL:
    return
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    # TensorFlow loads only when this runs
    import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


install()
