"""Parameter layouts (t5x minimal T5, flaxformer variants) and the errors that name what is wrong."""
import dataclasses

import jax
import numpy as np
import pytest

from moe_jax.models import CheckpointError, get_preset, load_t5x_checkpoint
from tests.models.t5x import common

D, H, DK, FF = 8, 4, 3, 16


@pytest.fixture(scope="module")
def reference():
  return load_t5x_checkpoint(common.TINY_T5)


def _load(tmp_path, target, **kw):
  return load_t5x_checkpoint(common.write_checkpoint(tmp_path / "ckpt", target), **kw)


def _fused_2d(kernels):
  """flaxformer's 2-D fused kernel, column by column: DenseGeneral with
  features (3, heads, d_kv) flattens them row-major, so column
  j*H*DK + h*DK + k is projection j, head h, dimension k; in t5x's unfused
  [d, heads*d_kv] kernels that is column h*DK + k. (Built element-wise, not
  with the reshape the loader undoes.)"""
  fused = np.zeros((D, len(kernels) * H * DK), kernels[0].dtype)
  for j, w in enumerate(kernels):
    for h in range(H):
      for k in range(DK):
        fused[:, j * H * DK + h * DK + k] = w[:, h * DK + k]
  return fused


def _flaxformer(t):
  """The tiny T5 in flaxformer's other layouts: fused q/k/v (4-D and 2-D), fused k/v,
  split-head 3-D kernels, fused gated MLP input, one relative bias per layer."""
  t = dict(t)
  for i in range(2):
    e, d = f"encoder/layers_{i}", f"decoder/layers_{i}"
    qkv = [t.pop(f"{e}/attention/{n}/kernel").reshape(D, H, DK) for n in ("query", "key", "value")]
    t[f"{e}/attention/qkv_fused/kernel"] = np.stack(qkv, 1)  # [d, 3, heads, d_kv]
    t[f"{d}/self_attention/qkv_fused/kernel"] = _fused_2d(
        [t.pop(f"{d}/self_attention/{n}/kernel") for n in ("query", "key", "value")])
    kv = [t.pop(f"{d}/encoder_decoder_attention/{n}/kernel").reshape(D, H, DK) for n in ("key", "value")]
    t[f"{d}/encoder_decoder_attention/kv_fused/kernel"] = np.stack(kv, 1)
    q = f"{d}/encoder_decoder_attention/query/kernel"
    t[q] = t[q].reshape(D, H, DK)
    o = f"{d}/encoder_decoder_attention/out/kernel"
    t[o] = t[o].reshape(H, DK, D)
    t[f"{e}/mlp/wi_fused/kernel"] = np.stack([t.pop(f"{e}/mlp/wi_0/kernel"), t.pop(f"{e}/mlp/wi_1/kernel")], 1)
  for stack in ("encoder", "decoder"):
    rel = t.pop(f"{stack}/relpos_bias/rel_embedding")
    for i in range(2):
      t[f"{stack}/layers_{i}/relpos_bias/rel_embedding"] = rel
  return t


def test_flaxformer_layouts_give_the_same_parameters(tmp_path, reference):
  model, params = _load(tmp_path, _flaxformer(common.raw_target()))
  assert model.config == reference[0].config
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, reference[1])


def test_per_layer_relative_biases_must_agree(tmp_path):
  t = _flaxformer(common.raw_target())
  t["decoder/layers_1/relpos_bias/rel_embedding"] = t["decoder/layers_1/relpos_bias/rel_embedding"] + 1
  with pytest.raises(CheckpointError, match="target/decoder/layers_1/relpos_bias/rel_embedding differs"):
    _load(tmp_path, t)


def test_a_shape_that_does_not_fit_is_named(tmp_path):
  t = common.raw_target()
  t["encoder/layers_1/mlp/wi_0/kernel"] = t["encoder/layers_1/mlp/wi_0/kernel"][:, :15]
  with pytest.raises(CheckpointError, match=r"target/encoder/layers_1/mlp/wi_0/kernel \(inline\) has "
                                            r"shape \(8, 15\); the inferred configuration needs \(8, 16\)"):
    _load(tmp_path, t)


def test_an_unknown_name_is_named(tmp_path):
  t = common.raw_target()
  t["encoder/layers_0/attention/query/bias"] = np.zeros(12, np.float32)
  with pytest.raises(CheckpointError, match=r"unknown array\(s\) target/encoder/layers_0/attention/query/bias"):
    _load(tmp_path, t)


def test_a_missing_array_is_named(tmp_path):
  t = common.raw_target()
  del t["decoder/layers_1/pre_cross_attention_layer_norm/scale"]
  with pytest.raises(CheckpointError,
                     match="missing array target/decoder/layers_1/pre_cross_attention_layer_norm/scale"):
    _load(tmp_path, t)
  t = common.raw_target()
  t = {k.replace("layers_1", "layers_2"): v for k, v in t.items()}
  with pytest.raises(CheckpointError, match=r"encoder layers \[1\] are missing"):
    _load(tmp_path, t)


def test_a_given_config_must_agree_and_supplies_the_rest(tmp_path, reference):
  with pytest.raises(CheckpointError, match=r"d_ff=16 \(config says 128\), d_kv=3 \(config says 16\), "
                                            r"d_model=8 \(config says 64\)"):
    load_t5x_checkpoint(common.TINY_T5, config=get_preset("t5_1_1_tiny"))
  told = dataclasses.replace(reference[0].config, mlp_variant="gated-relu", relative_attention_max_distance=64,
                             dtype="bfloat16")
  model, params = load_t5x_checkpoint(common.TINY_T5, config=told)
  assert model.config.mlp_variant == "gated-relu" and model.config.relative_attention_max_distance == 64
  assert model.config.dtype == "bfloat16" and params["token_embedder"]["embedding"].dtype == np.float32
  _, half = load_t5x_checkpoint(common.TINY_T5, dtype="bfloat16")
  assert half["token_embedder"]["embedding"].dtype == jax.numpy.bfloat16
