"""python -m moe_jax.plan --gin_file=gin_configs/mov_t5_3b.gin --devices=8 [--gin.KEY=VALUE ...]

Sizes a run before it touches a pod: simulates `--devices` CPU devices,
builds the configured model, mesh, partitioning rules and train step, and
ahead-of-time compiles that step on abstract arrays (nothing is allocated).
Prints a table and, as its last line, one JSON object:
  params, trainable, per_device_argument_gib, per_device_temp_gib,
  per_device_output_gib, flops_per_device, compile_s.
XLA:CPU's buffer assignment and fusion differ from TPU's and GPU's: read the
numbers as estimates of the same program, good for comparing settings
(remat, scan, rules, batch) and for an order of magnitude per device.
"""
from __future__ import annotations

import json
import os
import sys
import time


def _take_devices(argv):
  """--devices=N is ours; the rest goes to gin."""
  devices, rest = 1, []
  for a in argv:
    if a.startswith("--devices="):
      devices = int(a.split("=", 1)[1])
    else:
      rest.append(a)
  if devices < 1:
    raise ValueError(f"--devices={devices} must be >= 1")
  return devices, rest


def abstract_batch(model, lengths: dict, batch_size: int, pack: bool, sharding, extra_features=()):
  """ShapeDtypeStructs of one global training batch, as the trainer feeds it."""
  import jax
  import jax.numpy as jnp

  def spec(*shape, dtype=jnp.int32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding(len(shape)))
  b = batch_size
  if model.config.family == "decoder":
    n = lengths["inputs"] + lengths["targets"]
    batch = {k: spec(b, n) for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                                     "decoder_causal_attention")}
  else:
    li, lt = lengths["inputs"], lengths["targets"]
    batch = {"encoder_input_tokens": spec(b, li), "decoder_input_tokens": spec(b, lt),
             "decoder_target_tokens": spec(b, lt), "decoder_loss_weights": spec(b, lt)}
    if pack:
      batch.update(encoder_segment_ids=spec(b, li), encoder_positions=spec(b, li),
                   decoder_segment_ids=spec(b, lt), decoder_positions=spec(b, lt))
  if not pack:
    batch.update({k: spec(b) for k in ("task_id", "domain_id", "template_id")})
  for k in extra_features:
    batch[k] = spec(b, model.config.d_model, dtype=jnp.float32)
  return batch


def plan() -> dict:
  import gin
  import jax
  from flax import linen as nn

  from moe_jax import gin_utils, optim, partitioning, routing_embeddings, trainer
  from moe_jax.peft.trainable import trainable_mask
  macro = lambda name, default=None: _macro(gin, name, default)
  model = gin_utils.model()
  lengths, batch_size = macro("TASK_FEATURE_LENGTHS"), macro("BATCH_SIZE")
  pack, mesh_shape = macro("PACK", False), tuple(macro("MESH_SHAPE", (-1, 1)))
  partitioner = partitioning.Partitioner(partitioning.make_mesh(*mesh_shape),
                                         partitioning.rules(macro("PARTITIONING_RULES", "default")))
  variables = model.abstract_variables()
  shapes, axes = nn.unbox(variables)["params"], nn.get_partition_spec(variables)["params"]
  mask = trainable_mask(shapes, macro("TRAINABLE_REGEX"))
  t_shapes, f_shapes = trainer.split_params(shapes, mask)
  t_axes, f_axes = trainer._subtree(axes, t_shapes), trainer._subtree(axes, f_shapes)
  step = trainer.TrainStep(model, partitioner, t_axes, macro("LEARNING_RATE", 3e-4), macro("DECAY_RATE", 0.8),
                           macro("GRAD_ACCUM_STEPS", 1), macro("ADAFACTOR_STEP_OFFSET") or 0)

  def placed(tree, tree_axes):
    sh = partitioner.param_shardings(tree_axes)
    return jax.tree_util.tree_map(lambda s, d: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=d), tree, sh)
  started = time.perf_counter()
  with partitioner.context():
    t_abs, f_abs = placed(t_shapes, t_axes), placed(f_shapes, f_axes)
    init = jax.jit(step.tx.init).lower(t_abs).compile()
    o_abs = jax.tree_util.tree_map(lambda s, d: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=d),
                                   jax.eval_shape(step.tx.init, t_abs), init.output_shardings)
    extra = ("routing_embedding",) if routing_embeddings.needed(model.adapters) else ()
    batch = abstract_batch(model, lengths, batch_size, pack, partitioner.batch_sharding, extra)
    compiled = step.jitted(t_abs, o_abs).lower(t_abs, f_abs, o_abs, batch, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - started
  mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  count = lambda tree: sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
  gib = 2.0 ** 30
  return {
      "model": type(model.config).__name__, "devices": jax.device_count(), "mesh": dict(partitioner.mesh.shape),
      "params": count(shapes), "trainable": count(t_shapes),
      "per_device_argument_gib": round(mem.argument_size_in_bytes / gib, 3),
      "per_device_temp_gib": round(mem.temp_size_in_bytes / gib, 3),
      "per_device_output_gib": round(mem.output_size_in_bytes / gib, 3),
      "flops_per_device": float(cost.get("flops", 0.0)) if cost else 0.0,
      "compile_s": round(compile_s, 1),
      "adafactor_first_decay": optim.decay_rate_at(1, macro("DECAY_RATE", 0.8), macro("ADAFACTOR_STEP_OFFSET") or 0),
  }


def _macro(gin, name, default=None):
  try:
    value = gin.query_parameter(f"%{name}")
  except ValueError:
    return default
  while isinstance(value, gin.config.ConfigurableReference) or type(value).__name__ == "MacroReference":
    value = gin.query_parameter(f"%{value.name}") if hasattr(value, "name") else value
  return value


def table(result: dict) -> str:
  rows = [("model", result["model"]), ("devices / mesh", f"{result['devices']} / {result['mesh']}"),
          ("parameters", f"{result['params']:,}"), ("trainable", f"{result['trainable']:,}"),
          ("arguments per device", f"{result['per_device_argument_gib']:.2f} GiB"),
          ("temporaries per device", f"{result['per_device_temp_gib']:.2f} GiB"),
          ("outputs per device", f"{result['per_device_output_gib']:.2f} GiB"),
          ("FLOPs per device per step", f"{result['flops_per_device']:.3g}"),
          ("compile", f"{result['compile_s']:.1f} s")]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  try:
    devices, rest = _take_devices(argv)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from moe_jax import gin_utils
  out = {}

  def run():
    out.update(plan())
  code = gin_utils.run(run, rest)
  if code == 0:
    print(table(out))
    print(json.dumps(out))
  return code


if __name__ == "__main__":
  sys.exit(main())
