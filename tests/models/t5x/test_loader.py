"""The tiny T5 written by t5x, loaded by moe-jax, against transformers holding the same weights.

The t5x -> transformers mapping below is written here, independently of
moe_jax.models.t5x. Tolerance: logits 1e-4 absolute in float32 (observed
differences are ~1e-6).
"""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from moe_jax.models import T5XCheckpoint, load_t5x_checkpoint, save_hf_checkpoint
from tests import hf_reference as ref
from tests.models.t5x import common

D, HEADS, D_KV, D_FF, VOCAB = 8, 4, 3, 16, 32128


def hf_state_dict(t, gated=True):
  """t5x minimal T5 names -> transformers' T5ForConditionalGeneration names (kernels [in, out])."""
  sd = {"shared.weight": t["token_embedder/embedding"]}
  mlp_in = ("wi_0", "wi_1") if gated else ("wi",)
  for stack, hf_stack in (("encoder", "encoder"), ("decoder", "decoder")):
    sd[f"{hf_stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = \
        t[f"{stack}/relpos_bias/rel_embedding"].T
    sd[f"{hf_stack}.final_layer_norm.weight"] = t[f"{stack}/{stack}_norm/scale"]
    for i in range(2):
      b, p = f"{hf_stack}.block.{i}.layer", f"{stack}/layers_{i}"
      attns = ([("attention", "0.SelfAttention", "pre_attention_layer_norm", "0")] if stack == "encoder" else
               [("self_attention", "0.SelfAttention", "pre_self_attention_layer_norm", "0"),
                ("encoder_decoder_attention", "1.EncDecAttention", "pre_cross_attention_layer_norm", "1")])
      for ours, theirs, norm, idx in attns:
        for a, h in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
          sd[f"{b}.{theirs}.{h}.weight"] = t[f"{p}/{ours}/{a}/kernel"].T
        sd[f"{b}.{idx}.layer_norm.weight"] = t[f"{p}/{norm}/scale"]
      m = "1" if stack == "encoder" else "2"
      for w in mlp_in + ("wo",):
        sd[f"{b}.{m}.DenseReluDense.{w}.weight"] = t[f"{p}/mlp/{w}/kernel"].T
      sd[f"{b}.{m}.layer_norm.weight"] = t[f"{p}/pre_mlp_layer_norm/scale"]
  if "decoder/logits_dense/kernel" in t:
    sd["lm_head.weight"] = t["decoder/logits_dense/kernel"].T
  return {k: torch.tensor(np.ascontiguousarray(v)) for k, v in sd.items()}


def hf_model(t, gated=True):
  tied = "decoder/logits_dense/kernel" not in t
  model = ref.t5_model(vocab_size=VOCAB, d_model=D, d_kv=D_KV, d_ff=D_FF, num_layers=2, num_decoder_layers=2,
                       num_heads=HEADS, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                       feed_forward_proj="gated-gelu" if gated else "relu", tie_word_embeddings=tied,
                       dropout_rate=0.0, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
  missing, unexpected = model.load_state_dict(hf_state_dict(t, gated), strict=False)
  assert not unexpected and set(missing) <= {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                                             "lm_head.weight"}, (missing, unexpected)
  if tied:
    assert model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
  return model


RNG = np.random.RandomState(0)
ENC = ref.padded([list(RNG.randint(2, VOCAB, 140)) + [1], list(RNG.randint(2, VOCAB, 5)) + [1]])
TGT = ref.padded([list(RNG.randint(2, VOCAB, 6)) + [1], list(RNG.randint(2, VOCAB, 150)) + [1]])
BATCH = {"encoder_input_tokens": jnp.asarray(ENC), "decoder_target_tokens": jnp.asarray(TGT),
         "decoder_input_tokens": jnp.asarray(ref.shift_right(TGT))}


def hf_logits(model):
  with torch.no_grad():
    enc = torch.tensor(ENC, dtype=torch.long)
    return model(input_ids=enc, attention_mask=(enc > 0).long(),
                 decoder_input_ids=torch.tensor(ref.shift_right(TGT), dtype=torch.long)).logits.numpy()


def assert_same_logits(ours, theirs):
  mask = TGT > 0
  np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4, rtol=0)
  assert np.abs(theirs[mask]).std() > 1e-3  # not a vacuous comparison


@pytest.fixture(scope="module")
def loaded():
  return load_t5x_checkpoint(common.TINY_T5)


def test_configuration_is_inferred_from_shapes(loaded):
  model, params = loaded
  c = model.config
  assert (c.vocab_size, c.d_model, c.num_heads, c.d_kv, c.d_ff) == (VOCAB, D, HEADS, D_KV, D_FF)
  assert (c.num_encoder_layers, c.num_decoder_layers, c.relative_attention_num_buckets) == (2, 2, 32)
  assert c.mlp_variant == "gated-gelu" and not c.tie_word_embeddings and not c.scale_decoder_outputs
  assert params["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (D, HEADS, D_KV)
  assert T5XCheckpoint(common.TINY_T5).step == 0


def test_logits_equal_transformers_with_the_same_weights(loaded):
  model, params = loaded
  ours = np.asarray(model.compute_logits(params, BATCH))
  assert_same_logits(ours, hf_logits(hf_model(common.raw_target())))


def test_saved_as_hf_reloads_in_transformers_with_the_same_logits(loaded, tmp_path):
  from transformers import T5ForConditionalGeneration
  model, params = loaded
  out = save_hf_checkpoint(model, params, str(tmp_path / "hf"))
  reloaded = T5ForConditionalGeneration.from_pretrained(out).eval()
  assert_same_logits(np.asarray(model.compute_logits(params, BATCH)), hf_logits(reloaded))


def test_t5_1_0_layout_relu_and_tied_rescaled_head(tmp_path):
  # The same arrays as a T5 1.0-style checkpoint: one `wi`, no logits_dense
  # (t5x then divides the embedding logits by sqrt(d_model), as transformers does).
  t = {k: v for k, v in common.raw_target().items() if "wi_1" not in k and "logits_dense" not in k}
  t = {k.replace("wi_0", "wi"): v for k, v in t.items()}
  model, params = load_t5x_checkpoint(common.write_checkpoint(tmp_path / "ckpt", t))
  assert model.config.mlp_variant == "relu" and model.config.tie_word_embeddings
  assert model.config.scale_decoder_outputs
  ours = np.asarray(model.compute_logits(params, BATCH))
  assert_same_logits(ours, hf_logits(hf_model(t, gated=False)))
