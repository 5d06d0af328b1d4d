"""Moved to `moe_jax/adapters.py` (the adapter contract is a leaf the backbone
imports without loading any method); this name stays for existing imports."""
import sys

from moe_jax import adapters

sys.modules[__name__] = adapters
