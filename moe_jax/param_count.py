"""Moved to `moe_jax/tools/param_count.py`; this name stays for existing imports."""
import sys

from moe_jax.tools import param_count

if __name__ == "__main__":  # `python -m moe_jax.param_count` keeps working
  sys.exit(param_count.main())

sys.modules[__name__] = param_count
