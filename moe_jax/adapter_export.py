"""Moved to `moe_jax/evaluation/adapter_export.py`; this name stays for existing imports."""
import sys

from moe_jax.evaluation import adapter_export

sys.modules[__name__] = adapter_export
