"""Moved to `moe_jax/utils/validation.py`; this name stays for existing imports."""
import sys

from moe_jax.utils import validation

sys.modules[__name__] = validation
