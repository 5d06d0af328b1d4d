"""Moved to `moe_jax/segments.py` (the adapter contract is a leaf the backbone
imports without loading any method); this name stays for existing imports."""
import sys

from moe_jax import segments

sys.modules[__name__] = segments
