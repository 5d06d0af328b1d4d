"""LoRA and (IA)3 against Hugging Face peft on a T5 v1.1 model (PyTorch, CPU).

Both sides get the same (random, non-trivial) adapter weights; logits must
agree within 1e-4. peft's T5 (IA)3 default scales the *input* of `wo`
(feedforward_modules=["wo"]); that is the FFN hidden state after the gated
activation, our `ffn_hidden` site, so the paper's placement and peft's agree.
"""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from moe_jax.models import build_model, hf, load_hf_checkpoint
from moe_jax.peft import IA3, LoRA
from tests import hf_reference as ref

CFG = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
           relative_attention_num_buckets=8, relative_attention_max_distance=20,
           feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
KIND = {"q": "q", "k": "k", "v": "v", "o": "o", "wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  model = ref.t5_model(seed=4, **CFG)
  path = ref.save(model, tmp_path_factory.mktemp("peft") / "hf")
  ours, params = load_hf_checkpoint(path)
  table, _ = hf.t5_tensors(ours.config)
  # HF module name ("encoder.block.0.layer.0.SelfAttention.q") -> our kernel's parent path
  modules = {t.hf_key[: -len(".weight")]: t.path[:-1] for t in table if t.path[-1] == "kernel"}
  return path, ours.config, params, modules


def _batch():
  enc = ref.padded([[5, 6, 7, 8, 9, 1], [10, 11, 1]])
  tgt = ref.padded([[12, 13, 14, 1], [15, 1]])
  return enc, tgt, ref.shift_right(tgt)


def _hf_logits(model):
  enc, tgt, dec = _batch()
  enc_t = torch.tensor(enc, dtype=torch.long)
  with torch.no_grad():
    return model(input_ids=enc_t, attention_mask=(enc_t > 0).long(),
                 decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy(), tgt


def _ours(config, params, adapters):
  enc, tgt, dec = _batch()
  model = build_model(config, adapters)
  return np.asarray(model.compute_logits(params, {"encoder_input_tokens": jnp.asarray(enc),
                                                   "decoder_input_tokens": jnp.asarray(dec),
                                                   "decoder_target_tokens": jnp.asarray(tgt)}))


def _adapter_path(modules, hf_module, kind):
  parent = modules[hf_module][:-1]
  return parent + (f"{kind}_adapter",)


def test_lora_matches_peft(reference):
  from peft import LoraConfig, get_peft_model
  from transformers import T5ForConditionalGeneration
  path, config, params, modules = reference
  targets = ["q", "v", "o", "wi_1", "wo"]
  peft_model = get_peft_model(T5ForConditionalGeneration.from_pretrained(path).eval(),
                              LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
  torch.manual_seed(0)
  flat = traverse_util.flatten_dict(params)
  n = 0
  for name, p in peft_model.named_parameters():
    if "lora_" not in name:
      continue
    with torch.no_grad():
      p.copy_(torch.randn_like(p) * 0.3)  # lora_B is zero at init: randomise both
    module = name.replace("base_model.model.", "").split(".lora_")[0]
    kind = KIND[module.rsplit(".", 1)[1]]
    site = _adapter_path(modules, module, kind) + ("pair",)
    w = p.detach().numpy()
    kernel = flat[modules[module] + ("kernel",)]
    in_shape = kernel.shape[:2] if kind == "o" else kernel.shape[:1]  # o reads [heads, d_kv]
    out_shape = kernel.shape[len(in_shape):]
    if ".lora_A." in name:  # [r, in] -> [1, *in, r]
      flat[site + ("lora_a",)] = jnp.asarray(w.T.reshape(in_shape + (4,))[None])
    else:  # [out, r] -> [1, r, *out]
      flat[site + ("lora_b",)] = jnp.asarray(w.T.reshape((4,) + out_shape)[None])
    n += 1
  assert n == 2 * (2 * 5 + 2 * 8)  # A and B per module: 5 per encoder layer, 8 per decoder layer
  theirs, tgt = _hf_logits(peft_model)
  ours = _ours(config, traverse_util.unflatten_dict(flat),
               LoRA(rank=4, alpha=8.0, targets=tuple(targets)))
  mask = tgt > 0
  np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4)
  base, _ = _hf_logits(peft_model.get_base_model().__class__.from_pretrained(path).eval())
  assert np.abs(theirs - base).max() > 1e-2  # the adapters did change the model


def test_ia3_matches_peft(reference):
  from peft import IA3Config, get_peft_model
  from transformers import T5ForConditionalGeneration
  path, config, params, modules = reference
  peft_model = get_peft_model(T5ForConditionalGeneration.from_pretrained(path).eval(),
                              IA3Config(target_modules=["k", "v", "wo"], feedforward_modules=["wo"]))
  torch.manual_seed(1)
  flat = traverse_util.flatten_dict(params)
  n = 0
  for name, p in peft_model.named_parameters():
    if "ia3_l" not in name:
      continue
    with torch.no_grad():
      p.copy_(1.0 + torch.randn_like(p) * 0.3)
    module = name.replace("base_model.model.", "").split(".ia3_l")[0]
    kind = module.rsplit(".", 1)[1]
    w = p.detach().numpy().reshape(-1)
    if kind == "wo":  # input scaling of wo == our FFN hidden site
      flat[modules[module][:-1] + ("ffn_hidden_adapter", "scale")] = jnp.asarray(w)
    else:
      flat[_adapter_path(modules, module, kind) + ("scale",)] = jnp.asarray(w.reshape(4, 8))
    n += 1
  assert n == 2 * 2 + 2 * 4 + 4  # k, v per attention (2 enc + 4 dec attentions) and wo per layer
  theirs, tgt = _hf_logits(peft_model)
  ours = _ours(config, traverse_util.unflatten_dict(flat), IA3())
  mask = tgt > 0
  np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4)
