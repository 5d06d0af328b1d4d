"""Moved to `moe_jax/training/metrics.py`; this name stays for existing imports."""
import sys

from moe_jax.training import metrics

sys.modules[__name__] = metrics
