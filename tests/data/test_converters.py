"""Feature converters: packing round trip, ids per packed segment, context features, prefix-LM layout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from moe_jax.data import converters
from moe_jax.models import api, build_model, get_preset

EXAMPLES = [{"inputs": [5, 6, 7, 1], "targets": [8, 9, 1], "task_id": 3, "domain_id": 1},
            {"inputs": [10, 1], "targets": [11, 12, 13, 1], "task_id": 4, "domain_id": 0},
            {"inputs": [14, 15, 16, 17, 18, 19, 1], "targets": [20, 1], "task_id": 5, "domain_id": 2}]


def _ds(examples=EXAMPLES):
  return tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={"inputs": tf.TensorSpec((None,), tf.int32), "targets": tf.TensorSpec((None,), tf.int32),
                        "task_id": tf.TensorSpec((), tf.int32), "domain_id": tf.TensorSpec((), tf.int32)})


def test_unpacked_encdec_carries_context_and_shifts_targets():
  rows = list(converters.encdec(_ds(), {"inputs": 6, "targets": 4}).as_numpy_iterator())
  np.testing.assert_array_equal(rows[0]["encoder_input_tokens"], [5, 6, 7, 1, 0, 0])
  np.testing.assert_array_equal(rows[1]["decoder_target_tokens"], [11, 12, 13, 1])
  np.testing.assert_array_equal(rows[1]["decoder_input_tokens"], [0, 11, 12, 13])
  np.testing.assert_array_equal(rows[0]["decoder_loss_weights"], [1, 1, 1, 0])
  # Truncated inputs keep a final EOS.
  np.testing.assert_array_equal(rows[2]["encoder_input_tokens"], [14, 15, 16, 17, 18, 1])
  assert [r["task_id"] for r in rows] == [3, 4, 5] and [r["domain_id"] for r in rows] == [1, 0, 2]
  # ...and they reach the adapters' context through the model API.
  batch = next(converters.batches(converters.encdec(_ds(), {"inputs": 6, "targets": 4}), 3))
  assert set(api.context_features(batch)) == {"task_id", "domain_id"}


def test_packing_round_trips():
  packed = list(converters.encdec(_ds(), {"inputs": 16, "targets": 8}, pack=True, passthrough=()
                                  ).as_numpy_iterator())
  recovered = []
  for row in packed:
    for seg in sorted(set(row["encoder_segment_ids"]) - {0}):
      inputs = row["encoder_input_tokens"][row["encoder_segment_ids"] == seg]
      targets = row["decoder_target_tokens"][row["decoder_segment_ids"] == seg]
      assert row["decoder_input_tokens"][row["decoder_segment_ids"] == seg][0] == 0  # per-segment shift
      recovered.append((list(inputs), list(targets)))
  assert sorted(recovered) == sorted((e["inputs"], e["targets"]) for e in EXAMPLES)
  assert len(packed) < len(EXAMPLES)
  # The token features are seqio's packed encoder-decoder features.
  import seqio
  plain = seqio.EncDecFeatureConverter(pack=True)(
      _ds().map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]}), {"inputs": 16, "targets": 8})
  for ours, theirs in zip(packed, plain.as_numpy_iterator(), strict=True):
    assert set(ours) == set(theirs)
    for k in theirs:
      np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def test_packing_carries_the_ids_per_segment():
  # Row 0 packs examples 0 and 1 (tasks 3, 4; domains 1, 0 - an id 0 survives
  # packing), row 1 example 2; slot j holds segment j + 1's ids, -1 after.
  lengths = {"inputs": 16, "targets": 8}
  rows = list(converters.encdec(_ds(), lengths, pack=True).as_numpy_iterator())
  assert [len(set(r["decoder_segment_ids"]) - {0}) for r in rows] == [2, 1]
  for row in rows:
    segments = sorted(set(row["encoder_segment_ids"]) - {0})
    for k in ("task_id", "domain_id"):
      assert row[k].shape == (converters.id_slots(lengths),)
      assert (row[k][len(segments):] == -1).all()
    for seg in segments:
      inputs = list(row["encoder_input_tokens"][row["encoder_segment_ids"] == seg])
      targets = list(row["decoder_target_tokens"][row["decoder_segment_ids"] == seg])
      example = next(e for e in EXAMPLES if e["inputs"] == inputs)
      assert example["targets"] == targets
      assert (row["task_id"][seg - 1], row["domain_id"][seg - 1]) == (example["task_id"], example["domain_id"])
  bad = [dict(EXAMPLES[0], task_id=-1)]
  with pytest.raises(tf.errors.InvalidArgumentError, match="packing needs task_id >= 0"):
    list(converters.encdec(_ds(bad), lengths, pack=True).as_numpy_iterator())


def test_prefix_lm_layout_and_target_only_scores():
  rows = list(converters.prefix_lm(_ds(EXAMPLES[:1]), 8).as_numpy_iterator())
  r = rows[0]  # sequence 5 6 7 1 | 8 9 1
  np.testing.assert_array_equal(r["decoder_input_tokens"], [5, 6, 7, 1, 8, 9, 0, 0])
  np.testing.assert_array_equal(r["decoder_target_tokens"], [6, 7, 1, 8, 9, 1, 0, 0])
  np.testing.assert_array_equal(r["decoder_causal_attention"], [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(r["decoder_loss_weights"], [0, 0, 0, 1, 1, 1, 0, 0])
  model = build_model(get_preset("llama_tiny", vocab_size=32))
  params = model.init(jax.random.key(0))
  batch = {k: jnp.asarray(v)[None] for k, v in r.items()}
  lp = np.asarray(jax.nn.log_softmax(model.compute_logits(params, batch), -1))[0]
  expected = lp[3, 8] + lp[4, 9] + lp[5, 1]  # the targets 8 9 EOS, nothing of the prompt
  np.testing.assert_allclose(model.score_batch(params, batch)[0], expected, rtol=1e-5)
  without_weights = {k: v for k, v in batch.items() if k != "decoder_loss_weights"}
  np.testing.assert_allclose(model.score_batch(params, without_weights)[0], expected, rtol=1e-5)
