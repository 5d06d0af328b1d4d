"""Puts a `make bench` result (and `make demo`'s routing plot) into the docs.

    make bench && python -m bench.publish                 # or: make bench-publish
    python -m bench.publish --demo_dir=runs/demo          # also the routing plot

From `bench_results/bench.json` it writes, all derived from that one file:
- `docs/bench/bench.json`: the result itself, committed as the record;
- `docs/bench/ratios.png`: the step-cost ratios (median of per-round ratios,
  min-max whiskers, the targets as marks) and decoding speed against the backbone;
- the tables in `docs/benchmark.md` between `<!-- bench:tables -->` and
  `<!-- /bench:tables -->`, and the step-cost sentence of README.md between
  `<!-- bench:headline -->` and `<!-- /bench:headline -->`.
`--demo_dir` copies `<demo_dir>/eval/expert_probs.png` to `docs/images/`.
`--check` rewrites nothing: exit 1 if the docs' tables or headline differ from
what `docs/bench/bench.json` gives (tests/test_docs.py runs it that way).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys

from bench import run as bench_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join("docs", "bench", "bench.json")
CHART = os.path.join("docs", "bench", "ratios.png")
PLOT = os.path.join("docs", "images", "expert_probs.png")
# The step-cost targets the benchmark was written against (the wave-one issues).
TARGETS = {"mov_10 / ia3": 1.08, "molora_10 / lora_r4": 1.12}
LABELS = {"mov_10 / ia3": "MoV-10 / IA3", "molora_10 / lora_r4": "MoLoRA-10 / LoRA-r4",
          "lora_r40 / lora_r4": "LoRA-r40 / LoRA-r4", "molora_10 / lora_r40": "MoLoRA-10 / LoRA-r40",
          "moa_4 / ia3": "MoA-4 / IA3", f"{bench_run.TORCH} / lora_r4": "HF peft LoRA-r4 / ours"}


def provenance(report) -> str:
  return (f"From `make bench` on {report.get('date', 'an unrecorded date')}, revision "
          f"`{report.get('revision', 'unrecorded')}`, host `{report['host']}` ({report['cpu_count']} CPUs, "
          f"{report['device']}, {report['threads']}); the record is [bench/bench.json](bench/bench.json), "
          f"and `python -m bench.publish` wrote this block and [the chart](bench/ratios.png) from it.")


def targets(report) -> str:
  p = report["paired_ratios"]
  parts = []
  for key, target in TARGETS.items():
    if key in p:
      m = p[key]["median"]
      parts.append(f"{LABELS[key]} {m:.3f} against <= {target:.2f}: **{'met' if m <= target else 'missed'}**")
  return "Targets (median of per-round ratios): " + "; ".join(parts) + "."


def tables(report) -> str:
  return (provenance(report) + "\n\n![step-cost ratios and decoding speed](bench/ratios.png)\n\n"
          + bench_run.markdown(report) + "\n" + targets(report))


def headline(report) -> str:
  p = {k: v["median"] for k, v in report["paired_ratios"].items()}
  parts = [f"{LABELS[k]} {p[k]:.2f}" for k in ("mov_10 / ia3", "molora_10 / lora_r4", "molora_10 / lora_r40")
           if k in p]
  torch_key = f"{bench_run.TORCH} / lora_r4"
  s = report["settings"]
  text = (f"`{s['preset']}`, batch {s['batch_size']}, {s['lengths'][0]}/{s['lengths'][1]}, one core, "
          f"medians of per-round ratios, {report.get('date', 'undated')}): " + ", ".join(parts))
  if torch_key in p:
    text += f"; the same LoRA step in peft on PyTorch takes {p[torch_key]:.2f}x ours"
  return text + "."


def chart(report, path: str) -> None:
  import matplotlib  # only here: the rest of the script reads and writes text
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pyplot after the backend is chosen (no display)

  ratios = [(LABELS.get(k, k), v) for k, v in report["paired_ratios"].items() if not k.startswith("before:")]
  decode = [(k, v["speed_vs_base"]) for k, v in report.get("decode", {}).items() if k != "base"]
  fig, (a, b) = plt.subplots(1, 2, figsize=(8.0, 2.6), gridspec_kw={"width_ratios": [3, 2]})
  names = [n for n, _ in ratios][::-1]
  med = [v["median"] for _, v in ratios][::-1]
  err = [[m - v["min"] for m, (_, v) in zip(med, ratios[::-1])], [v["max"] - m for m, (_, v) in zip(med, ratios[::-1])]]
  a.barh(names, med, xerr=err, color="#4c72b0", capsize=2)
  for key, target in TARGETS.items():
    if LABELS[key] in names:
      a.plot([target], [names.index(LABELS[key])], marker="|", markersize=14, color="#c44e52")
  a.axvline(1.0, color="grey", lw=0.8)
  a.set_xlim(0.8, max(1.4, max(v["max"] for _, v in ratios) + 0.05))
  a.set_title("train step time ratio (red: target)", fontsize=9)
  if decode:
    b.barh([n for n, _ in decode][::-1], [v for _, v in decode][::-1], color="#55a868")
    b.axvline(1.0, color="grey", lw=0.8)
    b.set_xlim(0.6, 1.1)
    b.set_title("decoding tokens/s / backbone", fontsize=9)
  else:
    b.axis("off")
  for ax in (a, b):
    ax.tick_params(labelsize=8)
  s = report["settings"]
  fig.suptitle(f"make bench, {s['preset']} ({s['layers']}), {report['device']}, {report.get('date', '')}",
               fontsize=9)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)


def replace_between(text: str, name: str, body: str, where: str, inline: bool = False) -> str:
  """`body` between the page's `<!-- name -->` and `<!-- /name -->` (on lines of
  their own, or inline within a sentence)."""
  pattern = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->", re.S)
  if not pattern.search(text):
    raise ValueError(f"{where}: no <!-- {name} --> ... <!-- /{name} --> block")
  sep = "" if inline else "\n"
  return pattern.sub(lambda m: f"<!-- {name} -->{sep}{body}{sep}<!-- /{name} -->", text, count=1)


def rendered(report) -> dict:
  """{doc path: its text with the generated blocks filled from `report`}."""
  out = {}
  for page, name, body, inline in ((os.path.join("docs", "benchmark.md"), "bench:tables", tables(report), False),
                                   ("README.md", "bench:headline", headline(report), True)):
    path = os.path.join(REPO, page)
    text = out.get(page, open(path).read())
    out[page] = replace_between(text, name, body.strip("\n"), page, inline)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--results", default=os.path.join("bench_results", "bench.json"),
                 help="a `make bench` result (default: %(default)s)")
  p.add_argument("--demo_dir", default=None, help="a `make demo` run whose eval/expert_probs.png to publish")
  p.add_argument("--check", action="store_true", help="only compare the docs with docs/bench/bench.json")
  args = p.parse_args(argv)
  if args.check:
    report = json.load(open(os.path.join(REPO, RECORD)))
    stale = [page for page, text in rendered(report).items() if open(os.path.join(REPO, page)).read() != text]
    if stale:
      print(f"error: {', '.join(stale)} differ from what {RECORD} gives; run python -m bench.publish "
            f"--results={RECORD}", file=sys.stderr)
      return 1
    return 0
  try:
    report = json.load(open(args.results))
  except (OSError, ValueError) as e:
    print(f"error: --results={args.results}: {e}", file=sys.stderr)
    return 2
  os.makedirs(os.path.join(REPO, "docs", "bench"), exist_ok=True)
  pages = rendered(report)
  chart(report, os.path.join(REPO, CHART))
  if os.path.abspath(args.results) != os.path.join(REPO, RECORD):
    bench_run.write_text(os.path.join(REPO, RECORD), json.dumps(report, indent=1))
  for page, text in pages.items():
    bench_run.write_text(os.path.join(REPO, page), text)
  print(f"wrote {RECORD}, {CHART}, {', '.join(pages)}")
  if args.demo_dir:
    src = os.path.join(args.demo_dir, "eval", "expert_probs.png")
    if not os.path.isfile(src):
      print(f"error: --demo_dir={args.demo_dir}: no eval/expert_probs.png (run make demo first)", file=sys.stderr)
      return 2
    os.makedirs(os.path.join(REPO, "docs", "images"), exist_ok=True)
    shutil.copyfile(src, os.path.join(REPO, PLOT) + ".tmp")
    os.replace(os.path.join(REPO, PLOT) + ".tmp", os.path.join(REPO, PLOT))
    print(f"wrote {PLOT}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
