"""The train steps both multi-device scripts take: the trainer's own code path."""
import jax
import numpy as np

from moe_jax import partitioning, trainer
from moe_jax.peft.trainable import trainable_mask

# After `run`: how often the step compiled and whether the trained parameters
# and optimizer state kept the placements they entered the first step with.
LAST = {}


def run(model, params, axes, batches, mesh, learning_rate):
  """Places params by the logical-axis rules on `mesh` and takes one step per batch,
  each host feeding only its rows. Returns (losses, updated trainable params as
  placed, per step the first tokens of the rows this host fed and of those its
  devices hold,
  the shardings the trainable and frozen params were placed with before the
  first step, the last global batch as placed)."""
  part = partitioning.Partitioner(mesh)
  tr, fr = trainer.split_params(params, trainable_mask(params))
  tr_axes, fr_axes = trainer.subtree(axes, tr), trainer.subtree(axes, fr)
  step = trainer.TrainStep(model, part, tr_axes, learning_rate=learning_rate)
  losses, host_rows = [], []
  with part.context():
    tr = jax.device_put(tr, part.param_shardings(tr_axes))
    fr = jax.device_put(fr, part.param_shardings(fr_axes))
    placed = jax.tree_util.tree_map(lambda x: x.sharding, {"trainable": tr, "frozen": fr})
    opt = step.init_opt_state(tr)
    opt_placed = [x.sharding for x in jax.tree_util.tree_leaves(opt)]
    for i, b in enumerate(batches):
      n = len(next(iter(b.values())))
      first, rows = part.host_batch_rows(n)  # this host feeds only its own rows
      local = {k: v[first:first + rows] for k, v in b.items()}
      sharded = part.shard_batch(local, n)
      host_rows.append({"fed": [int(v) for v in local["encoder_input_tokens"][:, 0]],
                        "held": sorted({int(v) for sh in sharded["encoder_input_tokens"].addressable_shards
                                        for v in np.asarray(sh.data)[:, 0]})})
      tr, opt, m = step(tr, fr, opt, sharded, jax.random.key(i))
      losses.append(float(m["loss"]))
  LAST.update(compiles=step.jitted(tr, opt)._cache_size(),
              kept_placement=[x.sharding for x in jax.tree_util.tree_leaves(tr)]
              == jax.tree_util.tree_leaves(placed["trainable"])
              and [x.sharding for x in jax.tree_util.tree_leaves(opt)] == opt_placed)
  return losses, tr, host_rows, placed, sharded
