"""MoV, mixture of (IA)3 vectors (Zadouri et al. 2023, the MoV layer).

Each site holds E (IA)3 vectors l_e (initialised to ones) and a router:
    p = softmax(W_g h),   l_mix = sum_e p_e l_e,   y = l_mix * h
(soft merging: the vectors are mixed, not the outputs). As in the released
code (flaxformer fork: `k_conv`/`v_conv`/`intermediate_conv` hooks), the
router reads the activation being adapted: for keys/values the projected
key/value, its kernel (d_kv, E) shared across heads, so every head of every
token gets its own mixture; in the FFN the activated first branch
act(wi_0 x) (the site's x), before the product with wi_1 x - scaling the
product or that branch is the same output, but the router input differs.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from moe_jax import adapters as sites
from moe_jax.kernels import vector_mix
from moe_jax.peft.ia3 import IA3_TARGETS
from moe_jax.peft.routers import Router, RouterConfig, RoutedOptions


class MoVSite(nn.Module):
  info: sites.SiteInfo
  router: RouterConfig

  @nn.compact
  def __call__(self, x, y, ctx):
    e = self.router.num_experts
    vectors = self.param("experts", nn.with_logical_partitioning(nn.initializers.ones,
                                                                 ("expert",) + self.info.out_axes),
                         (e,) + self.info.out_shape, jnp.float32)
    # k/v: y [B, T, H, D] -> probs [B, T, H, E]; FFN: y [B, T, F] -> [B, T, E]
    router_input = x if self.info.kind == sites.FFN_HIDDEN else y
    router = Router(self.router, name="router")
    seq = sites.site_sequence(self.info, ctx)
    if router.mixable(router_input, ctx) and y.dtype == jnp.float32:
      # The same math with a hand-written gradient (vector_mix.py: faster on CPU).
      return router(router_input, ctx, seq, mixer=lambda r, kernel: self._fused(r, y, kernel, vectors))[1]
    probs = router(router_input, ctx, seq)
    spec = "bthe,ehd->bthd" if len(self.info.out_shape) == 2 else "bte,ef->btf"
    if self.router.top_k is None or self.router.renormalize:
      # Probabilities sum to one, so sum_e p_e l_e = 1 + sum_e p_e (l_e - 1);
      # this form makes the untrained model (all l_e = 1) the backbone exactly.
      merged = 1.0 + jnp.einsum(spec, probs, vectors - 1.0)
    else:
      merged = jnp.einsum(spec, probs, vectors)
    return y * merged.astype(y.dtype)

  def _fused(self, router_input, y, kernel, vectors):
    if len(self.info.out_shape) == 2:  # keys/values [B, T, H, D]: the router reads y per head
      return vector_mix.self_routed_scale(y, kernel, vectors - 1.0)
    # FFN [B, T, F]: one "head"
    out, probs = vector_mix.routed_scale(router_input[..., None, :], y[..., None, :], kernel,
                                         vectors[:, None] - 1.0)
    return out[..., 0, :], probs[..., 0, :]


@dataclasses.dataclass(frozen=True)
class MoV(RoutedOptions, sites.Adapters):
  targets: tuple[str, ...] = IA3_TARGETS

  def site(self, info, name):
    if info.kind not in self.targets:
      return None
    return MoVSite(info, self.router_config(), name=name)
