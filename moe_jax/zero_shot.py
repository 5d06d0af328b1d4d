"""Moved to `moe_jax/tools/zero_shot.py`; this name stays for existing imports."""
import sys

from moe_jax.tools import zero_shot

if __name__ == "__main__":  # `python -m moe_jax.zero_shot` keeps working
  sys.exit(zero_shot.main())

sys.modules[__name__] = zero_shot
