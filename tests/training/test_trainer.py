"""The jitted train step: gradient accumulation, frozen backbone, divergence guard."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import partitioning, trainer
from moe_jax.peft import MoV
from moe_jax.peft.trainable import trainable_mask
from tests.peft import common


def _batch4():
  # Four sequences with the same number of target tokens: with per-sequence loss
  # normalisation the full-batch loss is exactly the mean of two half-batches.
  return {"encoder_input_tokens": jnp.array([[5, 6, 7, 1], [9, 10, 1, 0], [11, 12, 13, 1], [3, 4, 1, 0]]),
          "decoder_input_tokens": jnp.array([[0, 4, 5], [0, 7, 8], [0, 8, 9], [0, 2, 3]]),
          "decoder_target_tokens": jnp.array([[4, 5, 1], [7, 8, 1], [8, 9, 1], [2, 3, 1]]),
          "task_id": jnp.zeros((4,), jnp.int32), "domain_id": jnp.zeros((4,), jnp.int32)}


@pytest.fixture(scope="module")
def setup():
  model, params = common.make("t5", MoV(num_experts=3), loss_normalizing_factor="average_per_sequence")
  params = common.perturb_adapters(params, scale=0.2)
  trainable, frozen = trainer.split_params(params, trainable_mask(params))
  axes = model.param_logical_axes()
  return model, trainable, frozen, trainer.subtree(axes, trainable)


def _step(setup, k):
  model, trainable, frozen, axes = setup
  part = partitioning.Partitioner(partitioning.make_mesh(-1, 1))
  step = trainer.TrainStep(model, part, axes, learning_rate=1e-2, grad_accum_steps=k)
  copy = jax.tree_util.tree_map(jnp.array, trainable)  # the step donates its inputs
  with part.context():
    new, _, m = step(copy, frozen, step.init_opt_state(copy), _batch4(), jax.random.key(0))
  return new, m


def test_gradient_accumulation_equals_the_full_batch(setup):
  full, m1 = _step(setup, 1)
  accum, m2 = _step(setup, 2)
  np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(m2["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
  assert m2["per_example_cross_entropy"].shape == (4,)
  np.testing.assert_allclose(m2["per_example_cross_entropy"], m1["per_example_cross_entropy"], rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(accum), jax.tree_util.tree_leaves(full)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in
           zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(setup[1]))]
  assert min(moved) > 0  # every trainable leaf was updated


def _uneven_batch():
  # Micro-batches of 2 rows hold 5 and 2 target tokens: averaging their losses
  # would weigh the second micro-batch's tokens 2.5x too much.
  return {"encoder_input_tokens": jnp.array([[5, 6, 7, 1], [9, 10, 1, 0], [11, 12, 13, 1], [3, 4, 1, 0]]),
          "decoder_input_tokens": jnp.array([[0, 4, 5], [0, 7, 0], [0, 0, 0], [0, 0, 0]]),
          "decoder_target_tokens": jnp.array([[4, 5, 1], [7, 1, 0], [8, 0, 0], [2, 0, 0]]),
          "task_id": jnp.zeros((4,), jnp.int32), "domain_id": jnp.zeros((4,), jnp.int32)}


@pytest.mark.parametrize("normalizer", ["num_real_target_tokens", "average_per_sequence", "sum"])
def test_accumulated_gradient_equals_the_full_batch_for_every_normaliser(normalizer):
  model, params = common.make("t5", MoV(num_experts=3), loss_normalizing_factor=normalizer)
  params = common.perturb_adapters(params, scale=0.2)
  trainable, frozen = trainer.split_params(params, trainable_mask(params))
  axes = trainer.subtree(model.param_logical_axes(), trainable)
  part = partitioning.Partitioner(partitioning.make_mesh(-1, 1))
  step = trainer.TrainStep(model, part, axes, grad_accum_steps=2)
  batch, rng = _uneven_batch(), jax.random.key(0)
  full, m1 = jax.jit(step._loss_and_grads)(trainable, frozen, batch, rng)
  accum, m2 = jax.jit(lambda t, f, b, r: step._accumulated(t, f, b, r, 2))(trainable, frozen, batch, rng)
  np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(m2["num_tokens"]), 7.0)
  for a, b in zip(jax.tree_util.tree_leaves(accum), jax.tree_util.tree_leaves(full)):
    scale = float(jnp.max(jnp.abs(b)))
    assert scale > 0
    # float32 sums in another order: ~5e-6 of the largest entry; averaging the
    # micro-batch losses instead would be off by up to 2.5x
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale)


def test_split_and_merge_round_trip(setup):
  _, trainable, frozen, _ = setup
  merged = trainer.merge_params(trainable, frozen)
  t2, f2 = trainer.split_params(merged, trainable_mask(merged))
  assert jax.tree_util.tree_structure(t2) == jax.tree_util.tree_structure(trainable)
  assert jax.tree_util.tree_structure(f2) == jax.tree_util.tree_structure(frozen)


@pytest.mark.parametrize("m, cause", [
    ({"loss": np.nan, "grad_norm": 1.0, "params_finite": True}, "loss nan"),
    ({"loss": 1.0, "grad_norm": np.inf, "params_finite": True}, "gradient norm inf"),
    ({"loss": 1.0, "grad_norm": 1.0, "params_finite": False}, "non-finite parameters"),
])
def test_divergence_is_reported_with_its_cause(m, cause):
  with pytest.raises(trainer.TrainingError, match=f"step 7: {cause}.*last checkpoint: 5"):
    trainer._check_finite(dict(m), 7, 5)
  trainer._check_finite({"loss": 1.0, "grad_norm": 1.0, "params_finite": True}, 7, 5)
