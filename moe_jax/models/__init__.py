"""Backbones (T5 encoder-decoder, Llama-family decoder-only) and their t5x-like API."""
from moe_jax.models.api import DecoderOnlyModel, EncoderDecoderModel, build_model
from moe_jax.models.configs import DecoderConfig, T5Config, get_preset
from moe_jax.models.hf import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from moe_jax.models.t5x import T5XCheckpoint, load_t5x_checkpoint

__all__ = [
    "CheckpointError", "DecoderConfig", "DecoderOnlyModel", "EncoderDecoderModel", "T5Config",
    "T5XCheckpoint", "build_model", "get_preset", "load_hf_checkpoint", "load_t5x_checkpoint",
    "save_hf_checkpoint",
]
