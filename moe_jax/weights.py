"""Moved to `moe_jax/training/weights.py`; this name stays for existing imports."""
import sys

from moe_jax.training import weights

sys.modules[__name__] = weights
