"""Moved to `moe_jax/training/optim.py`; this name stays for existing imports."""
import sys

from moe_jax.training import optim

sys.modules[__name__] = optim
