"""The train steps both multi-device scripts take: the trainer's own code path."""
import jax

from moe_jax import partitioning, trainer
from moe_jax.peft.trainable import trainable_mask


def run(model, params, axes, batches, mesh, learning_rate):
  """Places params by the logical-axis rules on `mesh` and takes one step per batch.
  Returns (losses, updated trainable params as placed)."""
  part = partitioning.Partitioner(mesh)
  tr, fr = trainer.split_params(params, trainable_mask(params))
  tr_axes, fr_axes = trainer._subtree(axes, tr), trainer._subtree(axes, fr)
  step = trainer.TrainStep(model, part, tr_axes, learning_rate=learning_rate)
  losses = []
  with part.context():
    tr = jax.device_put(tr, part.param_shardings(tr_axes))
    fr = jax.device_put(fr, part.param_shardings(fr_axes))
    opt = step.init_opt_state(tr)
    for i, b in enumerate(batches):
      tr, opt, m = step(tr, fr, opt, part.shard_batch(b), jax.random.key(i))
      losses.append(float(m["loss"]))
  return losses, tr
