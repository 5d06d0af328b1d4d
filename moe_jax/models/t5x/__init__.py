"""Google's T5X checkpoints (t5x minimal T5 and flaxformer T5 layouts) as moe-jax models."""
from moe_jax.models.t5x.loader import load_t5x_checkpoint
from moe_jax.models.t5x.reader import T5XCheckpoint, is_t5x_checkpoint

__all__ = ["T5XCheckpoint", "is_t5x_checkpoint", "load_t5x_checkpoint"]
