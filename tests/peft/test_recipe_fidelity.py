"""The released recipes' choices (see README "Fidelity to the released recipes"):
the MoV FFN router input, top-k without renormalisation, LoRA/MoLoRA scale and
inits, the MOELoRA gate and task table."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from moe_jax.layers.mlp import MLP
from moe_jax.peft import PRESETS, MoLoRA, MoV, sites
from moe_jax.peft.mov import MoVSite
from moe_jax.peft.routers import RouterConfig
from tests.peft import common

CTX = sites.AdapterContext(features={})


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_mov_ffn_router_reads_the_activated_first_branch():
  # flaxformer fork: `intermediate_conv` sees act(wi_0 x), before the product
  # with wi_1 x; the merged vector scales that branch (the same as scaling the product).
  rng = np.random.RandomState(0)
  x = rng.randn(2, 5, 16).astype(np.float32)
  mlp = MLP(d_ff=24, variant="gated-gelu", adapters=MoV(num_experts=3), site_path="encoder/layer_0/mlp",
            stack="encoder")
  variables = nn.unbox(mlp.init(jax.random.key(0), jnp.asarray(x), CTX))
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  flat = {k: v + rng.randn(*v.shape).astype(np.float32) * 0.3 if "adapter" in k else v for k, v in flat.items()}
  out = np.asarray(mlp.apply({"params": traverse_util.unflatten_dict(flat, sep="/")}, jnp.asarray(x), CTX))
  p = {k: np.asarray(v, np.float64) for k, v in flat.items()}
  a = _gelu_tanh(x @ p["wi_0/kernel"])
  b = x @ p["wi_1/kernel"]
  experts, router = p["ffn_hidden_adapter/experts"], p["ffn_hidden_adapter/router/kernel"]
  expected = (a * b * (_softmax(a @ router) @ experts)) @ p["wo/kernel"]
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  on_product = (a * b * (_softmax((a * b) @ router) @ experts)) @ p["wo/kernel"]
  assert not np.allclose(out, on_product, rtol=1e-3)  # the other reading is distinguishable


def test_top_k_keeps_probabilities_unrenormalised_by_default():
  # The released router multiplies the softmax by the top-k mask and keeps the
  # kept probabilities as they are (they sum to less than one).
  info = sites.SiteInfo("e/l/self_attention/k", "encoder", 0, "self_attention", "k", (16,), (2, 8),
                        ("embed",), ("heads", "kv"))
  rng = np.random.RandomState(1)
  x, y = jnp.asarray(rng.randn(2, 3, 16), jnp.float32), jnp.asarray(rng.randn(2, 3, 2, 8), jnp.float32)
  cfg = MoV(num_experts=4, top_k=2).router_config()
  assert cfg.renormalize is False
  site = MoVSite(info, cfg)
  variables = nn.unbox(site.init(jax.random.key(0), x, y, CTX))
  variables = jax.tree_util.tree_map(lambda v: v + jnp.asarray(rng.randn(*v.shape) * 0.5, v.dtype), variables)
  out = np.asarray(site.apply(variables, x, y, CTX), np.float64)
  pr = variables["params"]
  probs = _softmax(np.asarray(y, np.float64) @ np.asarray(pr["router"]["kernel"], np.float64))  # [B,T,H,E]
  kth = np.sort(probs, -1)[..., -2:-1]
  kept = np.where(probs >= kth, probs, 0.0)
  merged = np.einsum("bthe,ehd->bthd", kept, np.asarray(pr["experts"], np.float64))
  np.testing.assert_allclose(out, np.asarray(y) * merged, rtol=1e-4, atol=1e-6)
  renorm = MoVSite(info, RouterConfig(4, top_k=2, renormalize=True)).apply(variables, x, y, CTX)
  assert not np.allclose(renorm, out, rtol=1e-3)


def _std(x):
  return float(np.std(np.asarray(x)))


def test_lora_and_molora_presets_use_the_released_scale_and_inits():
  # src/lora.py, src/molora.py: alpha fixed at 16 (scale 4 at rank 4), A ~ N(0, 0.02), B = 0.
  for preset in (PRESETS["lora_r4"], PRESETS["molora_10"], MoLoRA()):
    assert preset.alpha / preset.rank == 4.0
  model, params = common.make("t5", MoLoRA(num_experts=10, rank=4, targets=("wi_0",)), seed=1)
  flat = common.flat(params)
  a = np.concatenate([np.ravel(v) for k, v in flat.items() if k[-1] == "lora_a"])
  b = [v for k, v in flat.items() if k[-1] == "lora_b"]
  assert a.size >= 1000
  assert abs(_std(a) - 0.02) < 0.02 * 0.1 and abs(float(np.mean(a))) < 0.002
  assert all(not np.any(np.asarray(v)) for v in b)


def test_moelora_preset_gate_table_inits_and_dropout_follow_the_release():
  # MOELoRA-peft: A ~ N(0, 0.01) per expert, LoRA dropout 0.1, gate = default
  # torch nn.Linear(task_dim, N, bias=False) = U(+-1/sqrt(task_dim)), task table
  # nn.Embedding(num_tasks + 1, task_dim) with row 0 unused.
  preset = PRESETS["moelora"]
  assert preset.dropout_rate == 0.1 and preset.a_init == "normal:0.01"
  model, params = common.make("t5", preset, seed=2)
  gate = params["adapter_model_hook"]
  table, kernel = np.asarray(gate["task_embedding"]), np.asarray(gate["gate"])
  assert table.shape == (preset.num_tasks + 1, preset.task_dim)
  bound = 1 / math.sqrt(preset.task_dim)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
  # U(-b, b) has std b/sqrt(3); the sample std of n draws has a relative standard
  # error of about sqrt(0.8 / (4 n)) (uniform kurtosis 1.8): 4 standard errors.
  rel = 4 * math.sqrt(0.8 / (4 * kernel.size))
  assert kernel.size >= 256 and abs(_std(kernel) - bound / math.sqrt(3)) < rel * bound / math.sqrt(3)
  a = np.concatenate([np.ravel(v) for k, v in common.flat(params).items() if k[-1] == "lora_a"])
  assert abs(_std(a) - 0.01) < 0.001
  # task t reads row t + 1: row 0 never influences any task's weights
  w = preset.gate().apply({"params": gate}, jnp.arange(3), method="weights")
  probs = jax.nn.softmax(jnp.asarray(table[1:4]) @ kernel, -1)
  np.testing.assert_allclose(w, probs, rtol=1e-6)
