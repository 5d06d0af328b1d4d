"""Moved to `moe_jax/training/partitioning.py`; this name stays for existing imports."""
import sys

from moe_jax.training import partitioning

sys.modules[__name__] = partitioning
