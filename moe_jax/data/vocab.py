"""The T5 SentencePiece vocabulary with 100 sentinel ids, as t5x uses, read
from a local path or a URL.

Where it comes from (`paths.vocabulary_path`), first that applies: the
VOCABULARY gin macro (which sets MOE_JAX_VOCABULARY) or that environment
variable; the data kit's copy (`DATA_DIR/t5_vocab/spiece.model`) when it
exists; the released T5 vocabulary in Google's public bucket, the default of
t5x and seqio (the same SentencePiece model as the kit's Hugging Face
`t5-small` copy).
"""
from __future__ import annotations

import functools
import os

import seqio

from moe_jax.utils import fs, paths

VOCAB_ENV = paths.VOCAB_ENV
EXTRA_IDS = 100


def t5_vocabulary(path: str = None) -> seqio.SentencePieceVocabulary:
  """Resolved when called, so a data dir or VOCABULARY set after import is
  honoured; loaded once per process (one per host on a pod) and path."""
  return _load(fs.normalize(path or paths.vocabulary_path()), path is None and VOCAB_ENV not in os.environ)


@functools.lru_cache(maxsize=None)
def _load(path: str, defaulted: bool) -> seqio.SentencePieceVocabulary:
  try:
    model = fs.read_bytes(path)
  except Exception as e:  # pylint: disable=broad-except  tf.errors.* for URLs, OSError locally
    why = getattr(e, "message", None) or getattr(e, "strerror", None) or type(e).__name__
    if defaulted:
      raise FileNotFoundError(
          f"T5 SentencePiece vocabulary: neither the data kit's copy {paths.t5_vocab_path()} (absent) "
          f"nor {path} could be read ({why}); set VOCABULARY (gin) or {VOCAB_ENV} to a local path "
          "or URL of spiece.model") from None
    raise FileNotFoundError(f"VOCABULARY={path}: cannot be read ({why})") from None
  if not model:
    raise ValueError(f"VOCABULARY={path}: the file is empty")
  vocab = seqio.SentencePieceVocabulary(path, extra_ids=EXTRA_IDS)
  try:
    vocab.vocab_size  # parses the model now, so a bad file is named here
  except Exception as e:  # pylint: disable=broad-except  sentencepiece raises RuntimeError / its own
    raise ValueError(f"VOCABULARY={path}: not a SentencePiece model ({type(e).__name__}: {e})") from None
  return vocab


def output_features(vocab=None) -> dict:
  vocab = vocab or t5_vocabulary()
  return {"inputs": seqio.Feature(vocab, add_eos=True, required=False),
          "targets": seqio.Feature(vocab, add_eos=True)}
