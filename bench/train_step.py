"""Train-step cost of every method over one frozen backbone, side by side.

    python -m bench.train_step [--preset=t5_1_1_small] [--layers=2] [--methods=ia3,mov_10]

For each method preset (moe_jax.peft.PRESETS) plus full fine-tuning, builds
the same backbone, jits the real TrainStep (Adafactor, frozen-base split) and
measures, round-robin over the methods (bench/timing.py), the median step
time after compilation, tokens/s, trainable parameters, XLA's compiled memory
(arguments + temporaries) and its cost analysis (FLOPs, bytes accessed).
Ratios are against IA3 and LoRA-r4 measured in the same process. `make bench`
(bench/run.py) runs this with decoding and the PyTorch reference as well.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import timing

METHODS = "ia3,lora_r4,mov_10,molora_10,lora_r40,moelora,milora,moa_4,full"


# Bench-only variants that are not method presets: name -> adapters from a peft package.
# "lora_r40": LoRA-r4's preset at rank 40 (alpha 160, the same scale 4) - the rank
# arithmetic of MoLoRA-10 (10 experts x rank 4) without its routing, so
# MoLoRA-10 / LoRA-r40 is what routing costs.
CONTROLS = {"lora_r40": lambda peft: dataclasses.replace(peft.PRESETS["lora_r4"], rank=40, alpha=160.0)}


def make_batch(batch_size, in_len, out_len, vocab, seed=0):
  r = np.random.RandomState(seed)
  return {"encoder_input_tokens": r.randint(2, vocab, (batch_size, in_len)).astype(np.int32),
          "decoder_input_tokens": r.randint(2, vocab, (batch_size, out_len)).astype(np.int32),
          "decoder_target_tokens": r.randint(2, vocab, (batch_size, out_len)).astype(np.int32),
          "task_id": (np.arange(batch_size) % 4).astype(np.int32),
          "domain_id": (np.arange(batch_size) % 4).astype(np.int32)}


def backbone(pkg, preset: str, layers: int, **overrides):
  """`preset` from `pkg` (moe_jax, or a baseline revision), `layers` per stack (0: the preset's)."""
  config = importlib.import_module(pkg.__name__ + ".models").get_preset(preset, **overrides)
  if layers:
    config = dataclasses.replace(config, num_encoder_layers=layers, num_decoder_layers=layers)
  return config


def cost(compiled) -> dict:
  """XLA's compiled memory and cost estimates (whatever the backend reports)."""
  out = {}
  mem = compiled.memory_analysis()
  if mem is not None:
    out["argument_mb"] = mem.argument_size_in_bytes / 2 ** 20
    out["temp_mb"] = mem.temp_size_in_bytes / 2 ** 20
    out["output_mb"] = mem.output_size_in_bytes / 2 ** 20
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  if ca:
    out["flops"] = float(ca.get("flops", 0.0))
    out["bytes_accessed"] = float(ca.get("bytes accessed", 0.0))
  return out


def prepare(pkg, config, method: str, batch, devices=None):
  """(run one step, facts) for `method` (a preset name or "full") on `pkg`,
  on `devices` (default: jax.devices()); run() returns the step's metrics.
  Facts hold XLA's cost analysis and `jaxpr_flops` (moe_jax/tools/flops.py: every
  loop iteration counted, which XLA's count is not)."""
  from moe_jax.tools import flops  # the current counter whatever `pkg` is: it only walks a jaxpr
  peft = importlib.import_module(pkg.__name__ + ".peft")
  trainable_lib = importlib.import_module(pkg.__name__ + ".peft.trainable")
  trainer = importlib.import_module(pkg.__name__ + ".trainer")
  partitioning = importlib.import_module(pkg.__name__ + ".partitioning")
  models = importlib.import_module(pkg.__name__ + ".models")
  if method == "full":  # every parameter trainable: the cost PEFT avoids
    adapters, regex = peft.NO_ADAPTERS, ".*"
  elif method in peft.PRESETS:
    adapters, regex = peft.PRESETS[method], None
  elif method in CONTROLS:
    adapters, regex = CONTROLS[method](peft), None
  else:
    raise SystemExit(f"unknown method preset {method!r}; choose from {sorted(peft.PRESETS)}, "
                     f"{sorted(CONTROLS)} or 'full'")
  model = models.build_model(config, adapters)
  devices = list(devices) if devices is not None else jax.devices()
  # Parameters, optimizer state and key are made where the step will run.
  with jax.default_device(devices[0]):
    # On the model's small dummy batch: the parameters do not depend on the
    # batch, and an eager init compiles each op per shape, once per process
    # for every method and decode.prepare's models alike.
    params = model.init(jax.random.key(0))
    mask = trainable_lib.trainable_mask(params, regex)
    trainable, frozen = trainer.split_params(params, mask)
    axes = trainer.subtree(model.param_logical_axes(), trainable)
    part = partitioning.Partitioner(partitioning.make_mesh(-1, 1, devices=devices))
    step = trainer.TrainStep(model, part, axes, learning_rate=1e-3)
    state = {}
    with part.context():
      state["trainable"], state["opt"] = trainable, step.init_opt_state(trainable)
      rng = jax.random.key(1)
      t0 = time.perf_counter()
      traced = step.jitted(state["trainable"], state["opt"]).trace(state["trainable"], frozen, state["opt"], batch,
                                                                   rng)
      compiled = traced.lower().compile()
      facts = cost(compiled)
      facts["jaxpr_flops"] = float(flops.of_traced(traced)["flops"])

  def run():
    with part.context():
      state["trainable"], state["opt"], m = compiled(state["trainable"], frozen, state["opt"], batch, rng)
      jax.block_until_ready(m["loss"])
    return m

  facts["first_step_loss"] = float(run()["loss"])
  facts["compile_and_first_step_s"] = time.perf_counter() - t0
  facts["trainable_params"] = trainable_lib.count(params, mask)
  facts["total_params"] = trainable_lib.count(params)
  return run, facts


def tokens_per_batch(batch) -> int:
  return int(np.sum(batch["encoder_input_tokens"] > 0) + np.sum(batch["decoder_target_tokens"] > 0))


# (variant, reference): the targets and the routing control
PAIRS = (("mov_10", "ia3"), ("molora_10", "lora_r4"), ("lora_r40", "lora_r4"), ("molora_10", "lora_r40"),
         ("moa_4", "ia3"))


def paired_ratios(train: dict) -> dict:
  """"A / B" -> median, min and max over rounds of A's step / B's step in the
  same round (steadier than a ratio of medians when the host's speed drifts),
  for the PAIRS present, baseline rows ("before:") paired among themselves."""
  out = {}
  prefixes = sorted({name[:-len(name.split(":")[-1])] for name in train})
  for prefix in prefixes:
    for a, b in PAIRS:
      if prefix + a in train and prefix + b in train:
        out[f"{prefix}{a} / {b}"] = paired(train, prefix + a, prefix + b)
  return out


def paired(train: dict, a: str, b: str) -> dict:
  """Median, min and max over rounds of a's step / b's step in the same round."""
  r = [x / y for x, y in zip(train[a]["rounds_ms"], train[b]["rounds_ms"])]
  return {"median": statistics.median(r), "min": min(r), "max": max(r)}


def summarise(timed: dict, facts: dict, batch, peak_flops=None) -> dict:
  """Per variant: facts + median step, tokens/s, ratios to IA3 / LoRA-r4 of its own package."""
  out = {}
  for name, f in facts.items():
    r = dict(f, step_ms=1e3 * timed[name]["median_s"], rounds_ms=[1e3 * t for t in timed[name]["rounds_s"]],
             page_faults_per_step=timed[name]["page_faults"])
    r["tokens_per_sec"] = tokens_per_batch(batch) / timed[name]["median_s"]
    if peak_flops and r.get("flops"):
      r["percent_of_matmul_peak"] = 100.0 * r["flops"] / timed[name]["median_s"] / peak_flops
    out[name] = r
  for name, r in out.items():
    prefix = name[:-len(name.split(":")[-1])]  # "before:" for baseline variants, "" otherwise
    for ref in ("ia3", "lora_r4"):
      if prefix + ref in out:
        r[f"step_vs_{ref}"] = r["step_ms"] / out[prefix + ref]["step_ms"]
        if r.get("flops") and out[prefix + ref].get("flops"):
          r[f"flops_vs_{ref}"] = r["flops"] / out[prefix + ref]["flops"]
        if r.get("bytes_accessed") and out[prefix + ref].get("bytes_accessed"):
          r[f"bytes_vs_{ref}"] = r["bytes_accessed"] / out[prefix + ref]["bytes_accessed"]
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="t5_1_1_small")
  p.add_argument("--layers", type=int, default=2, help="encoder and decoder layers (0: the preset's)")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--lengths", default="128,32", help="inputs,targets")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--methods", default=METHODS)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  import moe_jax
  config = backbone(moe_jax, args.preset, args.layers)
  in_len, out_len = map(int, args.lengths.split(","))
  batch = jax.tree_util.tree_map(jnp.asarray, make_batch(args.batch_size, in_len, out_len, config.vocab_size))
  runs, facts = {}, {}
  for name in args.methods.split(","):
    runs[name], facts[name] = prepare(moe_jax, config, name, batch)
    print(f"{name}: compiled in {facts[name]['compile_and_first_step_s']:.1f} s", flush=True)
  results = summarise(timing.round_robin(runs, args.rounds), facts, batch)
  report = {"benchmark": "train_step", "backbone": args.preset, "layers": args.layers,
            "batch_size": args.batch_size, "lengths": [in_len, out_len], "rounds": args.rounds,
            "device": jax.devices()[0].device_kind, "host": platform.node(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "results": results}
  text = json.dumps(report, indent=1)
  print(text)
  if args.out:
    with open(args.out + ".tmp", "w") as f:
      f.write(text)
    os.replace(args.out + ".tmp", args.out)
  return report


if __name__ == "__main__":
  main()
