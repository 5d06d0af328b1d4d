"""HF checkpoint I/O: sharded files, bfloat16, and every way a checkpoint can be wrong."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.models import hf, load_hf_checkpoint, safetensors_io, save_hf_checkpoint
from tests import hf_reference as ref

T5 = dict(vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
          relative_attention_num_buckets=8, relative_attention_max_distance=16,
          feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
  return ref.save(ref.t5_model(seed=3, **T5), tmp_path_factory.mktemp("t5") / "hf")


@pytest.fixture
def copy(t5_dir, tmp_path):
  def make():
    d = tmp_path / "ckpt"
    shutil.copytree(t5_dir, d)
    return str(d)
  return make


def _edit_config(path, **changes):
  f = os.path.join(path, "config.json")
  cfg = json.load(open(f))
  cfg.update(changes)
  json.dump(cfg, open(f, "w"))


def _edit_tensors(path, fn):
  f = os.path.join(path, "model.safetensors")
  tensors = {k: np.array(v) for k, v in safetensors_io.load(f).items()}
  fn(tensors)
  safetensors_io.save(f, tensors)


def test_sharded_checkpoint_loads_like_a_single_file(t5_dir, tmp_path):
  model = ref.t5_model(seed=3, **T5)
  model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="8KB")
  assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path / "sharded") if f.endswith(".safetensors")]) > 2
  _, a = load_hf_checkpoint(t5_dir)
  _, b = load_hf_checkpoint(str(tmp_path / "sharded"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_bfloat16_params_and_activations(t5_dir):
  model, params = load_hf_checkpoint(t5_dir, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  model32, params32 = load_hf_checkpoint(t5_dir)
  batch = {"encoder_input_tokens": jnp.array([[5, 6, 7, 1]]), "decoder_input_tokens": jnp.array([[0, 3, 4]]),
           "decoder_target_tokens": jnp.array([[3, 4, 1]])}
  logits = model.compute_logits(params, batch)
  assert logits.dtype == jnp.float32
  # bf16 keeps 8 significant bits (rounding 2^-9 ~ 0.2 %); rounding every parameter and
  # activation through this 2-layer model moves the logits by ~1 % of the largest one
  # (0.8-1.1 % on three batches); 3 % leaves room, and still fails if every bf16
  # parameter is 3 % off (10 % here).
  np.testing.assert_allclose(logits, model32.compute_logits(params32, batch), atol=0.03 * np.abs(logits).max())


def test_bfloat16_safetensors_round_trip(tmp_path):
  import ml_dtypes
  x = (np.arange(12, dtype=np.float32).reshape(3, 4) / 7).astype(ml_dtypes.bfloat16)
  f = str(tmp_path / "t.safetensors")
  safetensors_io.save(f, {"a": x, "b": np.arange(5, dtype=np.int64)})
  back = safetensors_io.load(f)
  np.testing.assert_array_equal(back["a"], x)
  from safetensors.numpy import load_file  # the reference library reads our files
  np.testing.assert_array_equal(load_file(f)["b"], np.arange(5))


@pytest.mark.parametrize("change,needle", [
    (dict(frobnicate_layers=3), "frobnicate_layers"),
    (dict(model_type="gpt2", architectures=["GPT2LMHeadModel"]), "gpt2"),
    (dict(feed_forward_proj="gated-silu"), "feed_forward_proj"),
])
def test_bad_config_is_named(copy, change, needle):
  d = copy()
  _edit_config(d, **change)
  with pytest.raises(hf.CheckpointError, match=needle):
    load_hf_checkpoint(d)


def test_missing_extra_and_misshaped_tensors_are_named(copy):
  d = copy()
  _edit_tensors(d, lambda t: t.pop("decoder.final_layer_norm.weight"))
  with pytest.raises(hf.CheckpointError, match="missing.*decoder.final_layer_norm.weight"):
    load_hf_checkpoint(d)
  shutil.rmtree(d)
  d = copy()
  _edit_tensors(d, lambda t: t.__setitem__("encoder.block.9.extra.weight", np.zeros(3, np.float32)))
  with pytest.raises(hf.CheckpointError, match="unexpected.*encoder.block.9.extra.weight"):
    load_hf_checkpoint(d)
  shutil.rmtree(d)
  d = copy()
  key = "encoder.block.1.layer.1.DenseReluDense.wi_0.weight"
  _edit_tensors(d, lambda t: t.__setitem__(key, np.zeros((25, 16), np.float32)))
  with pytest.raises(hf.CheckpointError, match=r"wi_0.weight.*\(25, 16\).*\(24, 16\)"):
    load_hf_checkpoint(d)


def test_missing_config_or_weights(tmp_path):
  with pytest.raises(hf.CheckpointError, match="missing config.json"):
    load_hf_checkpoint(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
  with pytest.raises(hf.CheckpointError, match="no \\*.safetensors"):
    load_hf_checkpoint(str(tmp_path))


def test_save_refuses_adapters_and_writes_nothing(t5_dir, tmp_path, monkeypatch):
  model, params = load_hf_checkpoint(t5_dir)
  with_adapter = dict(params, encoder=dict(params["encoder"], q_adapter={"w": jnp.ones(3)}))
  target = tmp_path / "out"
  with pytest.raises(hf.CheckpointError, match="q_adapter"):
    save_hf_checkpoint(model, with_adapter, target)
  assert not target.exists()

  def boom(*a, **k):
    raise OSError("disk full")
  monkeypatch.setattr(safetensors_io, "save", boom)
  with pytest.raises(OSError, match="disk full"):
    save_hf_checkpoint(model, params, target)
  assert os.listdir(tmp_path) == []  # neither the target nor a temporary directory


def test_save_does_not_clobber_without_overwrite(t5_dir, tmp_path):
  model, params = load_hf_checkpoint(t5_dir)
  target = tmp_path / "out"
  target.mkdir()
  (target / "keep.txt").write_text("mine")
  with pytest.raises(hf.CheckpointError, match="not empty"):
    save_hf_checkpoint(model, params, target)
  assert os.listdir(target) == ["keep.txt"]
  save_hf_checkpoint(model, params, target, overwrite=True)
  assert sorted(os.listdir(target)) == ["config.json", "model.safetensors"]


def test_real_t5_small_config_is_understood():
  """The shipped t5-small config.json (transformers 4.44 era) maps to our preset."""
  import dataclasses
  from moe_jax import paths
  from moe_jax.models import get_preset
  f = os.path.join(paths.data_dir(), "t5_vocab", "config.json")
  cfg = hf.config_from_hf(json.load(open(f)), f, "float32", "float32")
  assert dataclasses.replace(cfg, dropout_rate=0.0) == get_preset("t5_small")
