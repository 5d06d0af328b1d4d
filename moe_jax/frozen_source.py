"""Moved to `moe_jax/training/frozen_source.py`; this name stays for existing imports."""
import sys

from moe_jax.training import frozen_source

sys.modules[__name__] = frozen_source
