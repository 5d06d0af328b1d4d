"""Moved to `moe_jax/kernels/hand_gradients.py` (hand-written gradients live apart from the
methods); this name stays for existing imports."""
import sys

from moe_jax.kernels import hand_gradients

sys.modules[__name__] = hand_gradients
