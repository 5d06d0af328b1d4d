"""Moved to `moe_jax/training/trainer.py`; this name stays for existing imports."""
import sys

from moe_jax.training import trainer

sys.modules[__name__] = trainer
