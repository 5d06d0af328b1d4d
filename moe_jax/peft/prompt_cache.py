"""Per-example decisions made once on the prompt and reused while decoding.

MiLoRA and MoA route each example by its prompt. Without a KV cache the
decision is simply computed. In cached decoding it is computed in the prefill
pass, stored in the 'cache' collection (batch-leading, so beam search can
reorder it) and read back at every step; steps never run the router. A
counter of router runs per example makes that checkable.
"""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax import adapters as sites


def decide_once(module: nn.Module, ctx: sites.AdapterContext, compute: Callable[[], jax.Array],
                shape: tuple[int, ...]) -> jax.Array:
  """Returns compute() [B, ...] now, or the value cached at prefill."""
  if ctx.decode_phase is None:
    return compute()
  decision = module.variable("cache", "decision", jnp.zeros, shape, jnp.float32)
  runs = module.variable("cache", "router_runs", jnp.zeros, shape[:1], jnp.int32)
  if ctx.decode_phase == "prefill":
    value = compute()
    decision.value = value.astype(jnp.float32)
    runs.value = runs.value + 1
    return value
  return decision.value
