"""Moved to `moe_jax/kernels/thin_matmul.py` (hand-written gradients live apart from the
methods); this name stays for existing imports."""
import sys

from moe_jax.kernels import thin_matmul

sys.modules[__name__] = thin_matmul
