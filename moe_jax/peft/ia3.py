"""(IA)3 (Liu et al. 2022, Sec. 3.3): learned vectors, initialised to ones, rescale
the keys and values of every attention (l_k * k, l_v * v) and the FFN
intermediate after the activation (l_ff * gamma(W_1 x)). In T5 v1.1 that
intermediate is act(wi_0 x) * wi_1 x; scaling it equals scaling the activated
wi_0 branch.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from moe_jax import adapters as sites

IA3_TARGETS = ("k", "v", sites.FFN_HIDDEN)


class IA3Site(nn.Module):
  info: sites.SiteInfo

  @nn.compact
  def __call__(self, x, y, ctx):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, self.info.out_axes),
                       self.info.out_shape, jnp.float32)
    return y * jnp.asarray(scale, y.dtype)


@dataclasses.dataclass(frozen=True)
class IA3(sites.Adapters):
  targets: tuple[str, ...] = IA3_TARGETS

  def site(self, info, name):
    return IA3Site(info, name=name) if info.kind in self.targets else None
