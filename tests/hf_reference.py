"""Random-weight Hugging Face reference models (PyTorch, CPU) saved to disk."""
from __future__ import annotations

import numpy as np
import torch


def t5_model(seed: int = 0, **config):
  from transformers import T5Config, T5ForConditionalGeneration
  torch.manual_seed(seed)
  untie = config.get("tie_word_embeddings") is False
  model = T5ForConditionalGeneration(T5Config(**config)).eval()
  if untie:
    # transformers 5 always ties at construction; real v1.1 checkpoints carry
    # their own lm_head, which it loads untied. Give the reference one too.
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
  return model


def llama_model(seed: int = 0, **config):
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.manual_seed(seed)
  return LlamaForCausalLM(LlamaConfig(**config)).eval()


def save(model, path) -> str:
  model.save_pretrained(str(path))
  return str(path)


def padded(rows: list[list[int]]) -> np.ndarray:
  width = max(len(r) for r in rows)
  return np.array([r + [0] * (width - len(r)) for r in rows], np.int32)


def shift_right(targets: np.ndarray, start_id: int = 0) -> np.ndarray:
  return np.concatenate([np.full((targets.shape[0], 1), start_id, targets.dtype), targets[:, :-1]], 1)
