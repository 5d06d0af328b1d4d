"""Moved to `moe_jax/tools/tpu_slices.py`; this name stays for existing imports."""
import sys

from moe_jax.tools import tpu_slices

sys.modules[__name__] = tpu_slices
