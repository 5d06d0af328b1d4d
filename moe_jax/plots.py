"""Moved to `moe_jax/evaluation/plots.py`; this name stays for existing imports."""
import sys

from moe_jax.evaluation import plots

sys.modules[__name__] = plots
