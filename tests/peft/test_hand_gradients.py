"""The hand-written gradients run in programs traced for CPU, not for TPU
(hand_gradients.py), unless MOE_JAX_HAND_GRADIENTS says otherwise."""
import jax
import jax.numpy as jnp
import pytest

from moe_jax import partitioning
from moe_jax.models import build_model, get_preset
from moe_jax.peft import LoRA, MoV, hand_gradients
from moe_jax.tpu_slices import parse


def _grad_jaxpr(adapters, mesh) -> str:
  model = build_model(get_preset("t5_1_1_tiny"), adapters)
  params = jax.eval_shape(model.init, jax.random.key(0))
  i32 = lambda *s: jnp.ones(s, jnp.int32)  # noqa: E731
  batch = {"encoder_input_tokens": i32(2, 8), "decoder_input_tokens": i32(2, 4),
           "decoder_target_tokens": i32(2, 4), "task_id": i32(2)}
  loss = lambda p: model.loss_fn(p, batch, None)[0]  # noqa: E731
  with jax.set_mesh(mesh):
    return str(jax.make_jaxpr(jax.grad(loss))(params))


@pytest.fixture(scope="module")
def meshes():
  return {"cpu": partitioning.make_mesh(1, 1, devices=jax.devices()[:1]),
          "tpu": partitioning.make_mesh(4, 1, devices=parse("v5litepod-4").devices())}


@pytest.mark.parametrize("adapters", [MoV(num_experts=4), LoRA(rank=4)], ids=["mov", "lora"])
def test_cpu_programs_take_them_and_tpu_programs_take_autodiff(meshes, adapters, monkeypatch):
  monkeypatch.delenv("MOE_JAX_HAND_GRADIENTS", raising=False)
  assert "optimization_barrier" in _grad_jaxpr(adapters, meshes["cpu"])
  assert "optimization_barrier" not in _grad_jaxpr(adapters, meshes["tpu"])
  monkeypatch.setenv("MOE_JAX_HAND_GRADIENTS", "on")
  assert "optimization_barrier" in _grad_jaxpr(adapters, meshes["tpu"])
  monkeypatch.setenv("MOE_JAX_HAND_GRADIENTS", "off")
  assert "optimization_barrier" not in _grad_jaxpr(adapters, meshes["cpu"])


def test_the_platform_is_the_meshs_and_a_bad_mode_is_named(meshes, monkeypatch):
  with jax.set_mesh(meshes["tpu"]):
    assert hand_gradients.target_platform() == "tpu"
  assert hand_gradients.target_platform() == jax.default_backend() == "cpu"
  monkeypatch.setenv("MOE_JAX_HAND_GRADIENTS", "yes")
  with pytest.raises(ValueError, match="MOE_JAX_HAND_GRADIENTS='yes'; expected one of"):
    hand_gradients.enabled()
