"""Whether the hand-written gradients run: `thin_matmul.py`, `vector_mix.py`
and `rank_mix.py` (the same math as autodiff, with operand layouts chosen for
XLA:CPU's dot library and pinned by optimisation barriers).

They were written for XLA:CPU and pay off there (`make bench`). Compiled for
TPU (`python -m moe_jax.plan --topology=...`) they were measured no better
than autodiff (docs/scale.md, "Which gradient code each platform compiles"),
so by default they run only in programs compiled for CPU. The platform is the one the program is traced for: the
current mesh's devices (a TPU slice described by libtpu, in the planner),
else jax's default backend.

MOE_JAX_HAND_GRADIENTS=auto (default) | on | off overrides it, for
comparisons.
"""
from __future__ import annotations

import os

import jax

MODES = ("auto", "on", "off")
PLATFORMS = ("cpu",)  # where `auto` turns them on


def target_platform() -> str:
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh.abstract_device.platform
  return jax.default_backend()


def enabled() -> bool:
  mode = os.environ.get("MOE_JAX_HAND_GRADIENTS", "auto")
  if mode not in MODES:
    raise ValueError(f"MOE_JAX_HAND_GRADIENTS={mode!r}; expected one of {MODES}")
  return target_platform() in PLATFORMS if mode == "auto" else mode == "on"
