"""Feature converters: seqio task features -> model batches (t5x feature names).

Encoder-decoder: `encoder_input_tokens`, `decoder_input_tokens` (targets
shifted right, 0 first), `decoder_target_tokens`, `decoder_loss_weights`; with
`pack=True` seqio's packing adds segment ids and positions. Decoder-only
prefix LM: one sequence inputs + targets, `decoder_causal_attention` on the
inputs part, loss (and rank scores) on the targets part only.

Unpacked batches also carry per-example scalars (`task_id`, `domain_id` and,
for rank classification, `idx`, `choice_idx`, `is_correct`). Packing puts
examples of different tasks in one row, so it refuses those features.
Over-long sequences are cut to the feature length keeping the final EOS.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

EOS = 1
CONTEXT_FEATURES = ("task_id", "domain_id", "template_id")
RANK_FEATURES = ("idx", "choice_idx", "is_correct")


def _trim_pad(tokens, length):
  n = tf.shape(tokens)[0]
  cut = tokens[:length]
  # Truncated: the last kept token becomes EOS, as seqio's append_eos_after_trim.
  cut = tf.cond(n > length, lambda: tf.concat([cut[:-1], [EOS]], 0), lambda: cut)
  return tf.pad(cut, [[0, length - tf.shape(cut)[0]]])


def _scalars(ex, keys):
  return {k: ex[k] for k in keys if k in ex}


def encdec(ds: tf.data.Dataset, lengths: Mapping[str, int], *, pack: bool = False,
           passthrough: Sequence[str] = CONTEXT_FEATURES) -> tf.data.Dataset:
  if pack:
    present = [k for k in passthrough if k in ds.element_spec]
    if present:
      raise ValueError(f"pack=True cannot carry per-example features {present}: a packed row mixes "
                       "examples (use pack=False for task/domain-conditioned methods)")
    converter = seqio.EncDecFeatureConverter(pack=True)
    return converter(ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]}), lengths)

  def convert(ex):
    inputs = _trim_pad(ex["inputs"], lengths["inputs"])
    targets = _trim_pad(ex["targets"], lengths["targets"])
    out = {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
           "decoder_input_tokens": tf.concat([[0], targets[:-1]], 0),
           "decoder_loss_weights": tf.cast(targets > 0, tf.int32)}
    out.update(_scalars(ex, passthrough))
    return out
  return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def prefix_lm(ds: tf.data.Dataset, length: int, *, passthrough: Sequence[str] = CONTEXT_FEATURES
              ) -> tf.data.Dataset:
  """inputs + targets as one sequence of `length` model positions.

  decoder_input_tokens = seq[:-1], decoder_target_tokens = seq[1:]; the
  prompt (inputs) is marked by decoder_causal_attention; loss weights cover
  the positions whose next token is a target token. Inputs are cut first when
  too long, so the targets survive.
  """
  def convert(ex):
    targets = ex["targets"][:length]
    room = tf.maximum(length + 1 - tf.shape(targets)[0], 1)
    inputs = ex["inputs"][:room]
    seq = tf.concat([inputs, targets], 0)[:length + 1]
    n_in = tf.shape(inputs)[0]
    n = tf.shape(seq)[0]
    pos = tf.range(length)
    pad = lambda x: tf.pad(x, [[0, length - tf.shape(x)[0]]])
    out = {"decoder_input_tokens": pad(seq[:-1]), "decoder_target_tokens": pad(seq[1:]),
           "decoder_causal_attention": tf.cast(pos < n_in, tf.int32),
           "decoder_loss_weights": tf.cast((pos >= n_in - 1) & (pos < n - 1), tf.int32)}
    out.update(_scalars(ex, passthrough))
    return out
  return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def batches(ds: tf.data.Dataset, batch_size: int, drop_remainder: bool = False):
  """numpy batches (dicts of arrays)."""
  for batch in ds.batch(batch_size, drop_remainder=drop_remainder).as_numpy_iterator():
    yield {k: np.asarray(v) for k, v in batch.items()}
