"""Backbones (T5 encoder-decoder, Llama-family decoder-only) and their t5x-like API."""
from moe_jax.models.api import DecoderOnlyModel, EncoderDecoderModel, build_model
from moe_jax.models.configs import DecoderConfig, T5Config, get_preset
from moe_jax.models.hf import load_hf_checkpoint, save_hf_checkpoint

__all__ = [
    "DecoderConfig", "DecoderOnlyModel", "EncoderDecoderModel", "T5Config", "build_model",
    "get_preset", "load_hf_checkpoint", "save_hf_checkpoint",
]
