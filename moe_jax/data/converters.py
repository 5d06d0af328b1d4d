"""Feature converters: seqio task features -> model batches (t5x feature names).

Encoder-decoder: `encoder_input_tokens`, `decoder_input_tokens` (targets
shifted right, 0 first), `decoder_target_tokens`, `decoder_loss_weights`; with
`pack=True` seqio's packing adds segment ids and positions. Decoder-only
prefix LM: one sequence inputs + targets, `decoder_causal_attention` on the
inputs part, loss (and rank scores) on the targets part only.

Unpacked batches also carry per-example scalars (`task_id`, `domain_id`,
`template_id` and, for rank classification, `idx`, `choice_idx`,
`is_correct`). Packed rows hold several examples, so the ids travel per
segment: `task_id` etc. become [id_slots(lengths)] per row, entry j the id of
the example packed as segment j + 1 (the segment ids of its encoder and
decoder tokens), -1 where the row has fewer segments; the adapters look each
token's id up by its segment id (`moe_jax.adapters.ids_by_segment`).
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


def id_slots(lengths: Mapping[str, int]) -> int:
  """Segment slots of a packed row's id features. seqio packs at most this
  many examples into one row (it packs groups of max(lengths) examples)."""
  return max(lengths["inputs"], lengths["targets"])


def _pack_encdec(ds, lengths, ids: Sequence[str]):
  """seqio's packing and t5x features (as seqio.EncDecFeatureConverter, which
  takes no extra features when packing), with each id in `ids` packed as a
  one-element sequence: the k-th example of a row, segment k, leaves its id in
  slot k - 1. (Segment k is then the same example in the encoder and the
  decoder, as cross-attention already assumes: every example has inputs.)"""
  for k in ids:
    if ds.element_spec[k].shape.rank != 0:
      raise ValueError(f"pack=True packs '{k}' as one id per example, got shape {ds.element_spec[k].shape}")

  def to_slots(ex):
    out = {"inputs": ex["inputs"], "targets": ex["targets"]}
    for k in ids:
      v = tf.cast(ex[k], tf.int32)
      with tf.control_dependencies([tf.debugging.assert_non_negative(v, message=f"packing needs {k} >= 0")]):
        out[k] = tf.reshape(v + 1, [1])  # seqio's packing drops 0s as padding: shift ids by 1
    return out

  def convert(ex):
    targets, segments = ex["targets"], ex["targets_segment_ids"]
    out = {"encoder_input_tokens": ex["inputs"], "encoder_segment_ids": ex["inputs_segment_ids"],
           "encoder_positions": ex["inputs_positions"], "decoder_target_tokens": targets,
           "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(targets, sequence_id=segments),
           "decoder_loss_weights": tf.cast(targets > 0, tf.int32), "decoder_segment_ids": segments,
           "decoder_positions": ex["targets_positions"]}
    out.update({k: ex[k] - 1 for k in ids})  # back to the ids; empty slots -1
    return out

  task_lengths = {"inputs": lengths["inputs"], "targets": lengths["targets"], **{k: id_slots(lengths) for k in ids}}
  packed = seqio.utils.trim_and_pack_dataset(ds.map(to_slots), task_lengths)
  return packed.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def encdec(ds: tf.data.Dataset, lengths: Mapping[str, int], *, pack: bool = False,
           passthrough: Sequence[str] = CONTEXT_FEATURES) -> tf.data.Dataset:
  if pack:
    return _pack_encdec(ds, lengths, [k for k in passthrough if k in ds.element_spec])

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
