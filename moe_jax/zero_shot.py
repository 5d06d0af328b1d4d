"""Zero-shot rank-classification evaluation of a model on a held-out suite.

    python -m moe_jax.zero_shot --suite=t0_eval --max_examples_per_template=4 \\
        --output_dir=/tmp/zero_shot                    # random t5_1_1_tiny
    python -m moe_jax.zero_shot --hf_dir=/ckpt/t5-v1_1-lm-adapt-xl --output_dir=...

Writes <output_dir>/zero_shot.json and zero_shot.md (per template accuracy,
per dataset median, average over datasets, missing datasets, truncation) and
prints the table. Random weights score near chance by construction.
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--suite", default="t0_eval", choices=["t0_eval", "commonsense"])
  parser.add_argument("--model", default="t5_1_1_tiny", help="preset for a random model")
  parser.add_argument("--hf_dir", default=None, help="local HF T5 checkpoint instead of a random model")
  parser.add_argument("--max_examples_per_template", type=int, default=None)
  parser.add_argument("--inputs_length", type=int, default=256)
  parser.add_argument("--targets_length", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--datasets", default=None,
                      help="comma-separated dataset keys to keep from the suite (default: all)")
  args = parser.parse_args(argv)

  import jax

  import tasks
  from moe_jax.data import rank_eval
  from moe_jax.models import build_model, get_preset, load_hf_checkpoint

  if args.hf_dir:
    model, params = load_hf_checkpoint(args.hf_dir)
  else:
    model = build_model(get_preset(args.model))
    params = model.init(jax.random.key(args.seed))
  lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  suite = tasks.eval_suite(args.suite)
  if args.datasets:
    wanted = args.datasets.split(",")
    unknown = sorted(set(wanted) - {d.key for d in suite})
    if unknown:
      print(f"error: unknown dataset(s) {unknown}; suite {args.suite} has {[d.key for d in suite]}",
            file=sys.stderr)
      return 2
    suite = [d for d in suite if d.key in wanted]
  start = time.time()
  report = rank_eval.evaluate(lambda b: model.score_batch(params, b), suite, lengths,
                              batch_size=args.batch_size,
                              max_examples_per_template=args.max_examples_per_template,
                              decoder_only=model.config.family == "decoder",
                              progress=lambda name: print(f"  scoring {name}", file=sys.stderr))
  report["model"] = args.hf_dir or f"{args.model} (random, seed {args.seed})"
  json_path, md_path = rank_eval.write_report(report, args.output_dir)
  print(rank_eval.markdown(report))
  print(f"wrote {json_path} and {md_path} in {time.time() - start:.0f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
