"""Sizes a run before a pod is booked: compiles its programs for the slice.

  python -m moe_jax.plan --gin_file=gin_configs/mov_t5_3b.gin --topology=v4-32 --gin.MESH_SHAPE="(-1, 2)"
  python -m moe_jax.plan --gin_file=gin_configs/demo.gin --devices=8     (no libtpu: XLA:CPU)

`--topology=ACCELERATOR_TYPE` (a Cloud TPU type: v4-32, v5litepod-16, v5p-32,
v6e-8, ...) compiles with the real XLA:TPU compiler for that slice, on this
host, from libtpu's description of it (`pip install 'jax[tpu]'`; no TPU
needed). `--devices=N` instead simulates N XLA:CPU devices (an estimate: CPU
buffer assignment and fusion differ from TPU's and GPU's).

On the run's mesh (`MESH_SHAPE`, data = -1 takes the rest) and partitioning
rules it compiles, on abstract arrays (nothing is allocated):
- `train`: the train step at TASK_FEATURE_LENGTHS, BATCH_SIZE, PACK;
- `score`: the zero-shot evaluator's scoring step at EVAL_FEATURE_LENGTHS, EVAL_BATCH_SIZE;
- `decode`: `moe_jax.infer`'s decoding (prompt pass and greedy/beam loop) at
  infer's inputs_length, batch_size, max_decode_length, num_beams (bound in
  gin, else infer's defaults).
Prints a table and, last, one JSON line. Each step reports per-chip memory
(arguments + outputs - donated + temporaries + code), FLOPs counting every
layer (moe_jax/tools/flops.py: XLA's own count sees a scanned stack's body once),
and on a TPU slice a roofline lower bound on its time from the chip's peak
(moe_jax/tools/tpu_slices.py), tokens/s and the days TRAIN_STEPS would take.

A step that does not fit a chip's memory exits 2 with one line naming the
step, the GiB it needs, the chip's GiB and what would reduce it.
"""
from __future__ import annotations
# Imports inside functions: jax and the library load only after main() has set XLA_FLAGS
# and JAX_PLATFORMS (the simulated device count), so none of them is imported at the top.

import functools
import inspect
import json
import os
import re
import sys
import time

GIB = 2.0 ** 30
STEPS = ("train", "score", "decode")


class DoesNotFit(ValueError):
  pass


def _take_target(argv):
  """--devices=N / --topology=TYPE are ours; the rest goes to gin."""
  devices, topology, rest = None, None, []
  for a in argv:
    if a.startswith("--devices="):
      devices = int(a.split("=", 1)[1])
    elif a.startswith("--topology="):
      topology = a.split("=", 1)[1]
    else:
      rest.append(a)
  if devices is not None and topology is not None:
    raise ValueError("give --devices=N (XLA:CPU simulation) or --topology=TYPE (XLA:TPU), not both")
  if devices is not None and devices < 1:
    raise ValueError(f"--devices={devices} must be >= 1")
  if topology is not None:
    from moe_jax.tools import tpu_slices
    topology = tpu_slices.parse(topology)
  return devices or 1, topology, rest


def abstract_batch(model, lengths: dict, batch_size: int, pack: bool, sharding, extra_features=()):
  """ShapeDtypeStructs of one global training batch, as the trainer feeds it."""
  import jax
  import jax.numpy as jnp

  def spec(*shape, dtype=jnp.int32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding(len(shape)))
  b = batch_size
  if model.config.family == "decoder":
    if pack:  # as the trainer refuses it
      raise ValueError("PACK=True: decoder-only models train as unpacked prefix-LM rows (packing is implemented "
                       "for encoder-decoder models); set it to False")
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
  ids = (b,)
  if pack and model.config.family != "decoder":  # packed rows carry one id per segment slot
    from moe_jax.data import converters
    ids = (b, converters.id_slots(lengths))
  batch.update({k: spec(*ids) for k in ("task_id", "domain_id", "template_id")})
  for k in extra_features:
    batch[k] = spec(b, model.config.d_model, dtype=jnp.float32)
  return batch


def _infer_setting(gin, name):
  """infer's binding of `name` if a gin file made one, else infer's default."""
  try:
    return gin.query_parameter(f"infer.{name}")
  except ValueError:
    from moe_jax.evaluation import inference
    return inspect.signature(inference.infer).parameters[name].default


class _Config:
  """The gin macros the planner reads. A name no configuration defines is an
  error (a misspelling would otherwise plan the default silently); `default`
  covers only optional macros that finetune.gin may not bind."""

  def __init__(self, gin):
    self.gin = gin

  def __call__(self, name, default=inspect.Parameter.empty):
    try:
      value = self.gin.query_parameter(f"%{name}")
    except ValueError:
      if default is inspect.Parameter.empty:
        raise ValueError(f"the configuration defines no macro {name} (the planner reads it; include "
                         "gin_configs/runs/finetune.gin or set it)") from None
      return default
    # A macro bound to another macro (EVAL_FEATURE_LENGTHS = %TASK_FEATURE_LENGTHS)
    # comes back as a reference to `MACRO/gin.macro`.
    while (isinstance(value, self.gin.config.ConfigurableReference)
           and value.scoped_selector.endswith("/gin.macro")):
      value = self.gin.query_parameter("%" + value.scoped_selector.rsplit("/", 1)[0])
    return value


def _placed(partitioner, tree, tree_axes):
  import jax
  shardings = partitioner.param_shardings(tree_axes)
  return jax.tree_util.tree_map(lambda s, d: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=d), tree, shardings)


def _batch_sharding(partitioner, batch_size):
  """Split over `data` when the batch divides; else replicated (a small
  decode or eval batch on a large slice)."""
  data = partitioner.mesh.shape["data"]
  return partitioner.batch_sharding if batch_size % data == 0 else (lambda _: partitioner.replicated())


def _programs(model, partitioner, cfg) -> dict:
  """name -> (jitted function, abstract arguments, while-loop trips, tokens per call)."""
  import gin
  import jax
  from flax import linen as nn

  from moe_jax.training import routing_embeddings, trainer
  from moe_jax.models import build_model
  from moe_jax.peft.trainable import trainable_mask
  variables = model.abstract_variables()
  shapes, axes = nn.unbox(variables)["params"], nn.get_partition_spec(variables)["params"]
  mask = trainable_mask(shapes, cfg("TRAINABLE_REGEX", None))
  t_shapes, f_shapes = trainer.split_params(shapes, mask)
  t_axes, f_axes = trainer.subtree(axes, t_shapes), trainer.subtree(axes, f_shapes)
  step = trainer.TrainStep(model, partitioner, t_axes, cfg("LEARNING_RATE"), cfg("DECAY_RATE"),
                           cfg("GRAD_ACCUM_STEPS"), cfg("ADAFACTOR_STEP_OFFSET") or 0)
  extra = ("routing_embedding",) if routing_embeddings.needed(model.adapters) else ()
  lengths, batch_size, pack = cfg("TASK_FEATURE_LENGTHS"), cfg("BATCH_SIZE"), cfg("PACK")
  data = partitioner.mesh.shape["data"]
  if batch_size % data:
    raise ValueError(f"BATCH_SIZE={batch_size} does not split over the data axis of the mesh "
                     f"{dict(partitioner.mesh.shape)}; set a multiple of {data}, or a MESH_SHAPE with a larger "
                     "model axis")
  key = jax.ShapeDtypeStruct((), jax.eval_shape(jax.random.key, 0).dtype, sharding=partitioner.replicated())
  out = {}
  with partitioner.context():
    t_abs, f_abs = _placed(partitioner, t_shapes, t_axes), _placed(partitioner, f_shapes, f_axes)
    o_shapes = jax.eval_shape(step.tx.init, t_abs)
    o_shardings = jax.jit(step.tx.init).lower(t_abs).compile().output_shardings
    o_abs = jax.tree_util.tree_map(lambda s, d: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=d),
                                   o_shapes, o_shardings)
    batch = abstract_batch(model, lengths, batch_size, pack, partitioner.batch_sharding, extra)
    out["train"] = (step.jitted(t_abs, o_abs), (t_abs, f_abs, o_abs, batch, key), 1,
                    batch_size * (lengths["inputs"] + lengths["targets"]))

    all_abs = _placed(partitioner, shapes, axes)
    eval_lengths, eval_batch = cfg("EVAL_FEATURE_LENGTHS", lengths), cfg("EVAL_BATCH_SIZE", 32)
    eval_in = abstract_batch(model, eval_lengths, eval_batch, False, _batch_sharding(partitioner, eval_batch), extra)
    out["score"] = (jax.jit(model._score), (all_abs, eval_in), 1,
                    eval_batch * (eval_lengths["inputs"] + eval_lengths["targets"]))

    n, li = _infer_setting(gin, "batch_size"), _infer_setting(gin, "inputs_length")
    decode_len, beams = _infer_setting(gin, "max_decode_length"), _infer_setting(gin, "num_beams")
    decoder, params = model, all_abs
    if model.adapters.merges_per_task:  # infer decodes a task's weights merged into a plain backbone
      decoder = build_model(model.config)
      plain = decoder.abstract_variables()
      params = _placed(partitioner, nn.unbox(plain)["params"], nn.get_partition_spec(plain)["params"])
    sharding = _batch_sharding(partitioner, n)
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, "int32", sharding=sharding(len(shape)))  # noqa: E731
    prompt = ({"decoder_input_tokens": spec(n, li), "decoder_causal_attention": spec(n, li)}
              if model.config.family == "decoder" else {"encoder_input_tokens": spec(n, li)})
    prompt.update(task_id=spec(n), domain_id=spec(n))
    for k in extra:
      prompt[k] = jax.ShapeDtypeStruct((n, model.config.d_model), "float32", sharding=sharding(2))
    predict = functools.partial(decoder._predict, max_decode_length=decode_len, num_beams=beams)
    out["decode"] = (jax.jit(predict), (params, prompt), decode_len, n * decode_len)  # tokens generated
  out["_counts"] = (shapes, t_shapes)
  return out


def _compile(partitioner, fn, args, while_trips, tokens, slice_) -> dict:
  from moe_jax.tools import flops
  started = time.perf_counter()
  with partitioner.context():
    traced = fn.trace(*args)
    compiled = traced.lower().compile()
  compile_s = time.perf_counter() - started
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  chips = len(partitioner.mesh.devices.flat)
  counted = flops.of_traced(traced, while_trips)
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  r = {"per_chip_argument_gib": mem.argument_size_in_bytes / GIB,
       "per_chip_output_gib": mem.output_size_in_bytes / GIB,
       "per_chip_alias_gib": mem.alias_size_in_bytes / GIB,
       "per_chip_temp_gib": mem.temp_size_in_bytes / GIB,
       "per_chip_total_gib": total / GIB,
       "flops_per_step": float(counted["flops"]),
       "flops_per_chip": float(counted["flops"]) / chips,
       "xla_flops_per_chip": float(cost.get("flops", 0.0)),  # loop bodies counted once
       "xla_bytes_accessed_per_chip": float(cost.get("bytes accessed", 0.0)),
       "compile_s": compile_s, "tokens_per_call": tokens}
  if slice_ is not None:
    r["headroom_gib"] = slice_.hbm_gib - r["per_chip_total_gib"]
    # Lower bounds: the chip's peak bf16 rate on every FLOP, and XLA's bytes
    # accessed (a loop body once, so itself a lower bound) at HBM bandwidth.
    compute_s = r["flops_per_chip"] / slice_.peak_bf16_flops
    memory_s = r["xla_bytes_accessed_per_chip"] / slice_.hbm_bytes_per_s
    r["roofline_s"] = max(compute_s, memory_s)
    r["roofline_bound"] = "compute" if compute_s >= memory_s else "memory"
    r["tokens_per_s"] = tokens / r["roofline_s"] if r["roofline_s"] else None
  r["compile_s"] = round(compile_s, 2)
  return {k: (round(v, 4) if k.endswith("gib") else v) for k, v in r.items()}


def _advice(cfg, slice_, step_name) -> str:
  """What would reduce a step's memory, leaving out what the run already does."""
  tips = []
  if cfg("REMAT_POLICY", "none") != "full":
    tips.append("REMAT_POLICY='full'")
  if cfg("PARTITIONING_RULES", "default") != "fsdp":
    tips.append("PARTITIONING_RULES='fsdp'")
  tips.append(f"a larger slice than {slice_.accelerator_type}")
  if step_name == "train":
    tips.append(f"a smaller BATCH_SIZE (now {cfg('BATCH_SIZE')}) or GRAD_ACCUM_STEPS > 1")
  elif step_name == "score":
    tips.append(f"a smaller EVAL_BATCH_SIZE (now {cfg('EVAL_BATCH_SIZE', 32)})")
  else:
    tips.append("a smaller infer.batch_size")
  return ", ".join(tips)


def _exhausted(message: str) -> tuple[str, str]:
  """(needed, available) from XLA:TPU's out-of-memory error, e.g. "... HLO
  temporaries (70.72G) exceeds available HBM (15.75G)"."""
  sizes = re.findall(r"(\d+(?:\.\d+)?)\s*([KMGT])i?B?\b", message.split("RESOURCE_EXHAUSTED", 1)[1])
  if len(sizes) >= 2:
    return tuple(f"{v} {u}iB" for v, u in sizes[:2])
  return "more than", "the HBM XLA:TPU allows"


def _does_not_fit(cfg, slice_, step_name, need: str, have: str) -> str:
  return (f"the {step_name} step needs {need} per chip; {slice_.accelerator_type} chips have {have} of HBM; "
          f"reduce it with {_advice(cfg, slice_, step_name)}")


def _check_user_tasks(cfg) -> None:
  """With MIXTURE_OR_TASK_MODULE or CUSTOM_TASKS set, the modules import and
  the run's task resolves (registering reads no data). Otherwise nothing is
  imported: the planner needs no TensorFlow for moe-jax's own tasks."""
  import gin
  wanted = []
  for macro in ("MIXTURE_OR_TASK_MODULE", "CUSTOM_TASKS"):
    try:
      wanted.append(gin.query_parameter(f"%{macro}"))
    except ValueError:  # a configuration without the entry points' run files
      pass
  if any(wanted):
    from moe_jax.data import registry, user_tasks
    user_tasks.register_tasks()
    registry.get_task_or_mixture(cfg("MIXTURE_OR_TASK_NAME"))


def plan(slice_=None) -> dict:
  import gin
  import jax

  from moe_jax import gin_utils
  from moe_jax.training import optim, partitioning
  cfg = _Config(gin)
  model = gin_utils.model()
  devices = slice_.devices() if slice_ is not None else jax.devices()
  mesh_shape = tuple(cfg("MESH_SHAPE"))
  _check_user_tasks(cfg)
  partitioner = partitioning.Partitioner(partitioning.make_mesh(*mesh_shape, devices=devices),
                                         partitioning.rules(cfg("PARTITIONING_RULES")))
  programs = _programs(model, partitioner, cfg)
  shapes, t_shapes = programs.pop("_counts")
  steps = {}
  for name in STEPS:  # the first step that does not fit ends the plan
    try:
      steps[name] = _compile(partitioner, *programs[name], slice_)
    except Exception as e:  # XLA:TPU refuses a program larger than the chip's HBM
      if slice_ is None or "RESOURCE_EXHAUSTED" not in str(e):
        raise
      need, have = _exhausted(str(e))
      raise DoesNotFit(_does_not_fit(cfg, slice_, name, need, have)) from None
    need = steps[name]["per_chip_total_gib"]
    if slice_ is not None and need > slice_.hbm_gib:
      raise DoesNotFit(_does_not_fit(cfg, slice_, name, f"{need:.2f} GiB", f"{slice_.hbm_gib:g} GiB"))
  count = lambda tree: sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))  # noqa: E731
  train = steps["train"]
  out = {
      "model": type(model.config).__name__, "method": type(model.adapters).__name__,
      "compiler": "xla-tpu" if slice_ is not None else "xla-cpu-simulated",
      "topology": slice_.accelerator_type if slice_ is not None else None,
      "libtpu_topology": slice_.topology if slice_ is not None else None,
      "chips": len(devices), "devices": len(devices), "mesh": dict(partitioner.mesh.shape),
      "hbm_per_chip_gib": slice_.hbm_gib if slice_ is not None else None,
      "params": count(shapes), "trainable": count(t_shapes),
      # The train step's figures, under the names earlier plans used.
      "per_device_argument_gib": round(train["per_chip_argument_gib"], 3),
      "per_device_temp_gib": round(train["per_chip_temp_gib"], 3),
      "per_device_output_gib": round(train["per_chip_output_gib"], 3),
      "flops_per_device": train["flops_per_chip"], "compile_s": round(train["compile_s"], 1),
      "train_steps": cfg("TRAIN_STEPS", None),
      "steps": steps,
      "adafactor_first_decay": optim.decay_rate_at(1, cfg("DECAY_RATE"), cfg("ADAFACTOR_STEP_OFFSET") or 0),
  }
  if slice_ is not None and out["train_steps"]:
    out["days_to_train_steps"] = out["train_steps"] * train["roofline_s"] / 86400
  return out


def table(result: dict) -> str:
  head = [("model / method", f"{result['model']} / {result['method']}"),
          ("compiler", f"{result['compiler']}" + (f" for {result['topology']} ({result['libtpu_topology']})"
                                                  if result["topology"] else "")),
          ("chips / mesh", f"{result['chips']} / {result['mesh']}"),
          ("HBM per chip", f"{result['hbm_per_chip_gib']:g} GiB" if result["hbm_per_chip_gib"] else "-"),
          ("parameters", f"{result['params']:,}"), ("trainable", f"{result['trainable']:,}")]
  if "days_to_train_steps" in result:
    head.append((f"days for {result['train_steps']:,} steps (roofline)", f"{result['days_to_train_steps']:.3g}"))
  width = max(len(k) for k, _ in head)
  lines = [f"{k.ljust(width)}  {v}" for k, v in head]
  cols = ("step", "args GiB", "temps GiB", "total GiB", "headroom GiB", "FLOPs/step", "roofline s",
          "tokens/s", "compile s")
  rows = []
  for name, s in result["steps"].items():
    fmt = lambda k, f: (f.format(s[k]) if s.get(k) is not None else "-")  # noqa: E731
    rows.append((name, fmt("per_chip_argument_gib", "{:.2f}"), fmt("per_chip_temp_gib", "{:.2f}"),
                 fmt("per_chip_total_gib", "{:.2f}"), fmt("headroom_gib", "{:.2f}"), fmt("flops_per_step", "{:.3g}"),
                 fmt("roofline_s", "{:.4f}"), fmt("tokens_per_s", "{:,.0f}"), fmt("compile_s", "{:.1f}")))
  widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
  lines.append("")
  lines.append("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
  lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
  lines.append("(per chip; FLOPs/step of the whole program, every layer counted; roofline: lower bound "
               "from the chip's peak bf16 FLOP/s and HBM bandwidth)")
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "--help" in argv or "-h" in argv:
    from moe_jax import gin_utils
    print(gin_utils.help_text(main))
    return 0
  try:
    devices, slice_, rest = _take_target(argv)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  # The host's own backend is CPU either way (the slice is described, not attached).
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from moe_jax import gin_utils
  out = {}

  def run():
    out.update(plan(slice_))
  code = gin_utils.run(run, rest)
  if code == 0:
    print(table(out))
    print(json.dumps(out))
  return code


if __name__ == "__main__":
  sys.exit(main())
