"""Train-step cost of every method over one frozen backbone, side by side.

    make bench        # or: .venv/bin/python -m bench.train_step [--preset=t5_1_1_small] [--steps=10]

For each method preset (moe_jax.peft.PRESETS) plus full fine-tuning, builds
the same backbone, jits the real TrainStep (Adafactor, frozen-base split),
and measures steady-state step time after compilation, tokens/s, trainable
parameters and XLA's compiled memory estimate (arguments + temporaries).
Ratios are against IA3 (MoV's single-expert baseline) measured in the same
process. Prints one JSON object; --out also writes it.

Expected shape of the result (2 CPU cores, t5_1_1_small, 2+2 layers): MoV-10
a modest multiple of IA3's step time, the adapter methods far cheaper in
optimizer memory than full fine-tuning; absolute numbers depend on the host.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import partitioning, trainer
from moe_jax.models import build_model, get_preset
from moe_jax.peft import NO_ADAPTERS, PRESETS
from moe_jax.peft.trainable import count, trainable_mask


def _batch(batch_size, in_len, out_len, vocab, seed=0):
  r = np.random.RandomState(seed)
  return {"encoder_input_tokens": r.randint(2, vocab, (batch_size, in_len)).astype(np.int32),
          "decoder_input_tokens": r.randint(2, vocab, (batch_size, out_len)).astype(np.int32),
          "decoder_target_tokens": r.randint(2, vocab, (batch_size, out_len)).astype(np.int32),
          "task_id": (np.arange(batch_size) % 4).astype(np.int32),
          "domain_id": (np.arange(batch_size) % 4).astype(np.int32)}


def measure(config, adapters, batch, steps, trainable_regex=None) -> dict:
  model = build_model(config, adapters)
  params = model.init(jax.random.key(0), batch)
  mask = trainable_mask(params, trainable_regex)
  trainable, frozen = trainer.split_params(params, mask)
  axes = trainer._subtree(model.param_logical_axes(batch), trainable)
  part = partitioning.Partitioner(partitioning.make_mesh(-1, 1))
  step = trainer.TrainStep(model, part, axes, learning_rate=1e-3)
  with part.context():
    opt = step.init_opt_state(trainable)
    rng = jax.random.key(1)
    t0 = time.perf_counter()
    compiled = step._step.lower(trainable, frozen, opt, batch, rng).compile()
    mem = compiled.memory_analysis()
    trainable, opt, m = compiled(trainable, frozen, opt, batch, rng)  # warm-up step
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
      trainable, opt, m = compiled(trainable, frozen, opt, batch, jax.random.fold_in(rng, i))
    jax.block_until_ready(m["loss"])
    step_s = (time.perf_counter() - t0) / steps
  tokens = int(np.sum(batch["encoder_input_tokens"] > 0) + np.sum(batch["decoder_target_tokens"] > 0))
  out = {"step_ms": 1e3 * step_s, "tokens_per_sec": tokens / step_s, "compile_and_first_step_s": compile_s,
         "trainable_params": count(params, mask), "total_params": count(params)}
  if mem is not None:
    out["argument_mb"] = mem.argument_size_in_bytes / 2 ** 20
    out["temp_mb"] = mem.temp_size_in_bytes / 2 ** 20
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="t5_1_1_small")
  p.add_argument("--layers", type=int, default=2, help="encoder and decoder layers (0: the preset's)")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--lengths", default="128,32", help="inputs,targets")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--methods", default="ia3,lora_r4,mov_10,molora_10,moelora,milora,moa_4,full")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  config = get_preset(args.preset)
  if args.layers:
    config = dataclasses.replace(config, num_encoder_layers=args.layers, num_decoder_layers=args.layers)
  in_len, out_len = map(int, args.lengths.split(","))
  batch = jax.tree_util.tree_map(jnp.asarray, _batch(args.batch_size, in_len, out_len, config.vocab_size))
  results = {}
  for name in args.methods.split(","):
    if name == "full":  # every parameter trainable: the cost PEFT avoids
      results[name] = measure(config, NO_ADAPTERS, batch, args.steps, trainable_regex=".*")
    else:
      if name not in PRESETS:
        raise SystemExit(f"unknown method preset {name!r}; choose from {sorted(PRESETS)} or 'full'")
      results[name] = measure(config, PRESETS[name], batch, args.steps)
    print(f"{name}: {results[name]['step_ms']:.1f} ms/step", flush=True)
  base = results.get("ia3")
  if base:
    for r in results.values():
      r["step_time_vs_ia3"] = r["step_ms"] / base["step_ms"]
  report = {"benchmark": "train_step", "backbone": args.preset, "layers": args.layers,
            "batch_size": args.batch_size, "lengths": [in_len, out_len], "steps": args.steps,
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
