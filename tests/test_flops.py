"""FLOPs counted on the jaxpr: every scanned layer, and XLA's rules."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import flops, partitioning, trainer
from moe_jax.models import build_model, get_preset
from moe_jax.peft import MoV
from moe_jax.peft.trainable import trainable_mask


def test_a_dot_and_elementwise_ops_count_as_xla_counts_them():
  def f(x, w):
    return jnp.sum(jnp.tanh(x @ w) * 2.0)
  x, w = jnp.ones((8, 16)), jnp.ones((16, 32))
  c = flops.count(jax.make_jaxpr(f)(x, w))
  # dot 2*8*16*32, multiply 8*32, reduce 8*32; tanh is a transcendental
  assert c == {"flops": 2 * 8 * 16 * 32 + 8 * 32 + 8 * 32, "transcendentals": 8 * 32}
  xla = jax.jit(f).lower(x, w).compile().cost_analysis()
  assert c["flops"] == pytest.approx(xla["flops"], rel=0.02)


def test_a_scan_counts_its_body_length_times_and_a_while_loop_as_told():
  w = jnp.ones((16, 16))

  def scanned(x):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=12)[0]

  def looped(x):
    return jax.lax.while_loop(lambda s: s[0] < 5, lambda s: (s[0] + 1, s[1] @ w), (0, x))[1]
  x = jnp.ones((4, 16))
  one = 2 * 4 * 16 * 16
  assert flops.count(jax.make_jaxpr(scanned)(x))["flops"] == 12 * one
  # XLA's own count sees the body once: the reason this module exists.
  assert jax.jit(scanned).lower(x).compile().cost_analysis()["flops"] < 2 * one
  # while: the body (dot + counter add) and condition (compare) per trip
  assert flops.count(jax.make_jaxpr(looped)(x), while_trips=5)["flops"] == 5 * (one + 1 + 1)


def _train_step_flops(scan: bool, layers: int = 6):
  config = get_preset("t5_1_1_tiny", num_encoder_layers=layers, num_decoder_layers=layers, scan_layers=scan)
  model = build_model(config, MoV(num_experts=4))
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  from flax import linen as nn
  axes = nn.get_partition_spec(model.abstract_variables())["params"]
  t, f = trainer.split_params(shapes, trainable_mask(shapes))
  partitioner = partitioning.Partitioner(partitioning.make_mesh(1, 1, devices=jax.devices()[:1]))
  step = trainer.TrainStep(model, partitioner, trainer.subtree(axes, t))
  o = jax.eval_shape(step.tx.init, t)
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
  batch = {"encoder_input_tokens": i32(4, 32), "decoder_input_tokens": i32(4, 16),
           "decoder_target_tokens": i32(4, 16), "task_id": i32(4)}
  traced = jax.jit(step._train_step).trace(t, f, o, batch, jax.eval_shape(jax.random.key, 0))
  return flops.of_traced(traced)["flops"], traced


def test_scanned_and_unrolled_train_steps_count_the_same_and_match_xla_unrolled():
  scanned, scanned_traced = _train_step_flops(True)
  unrolled, unrolled_traced = _train_step_flops(False)
  assert scanned == pytest.approx(unrolled, rel=0.02)
  # XLA agrees with the count where it sees every layer (unrolled) ...
  xla_unrolled = unrolled_traced.lower().compile().cost_analysis()["flops"]
  assert unrolled == pytest.approx(xla_unrolled, rel=0.05)
  # ... and undercounts the scanned stack (one layer's body of six).
  xla_scanned = scanned_traced.lower().compile().cost_analysis()["flops"]
  assert xla_scanned < 0.85 * xla_unrolled
  # Layers add FLOPs: twice the layers, clearly more.
  deeper, _ = _train_step_flops(True, layers=12)
  assert deeper > 1.3 * scanned
  assert np.isfinite(scanned)
