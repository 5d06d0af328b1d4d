"""Moved to `moe_jax/training/preemption.py`; this name stays for existing imports."""
import sys

from moe_jax.training import preemption

sys.modules[__name__] = preemption
