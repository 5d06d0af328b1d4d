"""Matmuls with one thin side - LoRA's rank, a router's experts - whose
gradients are written out in the layouts XLA:CPU runs fast.

The math is x @ w. Autodiff's weight gradient contracts over the tokens
(x^T g); XLA:CPU ran those [d, K] products outside its fast dot library
(YNNPACK), after a transposed copy of the big operand - 15 ms for one FFN
site's [2048, 1024] copy, more than the site's whole LoRA. Here the thin
[tokens, K] operand is transposed instead (it is K/d of the size) and the
product is formed expert-major, [K, tokens] @ [tokens, d]. Optimisation
barriers keep XLA from folding the transposes back: each layout stays where it
is written. The results are the same numbers up to summation order.
"""
from __future__ import annotations

import jax

from moe_jax.kernels import hand_gradients

_barrier = jax.lax.optimization_barrier


def expert_major_product(thin: jax.Array, big: jax.Array) -> jax.Array:
  """sum over items of thin[..., K] (x) big[..., D] -> [K, D]."""
  thin2 = _barrier(thin.reshape(-1, thin.shape[-1]))
  big2 = big.reshape(-1, big.shape[-1])
  return _barrier(_barrier(thin2.T) @ big2)


def down(x: jax.Array, w: jax.Array, ctx=None) -> jax.Array:
  """x [..., D] @ w [D, K], K small (LoRA A, router kernels). Under
  rematerialisation (`ctx.rematerialised`) the plain matmul: a custom
  gradient's residuals would be kept whatever the remat policy. Off the
  platforms they were written for (hand_gradients.py), the plain matmul."""
  return _down(x, w) if _hand_written(ctx) else x @ w


def up(h: jax.Array, w: jax.Array, ctx=None) -> jax.Array:
  """h [..., K] @ w [K, D], K small (LoRA B); `ctx` as in `down`."""
  return _up(h, w) if _hand_written(ctx) else h @ w


def _hand_written(ctx) -> bool:
  return not (ctx is not None and ctx.rematerialised) and hand_gradients.enabled()


@jax.custom_vjp
def _down(x, w):
  return x @ w


def _down_fwd(x, w):
  return x @ w, (x, w)


def _down_bwd(saved, g):
  x, w = saved
  return g @ w.T, expert_major_product(g, x).T.astype(w.dtype)


_down.defvjp(_down_fwd, _down_bwd)


@jax.custom_vjp
def _up(h, w):
  return h @ w


def _up_fwd(h, w):
  return h @ w, (h, w)


def _up_bwd(saved, g):
  h, w = saved
  # token-major [tokens, K], kept so (XLA would rather transpose g)
  return _barrier(g @ w.T), expert_major_product(h, g).astype(w.dtype)


_up.defvjp(_up_fwd, _up_bwd)
