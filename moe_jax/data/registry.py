"""Looking up seqio tasks and mixtures with helpful errors."""
import difflib

import seqio


# Mixtures registered when first named (name -> a function registering it):
# T0+ and T0++ re-register datasets the other suites define differently.
LAZY: dict = {}


def ensure(name: str) -> None:
  if name in LAZY and name not in seqio.MixtureRegistry.names():
    LAZY[name]()


def get_task_or_mixture(name: str):
  ensure(name)
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names()) + list(LAZY)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    raise KeyError(f"unknown task or mixture {name!r}; close matches: {close} "
                   f"({len(known)} registered; did you set MIXTURE_OR_TASK_MODULE or CUSTOM_TASKS?)") from None
