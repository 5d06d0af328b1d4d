"""Feed-forward blocks: T5 v1.1 gated-GELU, T5 1.0 ReLU, Llama SwiGLU.

Every projection is an adapter site, and so is the post-activation hidden
state that enters the output projection (kind `ffn_hidden`), where (IA)3 and
MoV put their FFN vectors. At that site y is the hidden state and x the
activated first branch act(wi_0 x) (in a gated FFN; else y itself): scaling y
elementwise equals scaling that branch, and the branch is what the released
MoV code's FFN hook (`intermediate_conv`) and its router see.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax.layers.dense import DenseGeneral
from moe_jax import adapters as sites

# name of each variant -> (input projections, activation, output projection)
VARIANTS = {
    # T5 v1.1: act(wi_0 x) * wi_1 x; HF "gated-gelu" is the tanh approximation.
    "gated-gelu": (("wi_0", "wi_1"), lambda x: jax.nn.gelu(x, approximate=True), "wo"),
    "gated-relu": (("wi_0", "wi_1"), jax.nn.relu, "wo"),
    "relu": (("wi",), jax.nn.relu, "wo"),  # T5 1.0
    "swiglu": (("gate", "up"), jax.nn.silu, "down"),  # Llama
}


class MLP(nn.Module):
  d_ff: int
  variant: str = "gated-gelu"
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Callable = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
  adapters: sites.Adapters = sites.NO_ADAPTERS
  site_path: str = ""
  stack: str = ""
  layer: int = 0

  def _site(self, kind, x, y, ctx, in_axes, out_axes):
    info = sites.SiteInfo(path=f"{self.site_path}/{kind}", stack=self.stack, layer=self.layer,
                          block="mlp", kind=kind, in_shape=(x.shape[-1],), out_shape=(y.shape[-1],),
                          in_axes=in_axes, out_axes=out_axes)
    return sites.apply_site(self.adapters, info, x, y, ctx)

  def _dense(self, name, x, features, in_axis, out_axis, ctx):
    dense = DenseGeneral(features=(features,), in_axes=(in_axis,), out_axes=(out_axis,),
                         kernel_init=self.kernel_init, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=name)
    return self._site(name, x, dense(x), ctx, (in_axis,), (out_axis,))

  @nn.compact
  def __call__(self, x: jax.Array, ctx: sites.AdapterContext) -> jax.Array:
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown MLP variant {self.variant!r}; known: {sorted(VARIANTS)}")
    in_names, act, out_name = VARIANTS[self.variant]
    branch = act(self._dense(in_names[0], x, self.d_ff, "embed", "mlp", ctx))
    h = branch
    if len(in_names) == 2:
      h = h * self._dense(in_names[1], x, self.d_ff, "embed", "mlp", ctx)
    h = self._site(sites.FFN_HIDDEN, branch, h, ctx, ("mlp",), ("mlp",))
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=ctx.deterministic)
    return self._dense(out_name, h, x.shape[-1], "mlp", "embed", ctx)
