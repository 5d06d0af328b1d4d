"""Moved to `moe_jax/training/second_moments.py`; this name stays for existing imports."""
import sys

from moe_jax.training import second_moments

sys.modules[__name__] = second_moments
