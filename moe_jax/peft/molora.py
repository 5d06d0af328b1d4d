"""MoLoRA, mixture of LoRA experts (Zadouri et al. 2023):
    p = softmax(W_g x),   y = W x + (alpha/r) sum_e p_e B_e A_e x

Each site holds E LoRA pairs (rank r, scale alpha/r) and a router that reads
the site's input; the output adds (alpha/r) * sum_e p_e B_e A_e x, computed in
rank space (see lora.LowRankExperts). Default placement as the released code:
q, k, v, o of every attention and the first FFN input projection and the FFN
output projection (T5 v1.1 wi_0 and wo; T5 1.0 wi and wo; Llama gate and down).
"""
import dataclasses

import flax.linen as nn

from moe_jax import adapters as sites
from moe_jax.kernels import rank_mix
from moe_jax.peft.lora import LowRankExperts
from moe_jax.peft.routers import Router, RouterConfig, RoutedOptions

MOLORA_TARGETS = ("q", "k", "v", "o", "wi_0", "wi", "wo", "gate", "down")


class MoLoRASite(nn.Module):
  info: sites.SiteInfo
  router: RouterConfig
  rank: int
  alpha: float
  a_init: str
  dropout_rate: float

  @nn.compact
  def __call__(self, x, y, ctx):
    n_in = len(self.info.in_shape)
    router_input = x.reshape(x.shape[:-n_in] + (-1,))  # o: heads x d_kv flattened
    router = Router(self.router, name="router")
    experts = LowRankExperts(self.info, self.router.num_experts, self.rank, self.a_init,
                             self.dropout_rate, name="experts")
    seq = sites.site_sequence(self.info, ctx)
    no_dropout = self.dropout_rate == 0 or ctx.deterministic
    if router.mixable(router_input, ctx) and no_dropout:
      # The same math with a hand-written gradient (rank_mix.py: faster on CPU).
      delta = router(router_input, ctx, seq, mixer=lambda r, kernel: self._mixed(r, kernel, experts))[1]
    elif router.fusable(router_input, ctx) and no_dropout:
      # Router logits and the experts' down projection read the same x: one matmul.
      probs, down = router(router_input, ctx, seq, fused_kernel=experts.down_kernel(x.dtype))
      h = down.reshape(down.shape[:-1] + (self.router.num_experts, self.rank))
      delta = experts.up(h * probs[..., None].astype(h.dtype), ctx)
    else:
      probs = router(router_input, ctx, seq)  # [B, T, E]
      delta = experts.mix(x, probs, ctx)
    return y + (self.alpha / self.rank) * delta.astype(y.dtype)

  def _mixed(self, router_input, router_kernel, experts):
    lead = router_input.shape[:-1]
    delta, probs = rank_mix.routed_low_rank(router_input.reshape(-1, router_input.shape[-1]), router_kernel,
                                            experts.down_kernel(router_input.dtype),
                                            experts.up_kernel(router_input.dtype))
    return delta.reshape(lead + self.info.out_shape), probs.reshape(lead + probs.shape[-1:])


@dataclasses.dataclass(frozen=True)
class MoLoRA(RoutedOptions, sites.Adapters):
  """Defaults are the released code's (src/molora.py): alpha fixed at 16, so
  rank 4 gives scale 4; A ~ N(0, 0.02), B = 0."""
  rank: int = 4
  alpha: float = 16.0
  targets: tuple[str, ...] = MOLORA_TARGETS
  dropout_rate: float = 0.0
  a_init: str = "normal:0.02"

  def site(self, info, name):
    if info.kind not in self.targets:
      return None
    return MoLoRASite(info, self.router_config(), self.rank, self.alpha, self.a_init,
                      self.dropout_rate, name=name)
