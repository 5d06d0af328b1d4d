"""Scanned layer stacks equal unrolled ones for every method; rematerialisation
changes memory, not numbers."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from moe_jax.models import build_model, layer_layout
from moe_jax.peft import IA3, MOELoRA, LoRA, MiLoRA, MoA, MoLoRA, MoV, sites
from tests.peft import common
from tests.peft.test_prompt_routing import _cached_vs_full

METHODS = {
    "none": sites.NO_ADAPTERS, "ia3": IA3(), "lora": LoRA(rank=2, targets=("q", "k", "v", "o", "wi_0", "wo")),
    "mov": MoV(num_experts=3), "mov_sentence": MoV(num_experts=3, routing="sentence"),
    "molora": MoLoRA(num_experts=3, rank=2), "moelora": MOELoRA(num_experts=2, rank=4, num_tasks=3),
    "milora": MiLoRA(rank=2, top_k=2, load_balance_weight=0.1),
    "moa": MoA(domains=("a", "b", "c"), rank=2),
}


def _pair(family, adapters, **config_changes):
  """(unrolled model, params, scanned model, the same params stacked)."""
  model, params = common.make(family, adapters)
  params = common.perturb_adapters(params, seed=7, scale=0.4)
  cfg = dataclasses.replace(common.CONFIGS[family], scan_layers=True, **config_changes)
  scanned = build_model(cfg, adapters)
  stacked = layer_layout.stack_layers(params)
  abstract = traverse_util.flatten_dict(jax.eval_shape(scanned.init, jax.random.key(0), common.batch(family)))
  flat = traverse_util.flatten_dict(stacked)
  assert set(flat) == set(abstract)  # the stacked tree is exactly the scanned model's
  for k, v in flat.items():
    assert v.shape == abstract[k].shape, k
  return model, params, scanned, stacked


@pytest.mark.parametrize("name", sorted(METHODS))
def test_scanned_t5_equals_unrolled_for_every_method(name):
  model, params, scanned, stacked = _pair("t5", METHODS[name])
  batch = common.batch("t5")
  np.testing.assert_allclose(scanned.compute_logits(stacked, batch), model.compute_logits(params, batch),
                             atol=1e-6, rtol=1e-6)
  lu, mu = model.loss_fn(params, batch, None)
  ls, ms = scanned.loss_fn(stacked, batch, None)
  np.testing.assert_allclose(ls, lu, rtol=1e-6)
  # summed over layers in another order: float32 rounding only
  np.testing.assert_allclose(ms["aux_loss"], mu["aux_loss"], rtol=1e-5, atol=1e-9)
  assert layer_layout.is_scanned(stacked)
  back = traverse_util.flatten_dict(layer_layout.unstack_layers(stacked))
  for k, v in traverse_util.flatten_dict(params).items():
    np.testing.assert_array_equal(back[k], v)  # per-layer parameters stay distinct


@pytest.mark.parametrize("name", ["mov_sentence", "milora", "moelora"])
def test_scanned_llama_equals_unrolled(name):
  model, params, scanned, stacked = _pair("llama", METHODS[name])
  batch = common.batch("llama")
  np.testing.assert_allclose(scanned.compute_logits(stacked, batch), model.compute_logits(params, batch),
                             atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_scanned_milora_decodes_from_its_prompt_decision(family):
  # The per-layer decisions live in the (scanned) decoding cache: batch first,
  # then layers; each router ran once per example at prefill.
  _, _, scanned, stacked = _pair(family, METHODS["milora"])
  cache = _cached_vs_full(scanned, stacked, family)
  runs = [v for k, v in common.flat(cache).items() if k[-1] == "router_runs"]
  assert len(runs) == 1 and runs[0].shape == (3, 2)  # [batch, decoder layers]
  np.testing.assert_array_equal(runs[0], 1)


def test_moelora_merge_and_router_statistics_work_on_scanned_params():
  adapters = METHODS["moelora"]
  model, params, scanned, stacked = _pair("t5", adapters)
  merged_u = adapters.merge_task(params, 1)
  merged_s = adapters.merge_task(stacked, 1)
  back = traverse_util.flatten_dict(layer_layout.unstack_layers(merged_s))
  for k, v in traverse_util.flatten_dict(merged_u).items():
    np.testing.assert_allclose(back[k], v, rtol=1e-6, atol=1e-7)
  from moe_jax.evaluation import plots
  mov_u, pu, mov_s, ps = _pair("t5", METHODS["mov"])
  probs_u, probs_s = (plots.router_probabilities(m, p, common.batch("t5")) for m, p in ((mov_u, pu), (mov_s, ps)))
  assert probs_u and set(probs_u) == set(probs_s)  # the same routers, named by layer
  for k, v in probs_u.items():
    np.testing.assert_allclose(probs_s[k], v, rtol=1e-5)


@pytest.mark.parametrize("policy", ["minimal", "full"])
def test_rematerialisation_keeps_loss_and_gradients(policy):
  adapters = METHODS["mov"]
  model, params, _, stacked = _pair("t5", adapters)
  remat = build_model(dataclasses.replace(common.CONFIGS["t5"], scan_layers=True, remat_policy=policy),
                      adapters)
  batch = common.batch("t5")
  grad = lambda m, p: jax.grad(lambda q: m.loss_fn(q, batch, None)[0])(p)
  g_plain = traverse_util.flatten_dict(layer_layout.stack_layers(grad(model, params)))
  g_remat = traverse_util.flatten_dict(grad(remat, stacked))
  for k, v in g_plain.items():  # recomputed in another fusion order: float32 rounding
    np.testing.assert_allclose(g_remat[k], v, rtol=0, atol=1e-5 * float(np.abs(v).max()) + 1e-12)
  with pytest.raises(ValueError, match="remat_policy"):
    build_model(dataclasses.replace(common.CONFIGS["t5"], remat_policy="some")).init(
        jax.random.key(0), common.batch("t5"))


def test_a_scanned_init_gives_every_layer_its_own_parameters():
  """nn.scan splits the params rng per layer: every randomly initialised
  tensor (backbone and adapters) differs between layers, as the unrolled
  stack's do; constant inits (norm scales, (IA)3 ones) are equal by design."""
  cfg = dataclasses.replace(common.CONFIGS["t5"], scan_layers=True)
  model = build_model(cfg, MoLoRA(num_experts=2, rank=2))
  params = jax.jit(model.init)(jax.random.key(0), common.batch("t5"))
  random_leaves = 0
  for k, v in traverse_util.flatten_dict(params).items():
    v = np.asarray(v)
    if "layers" not in k or np.all(v == v.reshape(-1)[0]):
      continue  # not stacked, or a constant init
    random_leaves += 1
    assert v.shape[0] >= 2 and not np.array_equal(v[0], v[1]), "/".join(k)
  assert random_leaves >= 10, random_leaves
