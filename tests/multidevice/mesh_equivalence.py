"""Run with 8 simulated CPU devices: a (2, 2, 2) data x model x expert mesh and
1 device take the same train steps; prints, as JSON, the losses and per
parameter its logical axes, its partition spec, the shapes of its per-device
shards, the size of its update on 1 device and the difference of the 8-device
update, and how the last batch was split over the devices."""
import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sharded_steps  # noqa: E402  (beside this script)
from moe_jax import partitioning, trainer  # noqa: E402
from moe_jax.models import T5Config, build_model  # noqa: E402
from moe_jax.peft import MoV  # noqa: E402
from moe_jax.peft.trainable import trainable_mask  # noqa: E402

cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_encoder_layers=2,
               num_decoder_layers=2)
model = build_model(cfg, MoV(num_experts=4))
rng = np.random.RandomState(0)
batches = [{"encoder_input_tokens": rng.randint(2, 64, (8, 12)).astype(np.int32),
            "decoder_input_tokens": rng.randint(2, 64, (8, 6)).astype(np.int32),
            "decoder_target_tokens": rng.randint(2, 64, (8, 6)).astype(np.int32)} for _ in range(3)]
params = jax.device_get(model.init(jax.random.key(0), batches[0]))  # host copy: steps donate buffers
axes = model.param_logical_axes(batches[0])
# MoV starts with identical experts (ones) and a zero router: the router's first
# gradient is exactly zero and Adafactor turns rounding noise into full-size
# steps. Distinct experts give every parameter a real gradient from step 1.
mask = trainable_mask(params)
params = jax.tree_util.tree_map(lambda p, t: p + 0.1 * rng.standard_normal(p.shape).astype(p.dtype) if t else p,
                                params, mask)
trainable0, _ = trainer.split_params(params, mask)


def run(mesh):
  # lr 1e-2: every parameter moves ~1e-3 or more, far above the 1e-5 comparison.
  losses, tr, _, placed, batch = sharded_steps.run(model, params, axes, batches, mesh, learning_rate=1e-2)
  return losses, tr, placed, batch


def flat(tree):
  return [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def spec(sharding, ndim):
  s = tuple(sharding.spec)
  return [list(a) if isinstance(a, tuple) else a for a in s + (None,) * (ndim - len(s))]


mesh = partitioning.make_mesh(2, 2, 2)
l8, tr8, placed8, batch8 = run(mesh)
step_info = dict(sharded_steps.LAST)
l1, tr1, _, _ = run(partitioning.make_mesh(1, 1, devices=jax.devices()[:1]))
is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)


def describe(kind, after_8=None, before=None, after_1=None):
  """Per parameter: logical axes, the spec and per-device blocks it was placed with
  (by the trainer's code path, before the first step; the step keeps them, see
  "step" in the output) and, if trainable, its update."""
  shardings = flat(placed8[kind])
  shapes = flat(trainable0 if kind == "trainable" else trainer.split_params(params, mask)[1])
  names = jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(tuple, trainer.subtree(axes, placed8[kind]), is_leaf=is_spec),
      is_leaf=lambda x: isinstance(x, tuple))
  out = []
  for i, ((name, sh), (_, x)) in enumerate(zip(shardings, shapes)):
    shape = np.shape(x)
    row = {"name": name, "trainable": kind == "trainable", "logical": list(names[i]), "shape": list(shape),
           "spec": spec(sh, len(shape)),
           "shard_shapes": sorted({tuple(len(range(*sl.indices(n))) for sl, n in zip(idx, shape))
                                   for idx in sh.devices_indices_map(shape).values()}),
           "devices": len(sh.device_set)}
    if after_8 is not None:  # the update on 1 device, and how far the 8-device one is from it
      a8, a1, a0 = (np.asarray(jax.device_get(t[i][1])) for t in (flat(after_8), flat(after_1), flat(before)))
      row["update"], row["update_diff"] = float(np.max(np.abs(a1 - a0))), float(np.max(np.abs(a8 - a1)))
    out.append(row)
  return out


# The last batch: which global rows each device holds, by the device's place in the mesh.
coords = {d.id: dict(zip(mesh.axis_names, np.argwhere(mesh.devices == d)[0].tolist())) for d in mesh.devices.flat}
tokens = batch8["encoder_input_tokens"]
batch_out = {"spec": spec(tokens.sharding, tokens.ndim), "devices": [
    {"coords": coords[s.device.id], "rows": list(range(tokens.shape[0]))[s.index[0]],
     "matches": bool(np.array_equal(np.asarray(s.data), batches[-1]["encoder_input_tokens"][s.index]))}
    for s in tokens.addressable_shards]}
print(json.dumps({"devices": jax.device_count(), "mesh": dict(mesh.shape), "loss_8": l8, "loss_1": l1,
                  "params": describe("trainable", tr8, trainable0, tr1) + describe("frozen"), "batch": batch_out,
                  "step": step_info}))
