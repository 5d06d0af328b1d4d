"""`make bench`: the whole benchmark in one process, JSON + a markdown table.

    python -m bench.run [--out_dir=bench_results] [--baseline=main]

1. a float32 matmul's FLOP/s on this host (the "peak" the steps are compared with);
2. the real train step of every method preset and full fine-tuning, plus the
   same LoRA step in Hugging Face peft on PyTorch when torch is installed,
   round-robin (bench/timing.py), medians: step time, ratios to IA3 and to
   LoRA-r4, XLA's compiled memory, FLOPs and bytes accessed, % of the matmul peak;
3. greedy decoding tokens/s (bench/decode.py), round-robin, medians.
`--baseline=REF` adds the same measurements for the package at git revision
REF (bench/baseline.py), interleaved in the same rounds, as "before:" rows.
Writes OUT_DIR/bench.json and OUT_DIR/bench.md. Pin threads for steady
numbers (the Makefile does: one core, XLA's single-threaded CPU runtime).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp

from bench import decode, timing, torch_peft, train_step

TORCH = "lora_r4 (HF peft, PyTorch)"


def write_text(path, text):
  """Written whole or not at all (a temporary file renamed into place)."""
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


MALLOC_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")


def allocator() -> str:
  """The glibc malloc settings this process started with (see the Makefile's `bench`)."""
  set_ = [f"{k}={os.environ[k]}" for k in MALLOC_SETTINGS if k in os.environ]
  return "glibc malloc, " + (" ".join(set_) if set_ else "default settings")


def revision() -> str:
  """The checkout's commit (with "+changes" when the tree differs from it): where the numbers come from."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                         check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown (not a git checkout)"
  return rev + ("+changes" if dirty else "")


def markdown(report) -> str:
  s = report["settings"]
  lines = [f"Backbone `{s['preset']}` ({s['layers']}), batch {s['batch_size']}, lengths {s['lengths'][0]}/"
           f"{s['lengths'][1]}; {report['device']}, {report['threads']}; median of {s['rounds']} rounds, "
           f"variants round-robin in one process. Matmul peak measured here: "
           f"{report['matmul_peak_gflops']:.1f} GFLOP/s. Allocator: {report['allocator']}.", "",
           "| train step | ms | / IA3 | / LoRA-r4 | FLOPs / IA3 | bytes / IA3 | % peak | memory MB (args + temp) "
           "| page faults / step | compile s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  f2 = lambda v, fmt="{:.2f}": "-" if v is None else fmt.format(v)
  for name, r in report["train"].items():
    mem = (r.get("argument_mb") or 0) + (r.get("temp_mb") or 0)
    lines.append(f"| {name} | {r['step_ms']:.0f} | {f2(r.get('step_vs_ia3'))} | {f2(r.get('step_vs_lora_r4'))} | "
                 f"{f2(r.get('flops_vs_ia3'))} | {f2(r.get('bytes_vs_ia3'))} | "
                 f"{f2(r.get('percent_of_matmul_peak'), '{:.0f}')} | {f2(mem if mem else None, '{:.0f}')} | "
                 f"{f2(r.get('page_faults_per_step'), '{:.0f}')} | {f2(r.get('compile_and_first_step_s'), '{:.0f}')} |")
  if report.get("paired_ratios"):
    lines += ["", "Per-round ratios (the two variants' steps in the same round), median [min-max]: " + "; ".join(
        f"{k} {v['median']:.3f} [{v['min']:.3f}-{v['max']:.3f}]" for k, v in report["paired_ratios"].items())
              + (". `lora_r40` is LoRA-r4 at rank 40: MoLoRA-10's rank arithmetic without routing."
                 if "lora_r40" in report["train"] else ".")]
  if report.get("decode"):
    d = s["decode"]
    lines += ["", f"Greedy decoding: batch {d[0]}, {d[1]} input tokens, {d[2]} new tokens.", "",
              "| decode | tokens/s | / base | compile s |", "|---|---:|---:|---:|"]
    for name, r in report["decode"].items():
      lines.append(f"| {name} | {r['tokens_per_sec']:.1f} | {f2(r.get('speed_vs_base'), '{:.3f}')} | "
                   f"{r['compile_and_first_decode_s']:.0f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="t5_1_1_small")
  p.add_argument("--layers", type=int, default=0, help="layers per stack (0: the preset's, 8+8 for small)")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--lengths", default="256,64", help="train inputs,targets")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--methods", default=train_step.METHODS)
  p.add_argument("--decode", default="8,128,32", help="batch,input tokens,new tokens ('' to skip)")
  p.add_argument("--decode_variants", default=",".join(decode.VARIANTS))
  p.add_argument("--torch", default="auto", choices=("auto", "off"))
  p.add_argument("--baseline", default=None, help="git revision measured alongside as 'before:' rows")
  p.add_argument("--baseline_methods", default="ia3,lora_r4,mov_10,molora_10,moa_4")
  p.add_argument("--baseline_decode", default=",".join(decode.VARIANTS))
  p.add_argument("--out_dir", default="bench_results")
  args = p.parse_args(argv)
  t_start = time.perf_counter()
  measured = revision()  # the code as it was when the measuring began
  import moe_jax
  pkgs = [("", moe_jax, args.methods.split(","), args.decode_variants.split(","))]
  if args.baseline:
    from bench import baseline
    pkgs.append(("before:", baseline.load(args.baseline), args.baseline_methods.split(","),
                 args.baseline_decode.split(",")))
  in_len, out_len = map(int, args.lengths.split(","))
  peak = timing.matmul_peak_flops()
  print(f"matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)

  runs, facts, batch = {}, {}, None
  for prefix, pkg, methods, _ in pkgs:
    config = train_step.backbone(pkg, args.preset, args.layers)
    batch = jax.tree_util.tree_map(jnp.asarray, train_step.make_batch(args.batch_size, in_len, out_len,
                                                                      config.vocab_size))
    for m in filter(None, methods):
      runs[prefix + m], facts[prefix + m] = train_step.prepare(pkg, config, m, batch)
      print(f"{prefix}{m}: compiled in {facts[prefix + m]['compile_and_first_step_s']:.1f} s", flush=True)
  config = train_step.backbone(moe_jax, args.preset, args.layers)
  hf = torch_peft.prepare(config, batch) if args.torch == "auto" else None
  if hf is not None:
    runs[TORCH], facts[TORCH] = hf
  train = train_step.summarise(timing.round_robin(runs, args.rounds), facts, batch, peak)
  if hf is not None and "lora_r4" in train:
    train[TORCH]["step_vs_lora_r4"] = train[TORCH]["step_ms"] / train["lora_r4"]["step_ms"]
  del runs, hf  # free the train variants' parameters before decoding
  print("train steps measured", flush=True)

  dec = {}
  if args.decode:
    b, n_in, n_new = map(int, args.decode.split(","))
    druns, dfacts = {}, {}
    for prefix, pkg, _, variants in pkgs:
      config = train_step.backbone(pkg, args.preset, args.layers)
      for v in filter(None, variants):
        druns[prefix + v], dfacts[prefix + v] = decode.prepare(pkg, config, v, b, n_in, n_new)
        print(f"{prefix}{v}: decode compiled in {dfacts[prefix + v]['compile_and_first_decode_s']:.1f} s", flush=True)
    dec = decode.summarise(timing.round_robin(druns, args.rounds), dfacts)
  paired = train_step.paired_ratios(train)
  if TORCH in train and "lora_r4" in train:
    paired[f"{TORCH} / lora_r4"] = train_step.paired(train, TORCH, "lora_r4")
  report = {
      "benchmark": "moe-jax", "settings": {
          "preset": args.preset, "layers": f"{config.num_encoder_layers}+{config.num_decoder_layers} layers",
          "batch_size": args.batch_size, "lengths": [in_len, out_len], "rounds": args.rounds,
          "decode": list(map(int, args.decode.split(","))) if args.decode else None,
          "baseline": args.baseline},
      "device": jax.devices()[0].device_kind, "host": platform.node(), "cpu_count": os.cpu_count(),
      "threads": os.environ.get("BENCH_THREADS", "threads not pinned by bench.run"),
      "allocator": allocator(),
      "jax": jax.__version__, "matmul_peak_gflops": peak / 1e9, "train": train,
      "paired_ratios": paired, "decode": dec,
      "date": time.strftime("%Y-%m-%d", time.gmtime()), "revision": measured,
      "total_s": time.perf_counter() - t_start}
  os.makedirs(args.out_dir, exist_ok=True)
  write_text(os.path.join(args.out_dir, "bench.json"), json.dumps(report, indent=1))
  text = markdown(report)
  write_text(os.path.join(args.out_dir, "bench.md"), text)
  print(text)
  return report


if __name__ == "__main__":
  main()
