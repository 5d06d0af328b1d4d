"""The adapter-site contract: which sites exist, what they see, how hooks compose."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from moe_jax.models import build_model, get_preset
from moe_jax.peft import sites

SEEN = {}


class RecordSite(nn.Module):
  info: sites.SiteInfo

  @nn.compact
  def __call__(self, x, y, ctx):
    SEEN[self.info.path] = (self.info, x.shape, y.shape, sorted(ctx.features),
                            None if ctx.layer_state is None else ctx.layer_state.shape,
                            None if ctx.model_state is None else ctx.model_state.shape)
    return y


class RecordLayer(nn.Module):
  info: sites.LayerInfo

  @nn.compact
  def __call__(self, layer_input, ctx):
    SEEN[self.info.path] = (layer_input.hidden.shape,
                            None if layer_input.encoded is None else layer_input.encoded.shape)
    return jnp.zeros((layer_input.hidden.shape[0], 7))


class TaskEmbedding(nn.Module):
  @nn.compact
  def __call__(self, ctx):
    table = self.param("table", nn.initializers.normal(1.0), (5, 3))
    return table[ctx.features["task_id"]]


@dataclasses.dataclass(frozen=True, eq=True)
class Recorder(sites.Adapters):
  def site(self, info, name):
    return RecordSite(info, name=name)

  def layer_hook(self, info, name):
    return RecordLayer(info, name=name)

  def model_hook(self, name):
    return TaskEmbedding(name=name)

  __hash__ = object.__hash__


@dataclasses.dataclass(frozen=True)
class ScaleSite(sites.Adapters):
  """Multiplies one kind of site by a learned scalar (init 1) and sows an aux loss."""
  kind: str

  def site(self, info, name):
    return _Scale(name=name) if info.kind == self.kind else None


class _Scale(nn.Module):
  @nn.compact
  def __call__(self, x, y, ctx):
    s = self.param("s", nn.initializers.ones, ())
    self.sow(sites.AUX_LOSS_COLLECTION, "penalty", 0.5 * jnp.square(s))
    return y * s


def _t5_batch():
  z = jnp.array([[5, 6, 7, 1], [8, 9, 1, 0]], jnp.int32)
  return {"encoder_input_tokens": z, "decoder_input_tokens": jnp.array([[0, 4, 5], [0, 6, 0]]),
          "decoder_target_tokens": jnp.array([[4, 5, 1], [6, 1, 0]]), "task_id": jnp.array([1, 3])}


def _llama_batch():
  return {"decoder_input_tokens": jnp.array([[5, 6, 7, 8], [9, 10, 0, 0]]),
          "decoder_target_tokens": jnp.array([[6, 7, 8, 2], [10, 2, 0, 0]]), "task_id": jnp.array([0, 4])}


@pytest.mark.parametrize("preset,batch_fn,expected_kinds", [
    ("t5_1_1_tiny", _t5_batch, {"q", "k", "v", "o", "wi_0", "wi_1", "wo", "ffn_hidden"}),
    ("t5_small", _t5_batch, {"q", "k", "v", "o", "wi", "wo", "ffn_hidden"}),
    ("llama_tiny", _llama_batch, {"q", "k", "v", "o", "gate", "up", "down", "ffn_hidden"}),
])
def test_every_projection_is_a_site(preset, batch_fn, expected_kinds):
  SEEN.clear()
  cfg = get_preset(preset, vocab_size=32, num_heads=4) if preset != "llama_tiny" else get_preset(preset, vocab_size=32)
  if preset == "t5_small":
    cfg = dataclasses.replace(cfg, d_model=32, d_ff=48, d_kv=8, num_encoder_layers=1, num_decoder_layers=2)
  model = build_model(cfg, Recorder())
  batch = batch_fn()
  params = model.init(jax.random.key(0), batch)
  model.compute_logits(params, batch)

  site_paths = {p for p, v in SEEN.items() if isinstance(v[0], sites.SiteInfo)}
  kinds = {SEEN[p][0].kind for p in site_paths}
  assert kinds == expected_kinds
  if cfg.family == "t5":
    n_enc, n_dec = cfg.num_encoder_layers, cfg.num_decoder_layers
    n_mlp = len(expected_kinds) - 4
    assert len(site_paths) == n_enc * (4 + n_mlp) + n_dec * (8 + n_mlp)
    assert f"decoder/layer_{n_dec - 1}/cross_attention/k" in site_paths
    info, x_shape, y_shape, feats, layer_state, model_state = SEEN["decoder/layer_0/cross_attention/k"]
    # cross-attention keys read the encoder output (length 4), head-shaped output
    assert x_shape == (2, 4, cfg.d_model) and y_shape == (2, 4, cfg.num_heads, cfg.d_kv)
    assert SEEN["decoder/layer_0"] == ((2, 3, cfg.d_model), (2, 4, cfg.d_model))
    assert SEEN["encoder/layer_0"] == ((2, 4, cfg.d_model), None)
  else:
    assert len(site_paths) == cfg.num_layers * 8
    info, x_shape, y_shape, feats, layer_state, model_state = SEEN["decoder/layer_1/self_attention/k"]
    assert y_shape == (2, 4, cfg.num_kv_heads, cfg.kv_dim)  # GQA: fewer key heads
    assert info.out_axes == ("heads", "kv")
  assert feats == ["task_id"] and layer_state == (2, 7) and model_state == (2, 3)
  hidden = SEEN[next(p for p in site_paths if p.endswith("mlp/ffn_hidden"))]
  assert hidden[1] == hidden[2] and hidden[1][-1] == cfg.d_ff
  # Adapter parameters live under recognisable names next to the backbone's.
  flat = traverse_util.flatten_dict(params)
  assert any(k[-2] == "table" or k[-1] == "table" for k in flat)


@pytest.mark.parametrize("preset,batch_fn", [("t5_1_1_tiny", _t5_batch), ("llama_tiny", _llama_batch)])
def test_a_site_changes_the_output_and_its_aux_loss_reaches_the_loss(preset, batch_fn):
  cfg = get_preset(preset, vocab_size=32)
  base, adapted = build_model(cfg), build_model(cfg, ScaleSite("v"))
  batch = batch_fn()
  params = adapted.init(jax.random.key(0), batch)
  flat = traverse_util.flatten_dict(params)
  scales = [k for k in flat if k[-2] == "v_adapter"]
  assert scales, "the adapter parameter was not created"
  base_params = traverse_util.unflatten_dict({k: v for k, v in flat.items() if k[-2] != "v_adapter"})
  # At init (s = 1) the adapted model is the backbone.
  np.testing.assert_array_equal(adapted.compute_logits(params, batch), base.compute_logits(base_params, batch))
  # Zeroing every value projection changes the logits.
  zeroed = traverse_util.unflatten_dict({k: (v * 0 if k in scales else v) for k, v in flat.items()})
  assert not np.allclose(adapted.compute_logits(zeroed, batch), base.compute_logits(base_params, batch))
  loss, metrics = adapted.loss_fn(params, batch, None)
  base_loss, _ = base.loss_fn(base_params, batch, None)
  np.testing.assert_allclose(metrics["aux_loss"], 0.5 * len(scales), rtol=1e-6)
  np.testing.assert_allclose(loss, base_loss + 0.5 * len(scales), rtol=1e-6)
