"""MoLoRA's token-routed mixture in rank space with a hand-written gradient.

    [h, l] = x [A | W_g],   p = softmax(l),   g = h * p (per expert's r columns),
    out = g B

per token: x [N, D] (tokens flattened); A [D, E*r] (every expert's A, experts major in the
columns); W_g [D, E]; B [E*r, O]. The math is MoLoRA's (molora.py, with
lora.LowRankExperts); only the gradient is written out. Autodiff split the one
[x @ [A | W_g]] product into slices whose gradients came back as pads and an
add, transposed the stored g for B's gradient and the logits' gradient for the
kernel's - a dozen small passes per site, each a separate XLA:CPU op. Here:
  - the mixed activations g are not stored: the backward recomputes them from
    the stored [h, l] and p straight into the expert-major layout B's
    gradient wants ([E*r, tokens] @ [tokens, O]);
  - the gradients of h and l are written as one [tokens, E*r + E] tensor and
    its expert-major transpose, read by one matmul each for x's and the
    kernel's gradient (thin_matmul's layouts, which XLA:CPU's fast dots take).
`probs` is returned too (load-balancing loss, router statistics); its
cotangent joins the mixture's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.kernels.thin_matmul import expert_major_product

_barrier = jax.lax.optimization_barrier


def _split(z, num_experts):
  """[..., E*r + E] -> (h [..., E, r], logits [..., E])."""
  h = z[..., :-num_experts]
  return h.reshape(h.shape[:-1] + (num_experts, -1)), z[..., -num_experts:]


@jax.custom_vjp
def routed_low_rank(x, router_kernel, down_kernel, up_kernel):
  """(sum_e p_e B_e A_e x, p): x [N, D], router_kernel [D, E], down_kernel
  [D, E*r], up_kernel [E*r, O] -> ([N, O], [N, E])."""
  (out, probs), _ = _forward(x, router_kernel, down_kernel, up_kernel)
  return out, probs


def _forward(x, router_kernel, down_kernel, up_kernel):
  num_experts = router_kernel.shape[1]
  kernel = jnp.concatenate([down_kernel, router_kernel], axis=1)
  z = x @ kernel  # one pass over x for the experts and the router
  h, logits = _split(z, num_experts)
  probs = jax.nn.softmax(logits, axis=-1)
  g = (h * probs[..., None]).reshape(h.shape[:-2] + (-1,))
  return (g @ up_kernel, probs), (x, kernel, up_kernel, z, probs)


def _backward(saved, cotangents):
  x, kernel, up_kernel, z, probs = saved
  d_out, d_probs = cotangents
  num_experts = probs.shape[-1]
  h, _ = _split(z, num_experts)
  d_g = _barrier(d_out @ up_kernel.T).reshape(h.shape)  # token-major [N, E, r]
  # B's gradient: g recomputed, written expert-major [E*r, N] in the same pass.
  g_t = _barrier(jnp.transpose((h * probs[..., None]).reshape(h.shape[0], -1)))
  d_up = _barrier(g_t @ d_out)
  d_h = d_g * probs[..., None]
  d_p = jnp.sum(d_g * h, axis=-1) + d_probs
  d_logits = probs * (d_p - jnp.sum(d_p * probs, axis=-1, keepdims=True))
  d_z = jnp.concatenate([d_h.reshape(d_h.shape[0], -1), d_logits], axis=-1)  # [N, E*r + E]
  d_kernel = expert_major_product(d_z, x).T  # [E*r + E, D], then the small transpose
  d_x = _barrier(d_z) @ kernel.T
  split = kernel.shape[1] - num_experts
  return d_x, d_kernel[:, split:], d_kernel[:, :split], d_up


routed_low_rank.defvjp(_forward, _backward)
