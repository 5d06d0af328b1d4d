"""Frozen backbone: which parameters train, and an optimizer that only sees those.

The mask comes either from a regex over '/'-joined parameter paths (the
released MoV gin's TRAINABLE_REGEX style: a parameter trains iff the regex
fully matches its path) or, by default, from the adapter collection itself:
anything under a `*_adapter`, `layer_hook` or model-hook module.
"""
from __future__ import annotations

import re
from typing import Optional

import jax
import optax
from flax import traverse_util

from moe_jax.adapters import ADAPTER_MODULES, is_adapter_path  # noqa: F401  (the contract names them)


def trainable_mask(params, regex: Optional[str] = None):
  """A pytree of bools shaped like `params`."""
  pattern = re.compile(regex) if regex else None
  flat = traverse_util.flatten_dict(params)
  mask = {k: bool(pattern.fullmatch("/".join(k))) if pattern else is_adapter_path(k) for k in flat}
  if not any(mask.values()):
    raise ValueError(f"trainable mask selects no parameter (regex={regex!r}); e.g. "
                     f"{sorted('/'.join(k) for k in flat)[:3]}")
  return traverse_util.unflatten_dict(mask)


def frozen_base_optimizer(tx: optax.GradientTransformation, mask) -> optax.GradientTransformation:
  """`tx` on trainable leaves; frozen leaves get exactly zero updates and no state."""
  labels = jax.tree_util.tree_map(lambda m: "train" if m else "frozen", mask)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def count(params, mask=None) -> int:
  leaves = jax.tree_util.tree_leaves(params)
  if mask is None:
    return sum(int(x.size) for x in leaves)
  return sum(int(x.size) for x, m in zip(leaves, jax.tree_util.tree_leaves(mask)) if m)
