"""Looking up seqio tasks and mixtures with helpful errors."""
import difflib

import seqio


def get_task_or_mixture(name: str):
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    raise KeyError(f"unknown task or mixture {name!r}; close matches: {close} "
                   f"({len(known)} registered; did you `import tasks`?)") from None
