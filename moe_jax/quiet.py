"""Moved to `moe_jax/utils/quiet.py`; this name stays for existing imports."""
import sys

from moe_jax.utils import quiet

sys.modules[__name__] = quiet
