"""`python -m moe_jax.train`, except that the process sends itself a second
SIGTERM right after the stop save has started (orbax writes in the
background): the timing a person or a scheduler sending two signals could
hit, made certain.

    python stop_during_save.py --gin_file=... --gin.KEY=VALUE ...
"""
import os
import signal
import sys

from moe_jax import checkpoints, gin_utils, preemption, train

_save = checkpoints.Checkpoints.save


def save(self, step, state, force=False):
  _save(self, step, state, force=force)
  stop = preemption.active()
  if stop is not None and stop.saving:
    print(f"sending the second SIGTERM during the save of step {step}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)


checkpoints.Checkpoints.save = save
gin_utils.exit_process(gin_utils.run(train.main, sys.argv[1:]))
