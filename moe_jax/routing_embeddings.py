"""Moved to `moe_jax/training/routing_embeddings.py`; this name stays for existing imports."""
import sys

from moe_jax.training import routing_embeddings

sys.modules[__name__] = routing_embeddings
