"""Closed-form identities that hold iff each method is implemented as its paper says."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
import pytest

from moe_jax.models import build_model
from moe_jax.peft import IA3, LoRA, MOELoRA, MiLoRA, MoA, MoLoRA, MoV, sites
from tests.peft import common

METHODS = {
    "ia3": IA3(), "lora": LoRA(rank=4), "mov": MoV(num_experts=3), "molora": MoLoRA(num_experts=3),
    "moelora": MOELoRA(num_experts=2, rank=4, num_tasks=3, task_dim=5),
    "milora": MiLoRA(rank=2, top_k=2), "moa": MoA(domains=("a", "b", "c"), rank=2),
}


@pytest.fixture(scope="module")
def base():
  out = {}
  for family in ("t5", "llama"):
    model, params = common.make(family, METHODS["ia3"])
    backbone = common.backbone_only(params)
    plain = build_model(common.CONFIGS[family])
    out[family] = (backbone, np.asarray(plain.compute_logits(backbone, common.batch(family))))
  return out


@pytest.mark.parametrize("family", ["t5", "llama"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_adapted_model_equals_backbone_at_init(base, family, method):
  model, params = common.make(family, METHODS[method])
  backbone, expected = base[family]
  # The adapter init does not disturb the backbone's own initialisation...
  jax.tree_util.tree_map(np.testing.assert_array_equal, common.backbone_only(params), backbone)
  # ...and leaves the function unchanged, bit for bit.
  np.testing.assert_array_equal(np.asarray(model.compute_logits(params, common.batch(family))), expected)
  # The adapters do exist (otherwise this test would be vacuous).
  assert any(common.flat(params).keys() - common.flat(backbone).keys())


def test_mov_with_one_expert_is_ia3():
  mov, mov_params = common.make("t5", MoV(num_experts=1))
  mov_params = common.perturb_adapters(mov_params, seed=1)
  ia3 = build_model(common.T5_TINY, IA3())
  flat = {}
  for k, v in common.flat(mov_params).items():
    if k[-1] == "experts":  # the single expert's vector becomes the (IA)3 vector
      flat[k[:-1] + ("scale",)] = v[0]
    elif "router" not in k:  # a softmax over one expert is 1 whatever the router
      flat[k] = v
  from flax import traverse_util
  ia3_params = traverse_util.unflatten_dict(flat)
  b = common.batch("t5")
  np.testing.assert_allclose(mov.compute_logits(mov_params, b), ia3.compute_logits(ia3_params, b), atol=1e-5)


def test_molora_with_one_expert_is_lora():
  targets = ("q", "k", "v", "o", "wi_0", "wo")
  mol, mol_params = common.make("llama", MoLoRA(num_experts=1, rank=3, alpha=6.0, targets=targets + ("gate", "down")))
  mol_params = common.perturb_adapters(mol_params, seed=2)
  lora = build_model(common.LLAMA_TINY, LoRA(rank=3, alpha=6.0, targets=targets + ("gate", "down")))
  lora_params = common.rename(mol_params, lambda k: None if "router" in k else
                              tuple("pair" if p == "experts" else p for p in k))
  b = common.batch("llama")
  np.testing.assert_allclose(mol.compute_logits(mol_params, b), lora.compute_logits(lora_params, b),
                             atol=1e-5)


def test_moelora_dense_equals_lora_with_diagonal_expert_weights():
  """sum_i w_i B_i A_i = B diag(w kron 1_{r/N}) A: one rank-r LoRA per task."""
  n, r = 4, 8
  method = MOELoRA(num_experts=n, rank=r, alpha=16.0, num_tasks=3, task_dim=5, targets=("q", "v", "wo"))
  model, params = common.make("t5", method)
  params = common.perturb_adapters(params, seed=3)
  b = common.batch("t5")
  w = method.gate().apply({"params": params["adapter_model_hook"]}, b["task_id"], method="weights")
  np.testing.assert_allclose(np.sum(w, -1), 1.0, rtol=1e-6)
  lora = build_model(common.T5_TINY, LoRA(rank=r, alpha=16.0, targets=("q", "v", "wo")))
  got = model.compute_logits(params, b)
  for row, task in enumerate(np.asarray(b["task_id"])):
    diag = jnp.repeat(w[row], r // n)  # w kron 1_{r/N}

    def to_lora(k):
      if k[0] == "adapter_model_hook":
        return None
      return tuple("pair" if p == "experts" else p for p in k)
    lp = common.flat(common.rename(params, to_lora))
    for k in list(lp):
      if k[-1] == "lora_a":  # [N, *in, r/N] -> [1, *in, r]: concatenate experts along rank
        a = lp[k]
        lp[k] = jnp.moveaxis(a, 0, -2).reshape(a.shape[1:-1] + (r,))[None]
      if k[-1] == "lora_b":  # [N, r/N, *out] -> [1, r, *out], scaled by diag
        bb = lp[k].reshape((r,) + lp[k].shape[2:])
        lp[k] = (bb * diag.reshape((r,) + (1,) * (bb.ndim - 1)))[None]
    from flax import traverse_util
    out = lora.compute_logits(traverse_util.unflatten_dict(lp), b)
    np.testing.assert_allclose(got[row], out[row], atol=1e-5)


def test_moelora_merge_task_matches_adapted_model_on_every_task():
  method = MOELoRA(num_experts=2, rank=4, num_tasks=3, task_dim=5)
  model, params = common.make("llama", method)
  params = common.perturb_adapters(params, seed=4)
  b = common.batch("llama")  # rows have tasks 0, 1, 2: one batch mixes tasks
  adapted = np.asarray(model.compute_logits(params, b))
  plain = build_model(common.LLAMA_TINY)
  gate = params["model_hook"]
  for task in range(3):
    merged = method.merge_task(params, task)
    assert set(common.flat(merged)) == set(common.flat(common.backbone_only(params)))
    # Every adapted kernel is W + (alpha / r) sum_e w_e A_e B_e (float64 here), w = softmax(E[task] W_g).
    logit = np.asarray(gate["task_embedding"], np.float64)[task] @ np.asarray(gate["gate"], np.float64)
    w = np.exp(logit - logit.max()) / np.exp(logit - logit.max()).sum()
    flat, folded = common.flat(params), 0
    kind_of = {kernel: kind for kind, kernel in sites.SITE_KERNEL.items()}
    for k, v in common.flat(merged).items():
      site = k[:-2] + (kind_of.get(k[-2], k[-2]) + "_adapter", "experts")  # the adapter beside the kernel
      if site + ("lora_a",) not in flat:
        np.testing.assert_array_equal(v, flat[k])
        continue
      lora_a = np.asarray(flat[site + ("lora_a",)], np.float64)  # [N, in, r/N]
      lora_b = np.asarray(flat[site + ("lora_b",)], np.float64)  # [N, r/N, *out]
      delta = sum(w[e] * lora_a[e].reshape(-1, lora_a.shape[-1]) @ lora_b[e].reshape(lora_b.shape[1], -1)
                  for e in range(2))
      np.testing.assert_allclose(v, np.asarray(flat[k]) + method.scale * delta.reshape(v.shape), atol=1e-6)
      folded += 1
    assert folded == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    rows = np.asarray(b["task_id"]) == task
    np.testing.assert_allclose(np.asarray(plain.compute_logits(merged, b))[rows], adapted[rows], atol=1e-5)
  sparse = dataclasses.replace(method, top_k=1)
  sp_model = build_model(common.LLAMA_TINY, sparse)
  merged = sparse.merge_task(params, 1)
  np.testing.assert_allclose(plain.compute_logits(merged, b)[1], sp_model.compute_logits(params, b)[1],
                             atol=1e-5)


def test_milora_with_all_modules_and_no_scaling_is_lora():
  targets = ("q", "k", "v", "o", "gate", "up", "down")
  mi, mi_params = common.make("llama", MiLoRA(rank=2, alpha=4.0, top_k=7, scale_by_prob=False, targets=targets))
  mi_params = common.perturb_adapters(mi_params, seed=5)
  lora = build_model(common.LLAMA_TINY, LoRA(rank=2, alpha=4.0, targets=targets))
  lora_params = common.rename(mi_params, lambda k: None if "layer_hook" in k else k)
  b = common.batch("llama")
  np.testing.assert_allclose(mi.compute_logits(mi_params, b), lora.compute_logits(lora_params, b), atol=1e-5)


def test_moa_given_domain_equals_that_domains_lora_alone():
  moa = MoA(domains=("a", "b", "c"), rank=2, targets=("q", "v", "wi_0", "wo"))
  model, params = common.make("t5", moa)
  params = common.perturb_adapters(params, seed=6)
  lora = build_model(common.T5_TINY, LoRA(rank=2, alpha=16.0, targets=("q", "v", "wi_0", "wo")))
  b = common.batch("t5")
  got = np.asarray(model.compute_logits(params, b))
  flat = common.flat(params)
  for d in range(len(moa.domains)):
    # Domain d's slice of every stacked tensor is a plain LoRA's pair.
    alone = {tuple("pair" if p == "experts" else p for p in k): (v[d:d + 1] if "experts" in k else v)
             for k, v in flat.items() if "layer_hook" not in k}
    out = np.asarray(lora.compute_logits(traverse_util.unflatten_dict(alone), b))
    np.testing.assert_allclose(got[d], out[d], atol=1e-5)
    other = (d + 1) % 3  # example `other` is routed to its own domain, not d
    assert not np.allclose(got[other], out[other], atol=1e-3)


