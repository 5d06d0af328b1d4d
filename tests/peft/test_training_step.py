"""One optimizer step on a frozen backbone, for every method."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from moe_jax.models import build_model
from moe_jax.peft import IA3, LoRA, MOELoRA, MiLoRA, MoA, MoLoRA, MoV, sites
from moe_jax.peft.trainable import count, frozen_base_optimizer, is_adapter_path, trainable_mask
from tests.peft import common

METHODS = {
    "ia3": IA3(), "lora": LoRA(rank=2, targets=("q", "v", "wo", "down")),
    "mov": MoV(num_experts=3, load_balance_weight=0.01, z_loss_weight=0.001),
    "molora": MoLoRA(num_experts=2, rank=2),
    "moelora": MOELoRA(num_experts=2, rank=4, num_tasks=3, task_dim=4, top_k=None),
    # top_k = every module so that every expert receives a gradient in one step
    "milora": MiLoRA(rank=2, top_k=11),
    "moa": MoA(domains=("a", "b", "c"), rank=2, router_loss_weight=1.0),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_step_moves_adapters_and_freezes_the_backbone(method):
  family = "llama" if method == "milora" else "t5"
  model, params = common.make(family, METHODS[method])
  # Away from init: there LoRA's A and MoV's routers have exactly zero gradient.
  params = common.perturb_adapters(params, seed=7)
  mask = trainable_mask(params)
  # Adam's state is checked below; its step is sign-scaled so that a parameter
  # with any non-zero gradient visibly moves (some gradients here are ~1e-12).
  adam = optax.chain(optax.scale_by_adam(), optax.scale_by_sign(), optax.scale(-1e-2))
  tx = frozen_base_optimizer(adam, mask)
  state = tx.init(params)
  # Optimizer state exists only for trainable leaves (adam: mu and nu).
  n_state = sum(int(x.size) for x in jax.tree_util.tree_leaves(state) if jnp.issubdtype(x.dtype, jnp.floating))
  assert n_state == 2 * count(params, mask)

  batch = common.batch(family)
  grads, metrics = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, None), has_aux=True))(params)
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  for (k, before), after in zip(common.flat(params).items(), common.flat(new).values()):
    if is_adapter_path(k):
      assert not np.array_equal(before, after), f"adapter parameter {'/'.join(k)} did not move"
    else:
      np.testing.assert_array_equal(before, after, err_msg="/".join(k))
  if method in ("mov", "milora", "moa"):
    assert metrics["aux_loss"] > 0


def test_routers_stay_float32_under_bfloat16_activations():
  cfg = dataclasses.replace(common.T5_TINY, dtype="bfloat16")
  model = build_model(cfg, MoV(num_experts=3))
  batch = common.batch("t5")
  params = model.init(jax.random.key(0), batch)
  _, stats = model._apply(params, batch, mutable=(sites.ROUTER_STATS_COLLECTION,))
  probs = jax.tree_util.tree_leaves(stats)
  assert probs and all(p.dtype == jnp.float32 for p in probs)
  router_kernels = [v for k, v in common.flat(params).items() if "router" in k]
  assert router_kernels and all(v.dtype == jnp.float32 for v in router_kernels)
  assert model.compute_logits(params, batch).dtype == jnp.float32


def test_trainable_regex_in_the_released_gin_style():
  model, params = common.make("t5", MoA(domains=("a", "b"), rank=2))
  only_q = trainable_mask(params, r".*/q_adapter/.*")
  chosen = [k for k, m in zip(common.flat(params), jax.tree_util.tree_leaves(only_q)) if m]
  assert chosen and all("q_adapter" in k for k in chosen)
  assert len(chosen) < len([k for k in common.flat(params) if is_adapter_path(k)])
  with pytest.raises(ValueError, match="selects no parameter"):
    trainable_mask(params, r"nothing/matches")
