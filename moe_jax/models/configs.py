"""Backbone configurations and named presets.

Sizes of the T5 v1.1 (and LM-adapted, same architecture) family follow the
released t5x gin configs; Llama sizes follow the published model cards.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Optional, Union


@dataclasses.dataclass(frozen=True)
class T5Config:
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 1024
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  mlp_variant: str = "gated-gelu"  # T5 1.0: "relu"
  tie_word_embeddings: bool = False  # output head shares the token embedding
  scale_decoder_outputs: bool = False  # multiply by d_model**-0.5 before the head (T5 1.0)
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.0
  dtype: str = "float32"  # activations; "bfloat16" on accelerators
  param_dtype: str = "float32"
  pad_id: int = 0
  eos_id: int = 1
  decoder_start_id: int = 0
  scan_layers: bool = False  # nn.scan over each stack (see layer_stack.py)
  remat_policy: str = "none"  # "none" | "minimal" | "full"

  @property
  def family(self) -> str:
    return "t5"


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Llama-family decoder-only LM (RoPE, SwiGLU, RMSNorm, GQA)."""
  vocab_size: int = 32000
  d_model: int = 4096
  d_ff: int = 11008
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: Optional[int] = None  # default d_model // num_heads
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-5
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 4096
  dropout_rate: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  pad_id: int = 0
  bos_id: Optional[int] = 1
  eos_id: int = 2
  scan_layers: bool = False
  remat_policy: str = "none"

  @property
  def family(self) -> str:
    return "decoder"

  @property
  def kv_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads


ModelConfig = Union[T5Config, DecoderConfig]


def _t5_1_1(d_model, d_ff, num_heads, num_layers, scan_layers=False):
  return T5Config(d_model=d_model, d_ff=d_ff, num_heads=num_heads, d_kv=64,
                  num_encoder_layers=num_layers, num_decoder_layers=num_layers, scan_layers=scan_layers)


PRESETS: dict[str, ModelConfig] = {
    # T5 v1.1 / T5 v1.1 LM-adapted (identical architectures).
    "t5_1_1_small": _t5_1_1(512, 1024, 6, 8),
    "t5_1_1_base": _t5_1_1(768, 2048, 12, 12),
    # The 24-layer sizes scan their layers (one layer compiled, not 24).
    "t5_1_1_large": _t5_1_1(1024, 2816, 16, 24, scan_layers=True),
    "t5_1_1_xl": _t5_1_1(2048, 5120, 32, 24, scan_layers=True),
    "t5_1_1_xxl": _t5_1_1(4096, 10240, 64, 24, scan_layers=True),
    # Original T5 (1.0): ReLU FFN, tied and rescaled output head.
    "t5_small": T5Config(d_model=512, d_ff=2048, num_heads=8, num_encoder_layers=6,
                         num_decoder_layers=6, mlp_variant="relu", tie_word_embeddings=True,
                         scale_decoder_outputs=True),
    "t5_base": T5Config(d_model=768, d_ff=3072, num_heads=12, num_encoder_layers=12,
                        num_decoder_layers=12, mlp_variant="relu", tie_word_embeddings=True,
                        scale_decoder_outputs=True),
    # A T5 v1.1-shaped model small enough for CPU demos and tests.
    "t5_1_1_tiny": T5Config(d_model=64, d_ff=128, num_heads=4, d_kv=16, num_encoder_layers=2,
                            num_decoder_layers=2),
    "llama2_7b": DecoderConfig(scan_layers=True),
    "llama3_8b": DecoderConfig(vocab_size=128256, d_ff=14336, num_kv_heads=8, rope_theta=500000.0,
                               max_position_embeddings=8192, bos_id=128000, eos_id=128001, scan_layers=True),
    "llama_tiny": DecoderConfig(vocab_size=512, d_model=64, d_ff=128, num_layers=2, num_heads=4,
                                num_kv_heads=2, max_position_embeddings=512),
}


def get_preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    close = difflib.get_close_matches(name, PRESETS, n=3)
    raise KeyError(f"unknown model preset {name!r}; close matches: {close}; all: {sorted(PRESETS)}")
  return dataclasses.replace(PRESETS[name], **overrides)
