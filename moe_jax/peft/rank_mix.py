"""Moved to `moe_jax/kernels/rank_mix.py` (hand-written gradients live apart from the
methods); this name stays for existing imports."""
import sys

from moe_jax.kernels import rank_mix

sys.modules[__name__] = rank_mix
