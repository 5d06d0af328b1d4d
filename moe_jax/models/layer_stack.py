"""A stack of identical layers: unrolled (`layers_<i>`) or scanned (`layers`),
each optionally rematerialised.

Scanning (`nn.scan`) traces and compiles one layer instead of N, so compile
time and program size stop growing with depth. Every layer's parameters -
backbone and adapters - are stacked along a leading axis named `layers`
(logical axis for partitioning; replicated by the default rules) and stay
distinct per layer. Decoding caches are stacked along axis 1 so the batch
stays leading (beam search reorders along it). Sown auxiliary losses and
router statistics gain a leading layer axis.

Rematerialisation (`remat_policy`) trades compute for activation memory in
the backward pass:
- "none": keep every activation the backward pass needs (fastest, most memory);
- "minimal": keep the outputs of matmuls against weights (projections, no
  batch dimension in the contraction) and recompute the rest - norms,
  activations, attention softmax and dropout masks;
- "full": keep only each layer's input and recompute the whole layer in the
  backward pass (least memory, about one extra forward pass of compute).
"""
from __future__ import annotations

import flax.linen as nn
import jax

from moe_jax import adapters as sites

REMAT_POLICIES = {
    "none": None,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}
SCANNED_NAME = "layers"
# collection -> the axis its per-layer values are stacked on
_VARIABLE_AXES = {"params": 0, "cache": 1, sites.AUX_LOSS_COLLECTION: 0, sites.ROUTER_STATS_COLLECTION: 0,
                  "intermediates": 0}


def check_policy(policy: str) -> None:
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy={policy!r}; expected one of {sorted(REMAT_POLICIES)}")


def apply(layer_cls, config, num_layers: int, x, args: tuple, attrs: dict):
  """Runs `num_layers` layers over `x`; call inside a compact module.

  `layer_cls(**attrs, layer=i)` is called as `layer(x, *args) -> (x, None)`;
  `args` are the same for every layer.
  """
  policy = config.remat_policy
  check_policy(policy)
  cls = layer_cls
  if REMAT_POLICIES[policy] is not None:
    cls = nn.remat(layer_cls, policy=REMAT_POLICIES[policy], prevent_cse=not config.scan_layers)
  if not config.scan_layers:
    for i in range(num_layers):
      x, _ = cls(**attrs, layer=i, name=f"layers_{i}")(x, *args)
    return x
  scanned = nn.scan(cls, variable_axes=_VARIABLE_AXES, split_rngs={"params": True, "dropout": True},
                    in_axes=(nn.broadcast,) * len(args), length=num_layers,
                    metadata_params={nn.PARTITION_NAME: SCANNED_NAME})
  x, _ = scanned(**attrs, name=SCANNED_NAME)(x, *args)
  return x
