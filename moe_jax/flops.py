"""Moved to `moe_jax/tools/flops.py`; this name stays for existing imports."""
import sys

from moe_jax.tools import flops

sys.modules[__name__] = flops
