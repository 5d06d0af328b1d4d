"""Moved to `moe_jax/evaluation/inference.py`; this name stays for existing imports."""
import sys

from moe_jax.evaluation import inference

sys.modules[__name__] = inference
