"""MoV's token-routed soft merge with a hand-written gradient.

    p = softmax(r W_g),   m = 1 + sum_e p_e (l_e - 1),   out = y * m

per item (token, or token and head for keys/values: r, y [..., H, D], W_g
[D_r, E] shared by the heads, vectors l [E, H, D]). The math is the plain MoV
layer's (mov.py); only the gradient is written out, because XLA:CPU turned the
autodiff version into dots it runs at a few GFLOP/s (weight gradients whose
contraction runs over the tokens were given the layouts its fast dot library
(YNNPACK) does not take, plus transposed copies of the big operands) - on one
core MoV-10 cost 1.17x IA3 instead of its 1.02x FLOPs. Here:
  - the merged vector m is not stored: it is recomputed where it is used
    (E multiply-adds per element, fused into the products with y and d_out);
  - every gradient is either a token-major matmul (E outputs per row) or an
    expert-major [E, tokens] @ [tokens, D] product, whose [E, D] result is
    transposed afterwards (the optimisation barrier stops XLA from folding that
    transpose back into the slow layout);
  - on keys/values the merge is elementwise over the E experts (no dot with
    the heads batched); in the FFN, a token-major [tokens, E] @ [E, F] matmul;
  - keys/values route on themselves (`self_routed_scale`): y's two gradients
    are summed in one pass.
`probs` is returned too (for the load-balancing loss and router statistics);
its cotangent joins the merge's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.kernels.thin_matmul import expert_major_product


def _merge(probs, vectors_minus_one):
  """1 + sum_e p_e (l_e - 1): probs [..., H, E], vectors [E, H, D] -> [..., H, D]."""
  if vectors_minus_one.shape[1] == 1:  # one head (FFN): a token-major matmul
    return 1.0 + (probs[..., 0, :] @ vectors_minus_one[:, 0])[..., None, :]
  merged = 1.0
  for e in range(vectors_minus_one.shape[0]):
    merged = merged + probs[..., e, None] * vectors_minus_one[e]
  return merged


@jax.custom_vjp
def routed_scale(router_input, y, kernel, vectors_minus_one):
  """(y * m, p). router_input [..., H, D_r]; y [..., H, D]; kernel [D_r, E];
  vectors_minus_one [E, H, D] (l - 1, so untrained vectors give y exactly)."""
  (out, probs), _ = _forward(router_input, y, kernel, vectors_minus_one)
  return out, probs


@jax.custom_vjp
def self_routed_scale(y, kernel, vectors_minus_one):
  """`routed_scale(y, y, ...)` (keys/values route on themselves), with y's two
  gradients summed in one pass."""
  (out, probs), _ = _forward(y, y, kernel, vectors_minus_one)
  return out, probs


def _forward(router_input, y, kernel, vectors_minus_one):
  probs = jax.nn.softmax(router_input @ kernel, axis=-1)
  merged = _merge(probs, vectors_minus_one)
  return (y * merged, probs), (router_input, y, kernel, vectors_minus_one, probs)


def _backward_parts(saved, cotangents):
  """(d_logits, d_y through the merge, d_kernel, d_vectors)."""
  router_input, y, kernel, vectors_minus_one, probs = saved
  merged = _merge(probs, vectors_minus_one)  # recomputed: E multiply-adds, fused into d_y
  d_out, d_probs = cotangents
  heads = vectors_minus_one.shape[1]
  scaled = d_out * y  # d merged
  # d p_e = <d merged, l_e - 1> per item; per head, so a dot with the heads batched.
  if heads == 1:  # token-major [tokens, E], kept so (XLA would rather transpose `scaled`)
    d_p = jax.lax.optimization_barrier((scaled[..., 0, :] @ vectors_minus_one[:, 0].T)[..., None, :])
  else:
    d_p = jnp.einsum("...hd,ehd->...he", scaled, vectors_minus_one)
  d_p = d_p + d_probs
  d_logits = probs * (d_p - jnp.sum(d_p * probs, axis=-1, keepdims=True))
  if heads == 1:
    d_vectors = expert_major_product(probs, scaled)[:, None]
  else:
    d_vectors = jnp.einsum("...he,...hd->ehd", probs, scaled)
  d_kernel = expert_major_product(d_logits, router_input).T
  return d_logits, d_out * merged, d_kernel, d_vectors


def _backward(saved, cotangents):
  d_logits, d_y, d_kernel, d_vectors = _backward_parts(saved, cotangents)
  return d_logits @ saved[2].T, d_y, d_kernel, d_vectors


def _self_forward(y, kernel, vectors_minus_one):
  return _forward(y, y, kernel, vectors_minus_one)


def _self_backward(saved, cotangents):
  d_logits, d_y, d_kernel, d_vectors = _backward_parts(saved, cotangents)
  return d_y + d_logits @ saved[2].T, d_kernel, d_vectors


routed_scale.defvjp(_forward, _backward)
self_routed_scale.defvjp(_self_forward, _self_backward)
