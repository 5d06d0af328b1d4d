"""Zero-shot rank-classification evaluation of a model on a held-out suite.

    python -m moe_jax.zero_shot --suite=t0_eval --max_examples_per_template=4 \\
        --output_dir=/tmp/zero_shot                    # random t5_1_1_tiny
    python -m moe_jax.zero_shot --hf_dir=/ckpt/t5-v1_1-lm-adapt-xl --output_dir=...

Writes <output_dir>/zero_shot.json and zero_shot.md (per template accuracy,
per dataset median, average over datasets, missing datasets, truncation) and
prints the table. Random weights score near chance by construction.
"""
from __future__ import annotations
# Imports inside functions: jax, TensorFlow and the model load after argparse has answered --help
# or a bad flag.

import sys
import time

from moe_jax.utils import quiet  # noqa: F401  before TensorFlow is imported
from moe_jax.utils import cli


def main(argv=None) -> int:
  parser = cli.parser(__doc__)
  parser.add_argument("--suite", default="t0_eval", choices=["t0_eval", "commonsense"], help="held-out suite")
  parser.add_argument("--model", default="t5_1_1_tiny", help="preset for a random model")
  parser.add_argument("--hf_dir", default=None, help="local HF T5 checkpoint instead of a random model")
  parser.add_argument("--max_examples_per_template", type=int, default=None,
                      help="rows drawn at random (fixed seed) per template (default: the whole split)")
  parser.add_argument("--inputs_length", type=int, default=256, help="prompt tokens (longer ones are truncated)")
  parser.add_argument("--targets_length", type=int, default=32, help="answer-choice tokens")
  parser.add_argument("--batch_size", type=int, default=32, help="rows scored per step")
  parser.add_argument("--output_dir", required=True, help="where zero_shot.json and zero_shot.md go")
  parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (without --hf_dir)")
  parser.add_argument("--datasets", default=None,
                      help="comma-separated dataset keys to keep from the suite (default: all)")
  args = parser.parse_args(argv)
  quiet.import_tensorflow()
  try:
    return _run(args)
  except Exception as e:  # pylint: disable=broad-except  bad input: one line, status 2
    from moe_jax import errors, gin_utils
    if isinstance(e, (errors.MoeJaxError, ValueError, KeyError, OSError)):
      print(f"error: {gin_utils.error_message(e)}", file=sys.stderr)
      return errors.exit_code(e)
    raise


def _run(args) -> int:
  from moe_jax.utils import validation
  validation.positive_int("--max_examples_per_template", args.max_examples_per_template, allow_none=True)
  for name in ("inputs_length", "targets_length", "batch_size"):
    validation.positive_int(f"--{name}", getattr(args, name))
  validation.non_negative_int("--seed", args.seed)
  validation.output_dir("--output_dir", args.output_dir)
  if args.hf_dir:
    validation.existing_path("--hf_dir", args.hf_dir)

  import tasks
  from moe_jax.data import rank_eval
  from moe_jax.evaluation import EvalProgress
  from moe_jax.training import frozen_source
  from moe_jax.models import build_model, get_preset, load_hf_checkpoint

  suite = tasks.eval_suite(args.suite)
  if args.datasets:
    wanted = args.datasets.split(",")
    validation.names_in("--datasets", wanted, [d.key for d in suite], f"{args.suite} dataset")
    suite = [d for d in suite if d.key in wanted]
  if not any(d.present for d in suite):
    raise ValueError(f"the data source has none of the datasets {[d.key for d in suite]} "
                     "(the report would average nothing; check MOE_JAX_DATA_DIR)")
  if args.hf_dir:
    model, params = load_hf_checkpoint(args.hf_dir)
  else:
    model = build_model(get_preset(args.model))
    params = frozen_source.init_params(model, args.seed)  # the trainer's init program
  lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  start = time.time()
  progress = EvalProgress(suite)
  report = rank_eval.evaluate(lambda b: model.score_batch(params, b), suite, lengths,
                              batch_size=args.batch_size,
                              max_examples_per_template=args.max_examples_per_template,
                              decoder_only=model.config.family == "decoder", progress=progress)
  progress.finish()
  report["model"] = args.hf_dir or f"{args.model} (random, seed {args.seed})"
  json_path, md_path = rank_eval.write_report(report, args.output_dir)
  print(rank_eval.markdown(report))
  print(f"wrote {json_path} and {md_path} in {time.time() - start:.0f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
