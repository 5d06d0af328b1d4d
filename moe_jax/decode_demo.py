"""Moved to `moe_jax/tools/decode_demo.py`; this name stays for existing imports."""
import sys

from moe_jax.tools import decode_demo

if __name__ == "__main__":  # `python -m moe_jax.decode_demo` keeps working
  sys.exit(decode_demo.main())

sys.modules[__name__] = decode_demo
