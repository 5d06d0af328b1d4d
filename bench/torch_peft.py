"""The same LoRA train step in Hugging Face peft on PyTorch (CPU), for
comparison with moe-jax's `lora_r4`: T5 v1.1 of the same dimensions, LoRA rank
4, alpha 16 on q, k, v, o, wi_0 and wo, Adafactor (transformers') at a constant
learning rate, one thread. None when torch, transformers or peft is missing."""
from __future__ import annotations

import numpy as np


def prepare(config, batch, rank: int = 4, alpha: float = 16.0, threads: int = 1):
  try:
    import peft
    import torch
    import transformers
  except ImportError:
    return None
  torch.manual_seed(0)
  torch.set_num_threads(threads)
  hf_config = transformers.T5Config(
      vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
      num_layers=config.num_encoder_layers, num_decoder_layers=config.num_decoder_layers,
      num_heads=config.num_heads, feed_forward_proj="gated-gelu", dropout_rate=0.0,
      tie_word_embeddings=False, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(hf_config)
  lora = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                         target_modules=["q", "k", "v", "o", "wi_0", "wo"])
  model = peft.get_peft_model(model, lora)
  model.train()
  opt = transformers.optimization.Adafactor([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                                            scale_parameter=False, relative_step=False, warmup_init=False)
  inputs = {"input_ids": torch.as_tensor(np.asarray(batch["encoder_input_tokens"]), dtype=torch.long),
            "decoder_input_ids": torch.as_tensor(np.asarray(batch["decoder_input_tokens"]), dtype=torch.long),
            "labels": torch.as_tensor(np.asarray(batch["decoder_target_tokens"]), dtype=torch.long)}
  inputs["attention_mask"] = (inputs["input_ids"] > 0).long()

  def run():
    loss = model(**inputs).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
  return run, {"trainable_params": int(trainable), "torch": torch.__version__, "peft": peft.__version__,
               "transformers": transformers.__version__, "threads": threads}
