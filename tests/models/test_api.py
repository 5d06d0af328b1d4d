"""loss_fn / score_batch semantics, packing and prefix-LM weights."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.models import api, build_model, get_preset

T5_BATCH = {
    "encoder_input_tokens": jnp.array([[5, 6, 7, 1], [8, 9, 1, 0]], jnp.int32),
    "decoder_input_tokens": jnp.array([[0, 4, 5], [0, 6, 0]], jnp.int32),
    "decoder_target_tokens": jnp.array([[4, 5, 1], [6, 1, 0]], jnp.int32),
}


@pytest.fixture(scope="module")
def t5():
  model = build_model(get_preset("t5_1_1_tiny", vocab_size=32), z_loss=1e-3)
  return model, model.init(jax.random.key(0))


def _manual_xent(model, params, batch):
  logits = np.asarray(model.compute_logits(params, batch), np.float64)
  log_z = np.log(np.exp(logits).sum(-1))
  tgt = np.asarray(batch["decoder_target_tokens"])
  xent = log_z - np.take_along_axis(logits, tgt[..., None], -1)[..., 0]
  return xent, log_z, (tgt > 0).astype(np.float64)


def test_loss_is_token_mean_cross_entropy_plus_z_loss(t5):
  model, params = t5
  loss, metrics = model.loss_fn(params, T5_BATCH, None)
  xent, log_z, w = _manual_xent(model, params, T5_BATCH)
  expected = ((xent + 1e-3 * log_z ** 2) * w).sum() / w.sum()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["num_tokens"], 5)
  score = model.score_batch(params, T5_BATCH)
  np.testing.assert_allclose(score, -(xent * w).sum(-1), rtol=1e-5)


def test_average_per_sequence_normalisation(t5):
  model, params = t5
  per_seq = build_model(model.config, z_loss=0.0, loss_normalizing_factor="average_per_sequence")
  loss, _ = per_seq.loss_fn(params, T5_BATCH, None)
  xent, _, w = _manual_xent(model, params, T5_BATCH)
  np.testing.assert_allclose(loss, np.mean((xent * w).sum(-1) / w.sum(-1)), rtol=1e-5)
  with pytest.raises(ValueError, match="loss_normalizing_factor"):
    build_model(model.config, loss_normalizing_factor="per_token_please")


def test_dropout_uses_the_rng(t5):
  model, params = t5
  noisy = build_model(dataclasses.replace(model.config, dropout_rate=0.3), z_loss=model.z_loss)
  a, _ = noisy.loss_fn(params, T5_BATCH, jax.random.key(1))
  b, _ = noisy.loss_fn(params, T5_BATCH, jax.random.key(1))
  c, _ = noisy.loss_fn(params, T5_BATCH, jax.random.key(2))
  d, _ = noisy.loss_fn(params, T5_BATCH, None)
  e, _ = model.loss_fn(params, T5_BATCH, None)
  assert a == b and a != c and a != d
  np.testing.assert_allclose(d, e, rtol=1e-6)


def test_t5_packing_equals_separate_examples(t5):
  model, params = t5
  sep = model.compute_logits(params, T5_BATCH)
  packed = {
      "encoder_input_tokens": jnp.array([[5, 6, 7, 1, 8, 9, 1]]),
      "encoder_segment_ids": jnp.array([[1, 1, 1, 1, 2, 2, 2]]),
      "decoder_input_tokens": jnp.array([[0, 4, 5, 0, 6]]),
      "decoder_target_tokens": jnp.array([[4, 5, 1, 6, 1]]),
      "decoder_segment_ids": jnp.array([[1, 1, 1, 2, 2]]),
  }
  out = model.compute_logits(params, packed)
  np.testing.assert_allclose(out[0, :3], sep[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 3:], sep[1, :2], atol=1e-5)


def test_decoder_only_packing_and_prefix_weights():
  model = build_model(get_preset("llama_tiny", vocab_size=32))
  params = model.init(jax.random.key(0))
  a = {"decoder_input_tokens": jnp.array([[5, 6, 7]]), "decoder_target_tokens": jnp.array([[6, 7, 2]])}
  b = {"decoder_input_tokens": jnp.array([[9, 4]]), "decoder_target_tokens": jnp.array([[4, 2]])}
  packed = {"decoder_input_tokens": jnp.array([[5, 6, 7, 9, 4]]),
            "decoder_target_tokens": jnp.array([[6, 7, 2, 4, 2]]),
            "decoder_segment_ids": jnp.array([[1, 1, 1, 2, 2]]),
            "decoder_positions": jnp.array([[0, 1, 2, 0, 1]])}
  out = model.compute_logits(params, packed)
  np.testing.assert_allclose(out[0, :3], model.compute_logits(params, a)[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 3:], model.compute_logits(params, b)[0], atol=1e-5)
  with pytest.raises(ValueError, match="decoder_positions"):
    model.compute_logits(params, {k: v for k, v in packed.items() if k != "decoder_positions"})
  # Prefix LM: the prompt (decoder_causal_attention = 1 on [5, 6]) is neither scored nor
  # trained on; the last prompt position predicts the first target token (7).
  full = model.score_batch(params, a)
  prefixed = model.score_batch(params, dict(a, decoder_causal_attention=jnp.array([[1, 1, 0]])))
  lp = jax.nn.log_softmax(model.compute_logits(params, a), -1)
  np.testing.assert_allclose(prefixed, lp[0, 1, 7] + lp[0, 2, 2], rtol=1e-5)
  assert not np.allclose(full, prefixed)


def test_predict_batch_validates_arguments(t5):
  model, params = t5
  with pytest.raises(ValueError, match="max_decode_length"):
    model.predict_batch(params, T5_BATCH, max_decode_length=0)


def test_logical_axes_cover_every_parameter(t5):
  model, params = t5
  axes = model.param_logical_axes()
  flat_axes = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  flat_params = jax.tree_util.tree_leaves(params)
  assert len(flat_axes) == len(flat_params)
  for spec, p in zip(flat_axes, flat_params):
    assert len(spec) == p.ndim and all(isinstance(n, str) for n in spec)
  names = {n for spec in flat_axes for n in spec}
  assert names == {"embed", "heads", "kv", "mlp", "vocab", "relpos_buckets"}


_SEQS = [([5, 6, 7, 1], [4, 5, 1]), ([8, 9, 1], [6, 1]), ([3, 1], [7, 8, 9, 1]), ([10, 11, 12, 13, 1], [2, 1])]


def _rows(groups, enc_len, dec_len):
  """Rows of t5x features, each row packing the sequences of one group."""
  rows = {k: [] for k in ("encoder_input_tokens", "encoder_segment_ids", "decoder_input_tokens",
                          "decoder_target_tokens", "decoder_segment_ids")}
  for group in groups:
    enc, enc_seg, dec_in, tgt, dec_seg = [], [], [], [], []
    for seg, (e, t) in enumerate(group, start=1):
      enc += e; enc_seg += [seg] * len(e)
      tgt += t; dec_in += [0] + t[:-1]; dec_seg += [seg] * len(t)
    for key, row, n in (("encoder_input_tokens", enc, enc_len), ("encoder_segment_ids", enc_seg, enc_len),
                        ("decoder_input_tokens", dec_in, dec_len), ("decoder_target_tokens", tgt, dec_len),
                        ("decoder_segment_ids", dec_seg, dec_len)):
      rows[key].append(row + [0] * (n - len(row)))
  return {k: jnp.asarray(v, jnp.int32) for k, v in rows.items()}


@pytest.mark.parametrize("normalizer", ["num_real_target_tokens", "average_per_sequence", "sum"])
def test_packed_and_unpacked_sequences_give_the_same_loss(t5, normalizer):
  # t5x/losses.py: with packing, `average_per_sequence` normalises each *segment*
  # by its own token count, then averages over segments.
  model, params = t5
  m = build_model(model.config, z_loss=1e-3, loss_normalizing_factor=normalizer)
  unpacked = _rows([[s] for s in _SEQS], 5, 4)
  unpacked = {k: v for k, v in unpacked.items() if "segment" not in k}
  packed = _rows([_SEQS[:2], _SEQS[2:]], 7, 6)
  loss_u, mu = m.loss_fn(params, unpacked, None)
  loss_p, mp = m.loss_fn(params, packed, None)
  np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5)
  np.testing.assert_allclose(mp["z_loss"], mu["z_loss"], rtol=1e-5)
  if normalizer == "average_per_sequence":  # the closed form: mean over the 4 sequences
    xent, _, w = _manual_xent(model, params, unpacked)
    per_seq = (xent * w).sum(-1) / w.sum(-1)
    np.testing.assert_allclose(mp["cross_entropy"], per_seq.mean(), rtol=1e-5)
    _, norm = m.loss_weights_and_normalizer(packed)
    assert float(norm) == pytest.approx(4.0)  # four segments, not two rows


def test_accuracy_counts_tokens_whose_target_logit_is_the_largest(t5):
  model, params = t5
  _, metrics = model.loss_fn(params, T5_BATCH, None)
  logits = np.asarray(model.compute_logits(params, T5_BATCH))
  tgt = np.asarray(T5_BATCH["decoder_target_tokens"])
  w = tgt > 0
  assert metrics["accuracy"] == pytest.approx(((logits.argmax(-1) == tgt) & w).sum() / w.sum())
  # the same as argmax on random logits (no ties); a tie for the top counts
  rng = np.random.default_rng(0)
  many = rng.normal(size=(64, 50)).astype(np.float32)
  targets = rng.integers(0, 50, size=64)
  targets[:8] = many[:8].argmax(-1)  # some hits
  np.testing.assert_array_equal(api.token_correct(jnp.asarray(many), jnp.asarray(targets)),
                                many.argmax(-1) == targets)
  tied = jnp.asarray([[1.0, 3.0, 3.0, 0.0]])
  assert api.token_correct(tied, jnp.asarray([2])).tolist() == [True]
  assert api.token_correct(tied, jnp.asarray([0])).tolist() == [False]
