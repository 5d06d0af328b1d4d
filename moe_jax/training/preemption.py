"""Stop signals: SIGTERM (spot/preemptible TPUs, maintenance, Slurm, Kubernetes)
and SIGINT (Ctrl-C) end a run cleanly instead of where it stands.

In training the first signal only sets a flag. After each step every process
asks `StopSignals.agreed()`, one tiny all-gather of the flags, so all hosts
see a signal that reached any one of them at the same step; they save a
checkpoint there and exit with `EXIT_CODE`. A second signal while that save
runs exits at once: orbax writes a step into a temporary folder and renames
it when complete, so an interrupted save leaves no step behind and the next
run resumes from the newest complete one.

Outside training (eval, infer, export) a signal raises `Stopped` where the
program stands; the files written through `fs.write_text`/`write_bytes`
appear whole or not at all.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional

import jax
from jax.experimental import multihost_utils
import numpy as np


# EX_TEMPFAIL (sysexits.h): stopped by a signal after saving; rerun the same
# command to resume. Launchers relaunch on it and treat other codes as failures.
EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
  """A stop signal ended the program (after saving, in training)."""

  def __init__(self, signame: str, step: Optional[int] = None, saved: Optional[int] = None):
    self.signame, self.step, self.saved = signame, step, saved
    if saved is not None:
      msg = (f"stopped by {signame} at step {step}: saved checkpoint step {saved}; "
             f"rerun the same command to resume (exit code {EXIT_CODE})")
    else:
      msg = f"stopped by {signame}; nothing half-written (exit code {EXIT_CODE})"
    super().__init__(msg)


def _name(signum: int) -> str:
  return signal.Signals(signum).name


class StopSignals:
  """Installs cooperative handlers for SIGTERM and SIGINT (main thread only)
  while active; restores the previous ones on exit."""

  def __init__(self):
    self.received: Optional[str] = None
    self.saving = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}
    return False

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and self.saving:
      # The second signal during the stop save: leave now. Orbax's save is
      # atomic (temporary folder, renamed when complete).
      print(f"{_name(signum)} again during the save: exiting without it", file=sys.stderr, flush=True)
      os._exit(EXIT_CODE)  # pylint: disable=protected-access
    if self.received is None:
      self.received = _name(signum)
      print(f"{self.received} received: stopping after this step (a checkpoint is saved first)",
            file=sys.stderr, flush=True)

  def agreed(self) -> Optional[str]:
    """The signal's name if any process received one, else None; the same
    answer on every process (all processes must call it at the same points)."""
    if jax.process_count() == 1:
      return self.received
    mine = np.int32(0 if self.received is None else _code(self.received))
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    first = int(everyone.max())
    return None if first == 0 else _signame(first)


def _code(name: str) -> int:
  return int(signal.Signals[name])


def _signame(code: int) -> str:
  return signal.Signals(code).name


_active: Optional[StopSignals] = None


def active() -> Optional[StopSignals]:
  """The training run's handlers, if a run is in progress (the evaluator polls them)."""
  return _active


class training:  # pylint: disable=invalid-name
  """`with preemption.training() as stop:` the trainer's cooperative handlers."""

  def __enter__(self) -> StopSignals:
    global _active
    _active = StopSignals().__enter__()
    return _active

  def __exit__(self, *exc):
    global _active
    _active.__exit__(*exc)
    _active = None
    return False


class raising:  # pylint: disable=invalid-name
  """Entry points other than training: a signal raises `Stopped` where the
  program stands (SIGINT's KeyboardInterrupt, and SIGTERM the same way)."""

  def __enter__(self):
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._raise)
    return self

  @staticmethod
  def _raise(signum, frame):
    del frame
    raise Stopped(_name(signum))

  def __exit__(self, *exc):
    for s, h in self._previous.items():
      signal.signal(s, h)
    return False
