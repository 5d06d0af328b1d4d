"""Shared Transformer building blocks (no PEFT method lives here)."""
