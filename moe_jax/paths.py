"""Moved to `moe_jax/utils/paths.py`; this name stays for existing imports."""
import sys

from moe_jax.utils import paths

sys.modules[__name__] = paths
