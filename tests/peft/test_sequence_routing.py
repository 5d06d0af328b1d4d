"""Sentence-level routing and prompt pooling: no look-ahead, packing-aware, scale-robust."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moe_jax.peft import MiLoRA, MoV, pooling, sites
from moe_jax.peft.milora import PromptRouter
from tests.peft import common
from tests.peft.test_prompt_routing import _cached_vs_full

RNG = np.random.RandomState(0)
X = jnp.asarray(RNG.randn(2, 7, 3), jnp.float32)
MASK = jnp.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 1, 1, 1, 1]], bool)
SEG = jnp.array([[1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 2, 3, 3, 3]])


def _loop_means(causal):
  x, m, s = np.asarray(X), np.asarray(MASK), np.asarray(SEG)
  out = np.zeros_like(x)
  for b in range(2):
    for t in range(7):
      sel = [u for u in range(7) if s[b, u] == s[b, t] and m[b, u] and (u <= t or not causal)]
      out[b, t] = x[b, sel].mean(0) if sel else 0.0
  return out


def test_segment_and_prefix_means_equal_explicit_loops():
  real = np.asarray(MASK)[..., None]
  np.testing.assert_allclose(np.asarray(pooling.masked_mean(X, MASK, SEG)) * real, _loop_means(False) * real,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(pooling.prefix_mean(X, MASK, SEG)) * real, _loop_means(True) * real,
                             atol=1e-6)
  whole = np.asarray(pooling.masked_mean(X, MASK))  # unpacked: one mean per row
  np.testing.assert_allclose(whole[:, 0], [np.asarray(X)[b][np.asarray(MASK)[b]].mean(0) for b in range(2)],
                             atol=1e-6)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_sentence_routed_mov_cached_decoding_equals_the_full_pass(family):
  # In a decoder the sentence mean covers the tokens so far: training (full
  # pass) and cached decoding (running sums) compute the same mixture.
  model, params = common.make(family, MoV(num_experts=3, routing="sentence"))
  params = common.perturb_adapters(params, seed=3, scale=0.5)
  cache = _cached_vs_full(model, params, family)
  counts = [v for k, v in common.flat(cache).items() if k[-1] == "sentence_count"]
  assert counts, "no running sentence sums in the decoding cache"


def _packed_and_unpacked():
  """Three T5 examples unpacked (one per row) and packed (two rows)."""
  seqs = [([5, 6, 7, 1], [4, 5, 1]), ([8, 9, 1], [6, 1]), ([3, 10, 11, 12, 1], [7, 8, 9, 1])]
  def rows(groups, enc_len, dec_len, with_segments):
    r = {k: [] for k in ("encoder_input_tokens", "encoder_segment_ids", "decoder_input_tokens",
                         "decoder_target_tokens", "decoder_segment_ids")}
    for g in groups:
      e, es, di, dt, ds = [], [], [], [], []
      for i, (enc, tgt) in enumerate(g, start=1):
        e += enc; es += [i] * len(enc); dt += tgt; di += [0] + tgt[:-1]; ds += [i] * len(tgt)
      for k, v, n in (("encoder_input_tokens", e, enc_len), ("encoder_segment_ids", es, enc_len),
                      ("decoder_input_tokens", di, dec_len), ("decoder_target_tokens", dt, dec_len),
                      ("decoder_segment_ids", ds, dec_len)):
        r[k].append(v + [0] * (n - len(v)))
    out = {k: jnp.asarray(v) for k, v in r.items()}
    return out if with_segments else {k: v for k, v in out.items() if "segment" not in k}
  unpacked = rows([[s] for s in seqs], 5, 4, False)
  packed = rows([seqs[:2], seqs[2:]], 7, 5, True)
  return unpacked, packed


def _positions():
  """(unpacked row, position) -> (packed row, position) for the decoder targets."""
  return [((0, slice(0, 3)), (0, slice(0, 3))), ((1, slice(0, 2)), (0, slice(3, 5))),
          ((2, slice(0, 4)), (1, slice(0, 4)))]


@pytest.mark.parametrize("adapters", [MoV(num_experts=3, routing="sentence"), MiLoRA(rank=2, top_k=2)],
                         ids=["mov_sentence", "milora"])
def test_packed_rows_route_each_segment_as_its_own_example(adapters):
  model, params = common.make("t5", adapters)
  params = common.perturb_adapters(params, seed=5, scale=0.5)
  unpacked, packed = _packed_and_unpacked()
  lu = np.asarray(model.compute_logits(params, unpacked))
  lp = np.asarray(model.compute_logits(params, packed))
  base, _ = common.make("t5", sites.NO_ADAPTERS)
  lb = np.asarray(base.compute_logits(common.backbone_only(params), unpacked))
  for (ur, us), (pr, ps) in _positions():
    np.testing.assert_allclose(lp[pr, ps], lu[ur, us], atol=2e-5)
    assert not np.allclose(lu[ur, us], lb[ur, us], atol=1e-3)  # the adapters do act


def _prompt_router_probs(hidden, mask):
  experts = ("self_attention/q", "self_attention/v", "mlp/wo")
  info = sites.LayerInfo("encoder/layer_0", "encoder", 0, 1, hidden.shape[-1], experts)
  router = PromptRouter(info, experts, top_k=2, scale_by_prob=True, load_balance_weight=0.0)
  li = sites.LayerInput(hidden, mask)
  ctx = sites.AdapterContext(features={})
  variables = router.init(jax.random.key(0), li, ctx)
  _, stats = router.apply(variables, li, ctx, mutable=[sites.ROUTER_STATS_COLLECTION])
  probs = stats[sites.ROUTER_STATS_COLLECTION]["expert_probs"][0]
  return np.asarray(probs)


@pytest.mark.parametrize("std", [10.0, 100.0])
def test_milora_prompt_router_is_not_saturated_by_large_residuals(std):
  # Deep T5/Llama residual streams reach std 10-100. The pooled state is
  # RMS-normalised, so the router sees the same input at any scale and its
  # probabilities at init stay near uniform (N(0, 0.02) router weights).
  rng = np.random.RandomState(1)
  h = rng.randn(4, 9, 256).astype(np.float32)
  mask = jnp.asarray(np.arange(9)[None] < np.array([[9], [5], [7], [3]]))
  probs_1 = _prompt_router_probs(jnp.asarray(h), mask)
  probs_s = _prompt_router_probs(jnp.asarray(h * std), mask)
  np.testing.assert_allclose(probs_s, probs_1, rtol=1e-4)  # scale-free
  assert probs_s.max() < 0.6 and probs_s.min() > 0.1  # 3 experts, near 1/3 at init


def test_milora_prompt_router_follows_its_formulas():
  # float64 reference of the module docstring: RMS-normalised h', attention
  # pooling over real tokens, rational activation, softmax, top-k gates scaled
  # by their probability, load balance w * E * sum_i f_i P_i.
  experts = ("self_attention/q", "self_attention/k", "self_attention/v", "mlp/wi", "mlp/wo")
  rng = np.random.RandomState(4)
  h = rng.randn(4, 9, 16) * 3.0
  mask = np.arange(9)[None] < np.array([[9], [5], [7], [2]])
  info = sites.LayerInfo("encoder/layer_0", "encoder", 0, 1, 16, experts)
  router = PromptRouter(info, experts, top_k=2, scale_by_prob=True, load_balance_weight=0.01)
  li, ctx = sites.LayerInput(jnp.asarray(h, jnp.float32), jnp.asarray(mask)), sites.AdapterContext(features={})
  params = jax.tree_util.tree_map(lambda v: v + jnp.asarray(rng.randn(*v.shape) * 0.3, v.dtype),
                                  nn.unbox(router.init(jax.random.key(0), li, ctx)["params"]))
  gates, col = router.apply({"params": params}, li, ctx,
                            mutable=[sites.AUX_LOSS_COLLECTION, sites.ROUTER_STATS_COLLECTION])
  p64 = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), params)
  hn = h / np.sqrt(np.mean(h ** 2, -1, keepdims=True) + 1e-6)
  scores = np.where(mask, hn @ p64["pool_query"], -np.inf)
  att = np.exp(scores - scores.max(-1, keepdims=True))
  pooled = np.einsum("bt,btd->bd", att / att.sum(-1, keepdims=True), hn)
  num, den = p64["activation"]["numerator"], p64["activation"]["denominator"]
  act = (sum(a * pooled ** i for i, a in enumerate(num))
         / (1 + np.abs(sum(b * pooled ** (j + 1) for j, b in enumerate(den)))))
  logits = act @ p64["router"]["kernel"]
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  selected = (probs >= np.sort(probs, -1)[:, -2:-1]).astype(np.float64)  # top 2 (no ties here)
  for i, key in enumerate(experts):
    np.testing.assert_allclose(gates[key], selected[:, i] * probs[:, i], rtol=1e-4, atol=1e-7)
  f, share = selected.mean(0) / 2, probs.mean(0)
  np.testing.assert_allclose(col[sites.AUX_LOSS_COLLECTION]["load_balance"][0], 0.01 * 5 * np.sum(f * share),
                             rtol=1e-4)
  np.testing.assert_allclose(col[sites.ROUTER_STATS_COLLECTION]["expert_probs"][0], probs, rtol=1e-4)
  assert len(set(np.argmax(probs, -1))) > 1  # examples route differently
