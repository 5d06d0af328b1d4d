"""Moved to `moe_jax/utils/fs.py`; this name stays for existing imports."""
import sys

from moe_jax.utils import fs

sys.modules[__name__] = fs
