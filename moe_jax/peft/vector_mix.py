"""Moved to `moe_jax/kernels/vector_mix.py` (hand-written gradients live apart from the
methods); this name stays for existing imports."""
import sys

from moe_jax.kernels import vector_mix

sys.modules[__name__] = vector_mix
