"""The paper presets sized for the TPU slices users book, by the XLA:TPU compiler.

  python -m bench.pod_sizing --out_dir=bench_results [--presets=mov_t5_3b,...] [--slices=v4-32,...]

Runs `python -m moe_jax.plan --topology=SLICE` for each preset x slice (the
preset as shipped; on slices with more chips than BATCH_SIZE rows the mesh
gets a model axis so every chip holds whole rows) and writes
pod_sizing.json and pod_sizing.md: per-chip GiB of the train, score and
decode steps, the train step's headroom, compile seconds, the roofline step
time and days to TRAIN_STEPS. A run that does not fit is a row saying so.
Takes ~2 minutes per XL plan and ~3 per XXL plan on one CPU core.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

PRESETS = ("ia3_t5_3b", "lora_t5_3b", "molora_t5_3b", "mov_t5_3b", "mov_t5_11b")
SLICES = ("v4-32", "v5litepod-64")
BATCH_SIZE = 32  # every paper preset's


def mesh_for(slice_name: str) -> str:
  """data x model for a slice: data takes every chip up to BATCH_SIZE rows."""
  from moe_jax.tools import tpu_slices
  chips = tpu_slices.parse(slice_name).chips
  model = max(1, chips // BATCH_SIZE)
  return f"({chips // model}, {model})"


def plan_one(preset: str, slice_name: str, repo: str) -> dict:
  mesh = mesh_for(slice_name)
  cmd = [sys.executable, "-m", "moe_jax.plan", f"--gin_file=gin_configs/{preset}.gin", f"--topology={slice_name}",
         f"--gin.MESH_SHAPE={mesh}"]
  out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  row = {"preset": preset, "slice": slice_name, "mesh_shape": mesh,
         "command": "python -m moe_jax.plan " + " ".join(f'"{c}"' if " " in c else c for c in cmd[3:])}
  if out.returncode == 2 and out.stderr.strip().startswith("error: "):
    row["does_not_fit"] = out.stderr.strip().splitlines()[-1][len("error: "):]
    return row
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
  row["plan"] = json.loads(out.stdout.strip().splitlines()[-1])
  return row


def markdown(rows: list[dict], meta: dict) -> str:
  lines = [f"Planned with XLA:TPU (libtpu {meta['libtpu']}) on {meta['host']}, {meta['date']}: "
           "`python -m bench.pod_sizing`. GiB per chip (arguments + outputs - donated + temporaries); "
           "headroom of the train step against the chip's HBM; roofline = lower bound on the step time "
           "from the chip's peak bf16 FLOP/s and HBM bandwidth.", "",
           "| preset | slice (mesh) | train GiB | headroom GiB | score GiB | decode GiB | compile s "
           "(train/score/decode) | roofline step s | days to TRAIN_STEPS |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    where = f"{r['slice']} {r['mesh_shape']}"
    if "does_not_fit" in r:
      lines.append(f"| {r['preset']} | {where} | does not fit: {r['does_not_fit']} | | | | | | |")
      continue
    p, s = r["plan"], r["plan"]["steps"]
    compile_s = "/".join(f"{s[k]['compile_s']:.0f}" for k in ("train", "score", "decode"))
    lines.append(f"| {r['preset']} | {where} | {s['train']['per_chip_total_gib']:.2f} | "
                 f"{s['train']['headroom_gib']:.2f} | {s['score']['per_chip_total_gib']:.2f} | "
                 f"{s['decode']['per_chip_total_gib']:.2f} | {compile_s} | {s['train']['roofline_s']:.3f} | "
                 f"{p.get('days_to_train_steps', float('nan')):.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out_dir", default="bench_results")
  ap.add_argument("--presets", default=",".join(PRESETS))
  ap.add_argument("--slices", default=",".join(SLICES))
  args = ap.parse_args(argv)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  from importlib import metadata
  meta = {"libtpu": metadata.version("libtpu"), "host": f"{platform.machine()} {os.cpu_count()} cores",
          "date": datetime.date.today().isoformat()}
  rows = []
  for preset in args.presets.split(","):
    for slice_name in args.slices.split(","):
      rows.append(plan_one(preset, slice_name, repo))
      print(f"{preset} on {slice_name}: {'does not fit' if 'does_not_fit' in rows[-1] else 'planned'}", flush=True)
  os.makedirs(args.out_dir, exist_ok=True)
  with open(os.path.join(args.out_dir, "pod_sizing.json"), "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=1)
  text = markdown(rows, meta)
  with open(os.path.join(args.out_dir, "pod_sizing.md"), "w") as f:
    f.write(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
