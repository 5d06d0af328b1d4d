"""moe-jax's errors, one hierarchy for the whole package, and the exit status
each entry point gives them (`exit_code`). A leaf: it imports nothing of moe-jax.

  MoeJaxError
    ConfigurationError, DataError (UnavailableDataError), CheckpointError
      (FrozenSourceError): bad input, exit 2, one line `error: ...`
    TrainingError: the run failed (divergence), exit 1

The input errors also subclass ValueError, as they always have, so code that
catches ValueError keeps working.
"""

BAD_INPUT_EXIT = 2
FAILED_EXIT = 1


class MoeJaxError(Exception):
  """Anything moe-jax raises on purpose."""


class ConfigurationError(MoeJaxError, ValueError):
  """A gin setting, flag or macro that cannot work."""


class DataError(MoeJaxError, ValueError):
  """Malformed or missing data, with the file (and line, field) named."""


class UnavailableDataError(DataError):
  """The configured data source cannot provide a dataset (or a P3 task)."""


class CheckpointError(MoeJaxError, ValueError):
  """A checkpoint (moe-jax, HF or T5X) that is missing, damaged or does not fit the model."""


class TrainingError(MoeJaxError, RuntimeError):
  """The run itself failed (e.g. a non-finite loss)."""


def exit_code(e: BaseException) -> int:
  """The entry points' exit status for an error of ours or a bad-input builtin."""
  if isinstance(e, TrainingError):
    return FAILED_EXIT
  if isinstance(e, (MoeJaxError, ValueError, KeyError, OSError)):
    return BAD_INPUT_EXIT
  return FAILED_EXIT
