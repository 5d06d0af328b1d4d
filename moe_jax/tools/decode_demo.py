"""Load a T5 (random or from a local HF directory) and decode a few prompts.

    python -m moe_jax.decode_demo                       # random t5_1_1_tiny, T5 vocabulary
    python -m moe_jax.decode_demo --hf_dir=/path/to/flan-t5-small --beams=4

With random weights the output is gibberish by construction; the point is the
path from text through the SentencePiece vocabulary, the KV-cached greedy and
beam decoders, and back.
"""
from __future__ import annotations
# Imports inside functions: jax and the model load after argparse has answered --help or a bad flag.

import sys
import time

from moe_jax.utils import cli

PROMPTS = [
    "Premise: The cat sat on the mat. Hypothesis: A cat is sitting. Does the premise entail the hypothesis?",
    "Translate to German: The house is wonderful.",
    "Which is larger, the sun or the moon?",
]


def main(argv=None) -> int:
  parser = cli.parser(__doc__)
  parser.add_argument("--hf_dir", help="Hugging Face T5 checkpoint directory (local or a URL)")
  parser.add_argument("--model", default="t5_1_1_tiny", help="preset used when --hf_dir is not given")
  parser.add_argument("--vocab", default=None, help="SentencePiece model, local or a URL (default: VOCABULARY's, see moe_jax/data/vocab.py)")
  parser.add_argument("--max_decode_length", type=int, default=16, help="new tokens per prompt")
  parser.add_argument("--beams", type=int, default=4, help="beam width of the second decode (the first is greedy)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (without --hf_dir)")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  import sentencepiece as spm

  from moe_jax.training import frozen_source
  from moe_jax.utils import fs, paths
  from moe_jax.models import build_model, get_preset, load_hf_checkpoint

  try:
    vocab_path = args.vocab or paths.vocabulary_path()
    sp = spm.SentencePieceProcessor(model_proto=fs.read_bytes(vocab_path))
  except OSError as e:
    print(f"error: SentencePiece vocabulary {vocab_path}: {e.strerror or e} "
          f"(pass --vocab, set {paths.VOCAB_ENV} or MOE_JAX_DATA_DIR)", file=sys.stderr)
    return 2

  if args.hf_dir:
    model, params = load_hf_checkpoint(args.hf_dir)
    source = args.hf_dir
  else:
    model = build_model(get_preset(args.model))
    params = frozen_source.init_params(model, args.seed)  # the trainer's init program
    source = f"{args.model} (random weights, seed {args.seed})"
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  print(f"model: {source}; {n_params:,} parameters")

  rows = [sp.encode(p)[:63] + [1] for p in PROMPTS]  # EOS-terminated, as seqio does
  width = max(len(r) for r in rows)
  batch = {"encoder_input_tokens": jnp.asarray(np.array([r + [0] * (width - len(r)) for r in rows], np.int32))}
  for beams in sorted({1, args.beams}):
    start = time.time()
    out = np.asarray(model.predict_batch(params, batch, max_decode_length=args.max_decode_length,
                                         num_beams=beams))
    label = "greedy" if beams == 1 else f"beam={beams}"
    print(f"\n[{label}] {time.time() - start:.1f}s (includes compilation)")
    for prompt, tokens in zip(PROMPTS, out):
      print(f"  {prompt[:60]!r}\n    -> ids {list(map(int, tokens))}\n    -> {_detok(sp, tokens)!r}")
  return 0


def _detok(sp, tokens) -> str:
  """Decode up to EOS; ids past the SentencePiece model (T5's 100 sentinels and
  the padding of the 32128-row embedding) are shown as <id:N>."""
  text, run = [], []
  for t in (int(t) for t in tokens):
    if t == 1:
      break
    if 1 < t < sp.get_piece_size():
      run.append(t)
      continue
    text.append(sp.decode(run))
    run = []
    if t > 1:
      text.append(f"<id:{t}>")
  return "".join(text + [sp.decode(run)])


if __name__ == "__main__":
  sys.exit(main())
