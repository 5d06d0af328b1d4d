"""The T5 SentencePiece vocabulary with 100 sentinel ids, as t5x uses."""
import functools
import os

import seqio

from moe_jax import paths


def t5_vocabulary(path: str = None) -> seqio.SentencePieceVocabulary:
  """Resolved when called, so a data dir set after import is honoured."""
  return _load(os.path.abspath(path or paths.t5_vocab_path()))


@functools.lru_cache(maxsize=None)
def _load(path: str) -> seqio.SentencePieceVocabulary:
  if not os.path.exists(path):
    raise FileNotFoundError(f"T5 SentencePiece model not found at {path} (set MOE_JAX_DATA_DIR)")
  return seqio.SentencePieceVocabulary(path, extra_ids=100)


def output_features(vocab=None) -> dict:
  vocab = vocab or t5_vocabulary()
  return {"inputs": seqio.Feature(vocab, add_eos=True, required=False),
          "targets": seqio.Feature(vocab, add_eos=True)}
