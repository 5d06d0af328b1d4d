"""Moved to `moe_jax/training/checkpoints.py`; this name stays for existing imports."""
import sys

from moe_jax.training import checkpoints

sys.modules[__name__] = checkpoints
