"""Run with 8 simulated CPU devices: a (4, 2) data x model mesh and 1 device
take the same train steps; prints the max differences as JSON."""
import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sharded_steps  # noqa: E402  (beside this script)
from moe_jax import partitioning  # noqa: E402
from moe_jax.models import T5Config, build_model  # noqa: E402
from moe_jax.peft import MoV  # noqa: E402

cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_encoder_layers=2,
               num_decoder_layers=2)
model = build_model(cfg, MoV(num_experts=4))
rng = np.random.RandomState(0)
batches = [{"encoder_input_tokens": rng.randint(2, 64, (8, 12)).astype(np.int32),
            "decoder_input_tokens": rng.randint(2, 64, (8, 6)).astype(np.int32),
            "decoder_target_tokens": rng.randint(2, 64, (8, 6)).astype(np.int32)} for _ in range(3)]
params = jax.device_get(model.init(jax.random.key(0), batches[0]))  # host copy: steps donate buffers
axes = model.param_logical_axes(batches[0])


def run(mesh):
  # Adafactor divides by RMS(grad): reduction-order noise on ~0 gradients becomes
  # steps of size ~lr, so a small lr keeps the 1e-5 comparison meaningful.
  losses, placed, _ = sharded_steps.run(model, params, axes, batches, mesh, learning_rate=1e-4)
  return losses, jax.device_get(placed), placed


l8, p8, sharded = run(partitioning.make_mesh(4, 2))
l1, p1, _ = run(partitioning.make_mesh(1, 1, devices=jax.devices()[:1]))
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(p8), jax.tree_util.tree_leaves(p1)))
n_sharded = sum(1 for x in jax.tree_util.tree_leaves(sharded) if len(x.sharding.device_set) == 8)
print(json.dumps({"devices": jax.device_count(), "loss_8": l8, "loss_1": l1,
                  "max_param_diff": diff, "leaves_on_8_devices": n_sharded}))
