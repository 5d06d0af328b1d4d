"""One of two processes joined by jax.distributed on localhost (1 CPU device each).

    python two_process_train.py PORT PROCESS_ID   # run twice, ids 0 and 1
    python two_process_train.py single            # the same steps in one process

Each process feeds only its rows of the global batches (its half with mesh
(2, 1); all rows with mesh (1, 2), where the model axis spans the two
processes). Prints the losses, the parameters before and after training and
the rows each host fed and held, as JSON, to $TWO_PROCESS_OUT.<process id or "single">.
"""
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

if sys.argv[1] != "single":
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))

import sharded_steps  # noqa: E402  (beside this script)
from moe_jax import partitioning, trainer  # noqa: E402
from moe_jax.models import T5Config, build_model  # noqa: E402
from moe_jax.peft import MoV  # noqa: E402
from moe_jax.peft.trainable import trainable_mask  # noqa: E402

cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_encoder_layers=1,
               num_decoder_layers=1)
model = build_model(cfg, MoV(num_experts=4))
rng = np.random.RandomState(0)  # same seed everywhere: every process holds the global batch
batches = [{"encoder_input_tokens": rng.randint(2, 64, (4, 10)).astype(np.int32),
            "decoder_input_tokens": rng.randint(2, 64, (4, 5)).astype(np.int32),
            "decoder_target_tokens": rng.randint(2, 64, (4, 5)).astype(np.int32)} for _ in range(3)]
for b in batches:  # row r starts with token 2 + r: which rows a host holds is visible
  b["encoder_input_tokens"][:, 0] = 2 + np.arange(4)
params = jax.device_get(model.init(jax.random.key(0), batches[0]))
axes = model.param_logical_axes(batches[0])
# Distinct experts and a non-zero router (MoV starts from ones and zeros, where the
# router's first gradient is exactly 0 and Adafactor turns rounding noise into full
# steps): every parameter gets a real gradient, so updates can be compared tightly.
mask = trainable_mask(params)
params = jax.tree_util.tree_map(lambda p, t: p + 0.1 * rng.standard_normal(p.shape).astype(p.dtype) if t else p,
                                params, mask)


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)])


def run(mesh):
  # lr 1e-2: every parameter moves by 1e-3 or more in 3 steps.
  losses, trainable, rows, _, _ = sharded_steps.run(model, params, axes, batches, mesh, learning_rate=1e-2)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    trainable = multihost_utils.process_allgather(trainable, tiled=True)
  return {"losses": losses, "params": flat(trainable).tolist(), "host_rows": rows}


n = jax.device_count()
trainable0 = trainer.split_params(params, mask)[0]
result = {"process": jax.process_index(), "processes": jax.process_count(), "devices": n,
          "params_before": flat(trainable0).tolist(),
          "leaf_sizes": [int(np.size(x)) for x in jax.tree_util.tree_leaves(trainable0)],
          "data_parallel": run(partitioning.make_mesh(n, 1)),
          "model_parallel": run(partitioning.make_mesh(1, n))}
# To a file: ~80 KB on a pipe would block one process while the test drains the other.
with open(os.environ["TWO_PROCESS_OUT"] + f".{jax.process_index() if sys.argv[1] != 'single' else 'single'}",
          "w") as f:
  json.dump(result, f)
if jax.process_count() > 1:  # leave together: a peer that exits first aborts the other's disconnect
  from jax.experimental import multihost_utils
  multihost_utils.sync_global_devices("done")
  jax.distributed.shutdown()
