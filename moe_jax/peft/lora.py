"""LoRA (Hu et al. 2021): h = W x + (alpha / r) * B A dropout(x), A random, B = 0 (eq. 3).

The low-rank helpers here (`LowRankExperts`) also serve the mixture methods:
E pairs stored as A [E, *in, r], B [E, r, *out]; a mixture is formed in rank
space (weight each expert's A_e x, then one matmul with the stacked B), so the
[batch, length, E, d_out] tensor is never materialised.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import adapters as sites
from moe_jax.kernels import thin_matmul

ALL_PROJECTIONS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo", "gate", "up", "down")
A_INITS = ("kaiming_uniform", "gaussian", "normal:<std>")


def a_initializer(kind: str, rank: int, fan_in: int):
  """How A starts (B starts at zero):
  - "kaiming_uniform": peft's default, kaiming-uniform(a=sqrt 5) = U(+-1/sqrt(fan_in));
  - "gaussian": peft's `init_lora_weights="gaussian"`, N(0, 1/r);
  - "normal:<std>": N(0, std) - the released MoV/MoLoRA code uses 0.02
    (src/lora.py, src/molora.py), the released MOELoRA code 0.01.
  """
  if kind == "kaiming_uniform":
    return torch_linear_init(fan_in)
  if kind == "gaussian":
    return nn.initializers.normal(1.0 / rank)
  if kind.startswith("normal:"):
    try:
      std = float(kind.split(":", 1)[1])
    except ValueError:
      std = -1.0
    if std > 0:
      return nn.initializers.normal(std)
  raise ValueError(f"lora A init {kind!r}; expected one of {A_INITS}")


def torch_linear_init(fan_in: int):
  """PyTorch nn.Linear's default weight init, U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class LowRankExperts(nn.Module):
  """E low-rank pairs for one site. `mix(x, weights)` returns sum_e w_e B_e A_e x."""
  info: sites.SiteInfo
  num_experts: int
  rank: int
  a_init: str = "kaiming_uniform"
  dropout_rate: float = 0.0

  def setup(self):
    in_shape, out_shape = self.info.in_shape, self.info.out_shape
    fan_in = int(np.prod(in_shape))
    self.lora_a = self.param(
        "lora_a", nn.with_logical_partitioning(
            _stacked(a_initializer(self.a_init, self.rank, fan_in)),
            ("expert",) + self.info.in_axes + ("rank",)),
        (self.num_experts,) + in_shape + (self.rank,), jnp.float32)
    self.lora_b = self.param(
        "lora_b", nn.with_logical_partitioning(nn.initializers.zeros, ("expert", "rank") + self.info.out_axes),
        (self.num_experts, self.rank) + out_shape, jnp.float32)
    self.dropout = nn.Dropout(self.dropout_rate)

  def down_kernel(self, dtype) -> jax.Array:
    """Every expert's A as one [in, E*r] matrix (experts major in the columns)."""
    a = jnp.asarray(self.lora_a, dtype).reshape(self.num_experts, -1, self.rank)
    return jnp.transpose(a, (1, 0, 2)).reshape(a.shape[1], -1)

  def down(self, x: jax.Array, ctx: sites.AdapterContext) -> jax.Array:
    """x [..., *in] -> rank-space activations [..., E, r]."""
    n_in = len(self.info.in_shape)
    x = self.dropout(x, deterministic=ctx.deterministic)
    flat = x.reshape(x.shape[:-n_in] + (-1,))
    h = thin_matmul.down(flat, self.down_kernel(x.dtype), ctx)  # one matmul for all experts
    return h.reshape(h.shape[:-1] + (self.num_experts, self.rank))

  def up_kernel(self, dtype) -> jax.Array:
    """Every expert's B as one [E*r, out] matrix (rows in `down_kernel`'s column order)."""
    return jnp.asarray(self.lora_b, dtype).reshape(self.num_experts * self.rank, -1)

  def up(self, h: jax.Array, ctx: sites.AdapterContext) -> jax.Array:
    """Rank-space [..., E, r] -> [..., *out], summing over experts in one matmul."""
    out = thin_matmul.up(h.reshape(h.shape[:-2] + (-1,)), self.up_kernel(h.dtype), ctx)
    return out.reshape(h.shape[:-2] + self.info.out_shape)

  def mix(self, x, weights, ctx):
    """weights [..., E] broadcastable against x's leading dims; None: sum all."""
    h = self.down(x, ctx)
    if weights is not None:
      h = h * weights[..., None].astype(h.dtype)
    return self.up(h, ctx)


def _stacked(init):
  """Initialise each expert's A independently with the per-expert fan-in."""
  def wrapped(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, shape[0])
    return jnp.stack([init(k, shape[1:], dtype) for k in keys])
  return wrapped


class LoRASite(nn.Module):
  info: sites.SiteInfo
  rank: int
  alpha: float
  a_init: str
  dropout_rate: float

  @nn.compact
  def __call__(self, x, y, ctx):
    pair = LowRankExperts(self.info, 1, self.rank, self.a_init, self.dropout_rate, name="pair")
    return y + (self.alpha / self.rank) * pair.mix(x, None, ctx).astype(y.dtype)


@dataclasses.dataclass(frozen=True)
class LoRA(sites.Adapters):
  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = ("q", "v")  # site kinds (peft's T5/Llama default)
  dropout_rate: float = 0.0
  a_init: str = "kaiming_uniform"

  def site(self, info, name):
    if info.kind not in self.targets:
      return None
    return LoRASite(info, self.rank, self.alpha, self.a_init, self.dropout_rate, name=name)
