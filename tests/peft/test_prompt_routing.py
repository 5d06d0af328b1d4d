"""MiLoRA and MoA route once per prompt; decoding reuses the decision."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from moe_jax.models import build_model
from moe_jax.peft import LoRA, MiLoRA, MoA
from moe_jax.peft import moa as moa_lib
from moe_jax.peft.trainable import frozen_base_optimizer, is_adapter_path, trainable_mask
from tests.peft import common


def _cached_vs_full(model, params, family):
  """Teacher-forced cached decoding vs the full forward pass; returns the final cache."""
  if family == "t5":
    full_batch = dict(common.batch("t5"))
    full_batch.pop("decoder_target_tokens")  # no padding mask: decoding sees no padding either
    prompt = {"encoder_input_tokens": full_batch["encoder_input_tokens"]}
    fed = np.asarray(common.batch("t5")["decoder_target_tokens"])
    index = np.zeros(3, np.int32)
  else:
    seq = np.array([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18], [19, 20, 21, 22, 23, 24, 25]])
    lengths = np.array([3, 2, 4])
    prefix = (np.arange(7)[None] < lengths[:, None]).astype(np.int32)
    full_batch = {"decoder_input_tokens": jnp.asarray(seq), "decoder_causal_attention": jnp.asarray(prefix)}
    prompt = {"decoder_input_tokens": jnp.asarray(seq * prefix), "decoder_causal_attention": jnp.asarray(prefix)}
    fed = np.concatenate([seq[:, 1:], seq[:, :1]], 1)
    index = lengths - 1
  full = np.asarray(jax.nn.log_softmax(model.compute_logits(params, full_batch), -1))
  step_fn, cache, log_probs, start = model._start_decoding(params, prompt, 3)
  step_fn = jax.jit(step_fn)
  for i in range(3):
    np.testing.assert_allclose(np.asarray(log_probs), full[np.arange(3), index + i], atol=1e-4)
    log_probs, cache = step_fn(cache, jnp.asarray(fed[np.arange(3), index + i]), start + i)
  return cache


@functools.lru_cache(maxsize=None)
def _milora(family):
  """One MiLoRA model per family for the tests below (initialising one is slow)."""
  model, params = common.make(family, MiLoRA(rank=2, top_k=2))
  return model, common.perturb_adapters(params, seed=11)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_milora_cached_decoding_equals_uncached_and_routes_once(family):
  model, params = _milora(family)
  cache = _cached_vs_full(model, params, family)
  runs = [v for k, v in common.flat(cache).items() if k[-1] == "router_runs"]
  # One stored decision per decoder layer (T5 encoder layers run once, uncached).
  assert len(runs) == 2
  for r in runs:  # prefill ran each router once per example; three steps ran none
    np.testing.assert_array_equal(r, 1)
  decisions = [v for k, v in common.flat(cache).items() if k[-1] == "decision"]
  for d in decisions:  # exactly top_k modules active per example
    np.testing.assert_array_equal((np.asarray(d) > 0).sum(-1), 2)


def _primitives(jaxpr):
  """Names of all primitives in a jaxpr, nested jaxprs included."""
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _primitives(inner)


def test_milora_t5_decoding_steps_use_the_stored_decision():
  # T5 decoder layers route on the encoder output, which decoding never
  # changes: re-running the router at every step would give the same outputs,
  # so compare against a stored decision that the prompt would not produce.
  model, params = _milora("t5")
  prompt = {"encoder_input_tokens": common.batch("t5")["encoder_input_tokens"]}
  tokens, start = jnp.array([4, 7, 8]), jnp.ones(3, jnp.int32)
  cache = jax.jit(lambda p: model._start_decoding(p, prompt, 3)[1])(params)
  # One compiled step with the parameters as an argument (the prefill part is dead code).
  step = jax.jit(lambda p, c: model._start_decoding(p, prompt, 3)[0](c, tokens, start)[0])
  # A step routes nowhere: the prefill's program selects top-k once per layer,
  # and prefill + step has no further selection.
  prefill = jax.make_jaxpr(lambda p: model._start_decoding(p, prompt, 3)[2])(params).jaxpr
  assert list(_primitives(prefill)).count("top_k") == 4  # 2 encoder + 2 decoder layers
  with_step = jax.make_jaxpr(lambda p, c: model._start_decoding(p, prompt, 3)[0](c, tokens, start))(params, cache)
  assert list(_primitives(with_step.jaxpr)).count("top_k") == 4
  # Stored decisions set to "no module": the step must equal a step whose
  # decoder LoRAs are zero (same cache, so position 0 keeps its prefill keys).
  off = traverse_util.unflatten_dict({k: jnp.zeros_like(v) if k[-1] == "decision" else v
                                      for k, v in common.flat(cache).items()})
  no_decoder_lora = traverse_util.unflatten_dict({
      k: jnp.zeros_like(v) if k[0] == "decoder" and k[-1] == "lora_b" else v for k, v in common.flat(params).items()})
  expected = np.asarray(step(no_decoder_lora, cache))
  np.testing.assert_allclose(np.asarray(step(params, off)), expected, atol=1e-5)
  assert not np.allclose(np.asarray(step(params, cache)), expected, atol=1e-3)  # the LoRAs act


def test_moa_add_domain_changes_no_existing_parameter():
  old = MoA(domains=("a", "b"), rank=2, targets=("q", "v", "wo"))
  model, params = common.make("t5", old)
  params = common.perturb_adapters(params, seed=12)
  ext_model, fresh = common.make("t5", MoA(domains=("a", "b", "c"), rank=2, targets=("q", "v", "wo")), seed=5)
  fresh = common.perturb_adapters(fresh, seed=14)
  extended, new_params = old.add_domain(params, fresh, "c")
  assert extended.domains == ("a", "b", "c")
  new_flat, fresh_flat = common.flat(new_params), common.flat(fresh)
  assert set(new_flat) == set(common.flat(params))
  grown = 0
  for k, v in common.flat(params).items():
    if new_flat[k].shape == v.shape:  # backbone: unchanged
      np.testing.assert_array_equal(new_flat[k], v)
      continue
    # stacked along the domain axis: existing slices unchanged, then c's slice from `fresh`
    axis = -1 if k[-1] == "domain_kernel" else 0
    np.testing.assert_array_equal(np.take(new_flat[k], [0, 1], axis), v)
    np.testing.assert_array_equal(np.take(new_flat[k], [2], axis), np.take(fresh_flat[k], [2], axis))
    grown += 1
  cfg = common.T5_TINY  # per layer: lora a/b at q, v, wo (+ cross q, v), the classifier's kernel and bias
  assert grown == cfg.num_encoder_layers * (3 * 2 + 2) + cfg.num_decoder_layers * (5 * 2 + 2)
  b = dict(common.batch("t5"), domain_id=jnp.array([0, 1, 1]))
  np.testing.assert_array_equal(ext_model.compute_logits(new_params, b), model.compute_logits(params, b))
  c = dict(b, domain_id=jnp.array([2, 2, 2]))
  # domain c runs fresh's LoRAs over the old backbone
  mixed = {k: (fresh_flat[k] if is_adapter_path(k) else v) for k, v in common.flat(params).items()}
  np.testing.assert_allclose(ext_model.compute_logits(new_params, c),
                             ext_model.compute_logits(traverse_util.unflatten_dict(mixed), c), atol=1e-5)
  with pytest.raises(ValueError, match="already present"):
    extended.add_domain(new_params, fresh, "a")


@functools.lru_cache(maxsize=None)
def _moa_abc():
  """A three-domain MoA at q and v, shared by the tests below (initialising one is slow)."""
  return common.make("t5", MoA(domains=("a", "b", "c"), rank=2, targets=("q", "v")))


def test_moa_domain_optimizer_moves_only_that_domains_slice():
  model, params = _moa_abc()
  moa = model.adapters
  params = common.perturb_adapters(params, seed=15)
  tx = moa_lib.domain_optimizer(optax.sgd(0.1), params, "b", moa.domains)
  grads = jax.grad(lambda p: model.loss_fn(p, common.batch("t5"), None)[0])(params)  # every domain has data
  new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
  moved = 0
  for k, v in common.flat(params).items():
    after, v = np.asarray(common.flat(new)[k]), np.asarray(v)
    if k[-1] in ("lora_a", "lora_b"):
      np.testing.assert_array_equal(after[[0, 2]], v[[0, 2]])
      moved += not np.array_equal(after[1], v[1])
    else:
      np.testing.assert_array_equal(after, v)  # routers and backbone frozen
  assert moved == len([k for k in common.flat(params) if k[-1] in ("lora_a", "lora_b")])


@pytest.mark.parametrize("layer_choices, majority, last", [
    ((1, 2, 2, 0), 2, 0),  # majority c, last (decoder layer 1) a, first b
    ((1, 0, 0, 1), 0, 1),  # a 2-2 tie between a and b goes to the lower id
], ids=["disagree", "tie"])
def test_moa_vote_rules_on_layers_that_disagree(layer_choices, majority, last):
  # Each router's choice is fixed by its bias (kernel 0): encoder layers 0, 1,
  # then decoder layers 0, 1 choose `layer_choices`.
  model, params = _moa_abc()
  params = common.perturb_adapters(params, seed=16)  # B != 0: each domain's LoRA acts differently
  layer_of = {("encoder", "layers_0"): 0, ("encoder", "layers_1"): 1, ("decoder", "layers_0"): 2,
              ("decoder", "layers_1"): 3}
  set_ = {}
  for k, v in common.flat(params).items():
    if k[-1] == "domain_kernel":
      v = jnp.zeros_like(v)
    elif k[-1] == "domain_bias":
      v = jax.nn.one_hot(layer_choices[layer_of[k[:2]]], 3)
    set_[k] = v
  params = traverse_util.unflatten_dict(set_)
  batch = {k: v for k, v in common.batch("t5").items() if k != "domain_id"}
  np.testing.assert_array_equal(moa_lib.route_by_vote(model, params, batch, "majority")["domain_id"], [majority] * 3)
  np.testing.assert_array_equal(moa_lib.route_by_vote(model, params, batch, "last")["domain_id"], [last] * 3)
  # per_layer: every layer runs its own choice's LoRA, i.e. a plain LoRA model
  # whose layer l holds slice layer_choices[l] of the stacked pairs.
  per_layer = build_model(common.T5_TINY, MoA(domains=("a", "b", "c"), rank=2, targets=("q", "v"), mode="per_layer"))
  lora = build_model(common.T5_TINY, LoRA(rank=2, alpha=16.0, targets=("q", "v")))
  sliced = {tuple("pair" if p == "experts" else p for p in k):
            (v[layer_choices[layer_of[k[:2]]]][None] if "experts" in k else v)
            for k, v in common.flat(params).items() if "layer_hook" not in k}
  np.testing.assert_allclose(per_layer.compute_logits(params, batch),
                             lora.compute_logits(traverse_util.unflatten_dict(sliced), batch), atol=1e-5)


def test_moa_routers_learn_domains_with_frozen_loras_and_vote():
  moa = MoA(domains=("x", "y"), rank=2, targets=("q", "v"), router_loss_weight=1.0)
  model, params = common.make("t5", moa)
  params = common.perturb_adapters(params, seed=13)
  rng = np.random.RandomState(0)
  def make_batch(n):
    dom = rng.randint(0, 2, n)
    enc = np.where(dom[:, None] == 0, rng.randint(3, 12, (n, 6)), rng.randint(18, 30, (n, 6)))
    return {"encoder_input_tokens": jnp.asarray(np.concatenate([enc, np.ones((n, 1), int)], 1)),
            "decoder_input_tokens": jnp.asarray(np.tile([[0, 4, 5]], (n, 1))),
            "decoder_target_tokens": jnp.asarray(np.tile([[4, 5, 1]], (n, 1))),
            "domain_id": jnp.asarray(dom)}
  mask = trainable_mask(params, moa_lib.ROUTER_REGEX)
  tx = frozen_base_optimizer(optax.adam(0.05), mask)
  state = tx.init(params)

  @jax.jit
  def step(p, s, b):
    g = jax.grad(lambda q: model.loss_fn(q, b, None)[0])(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s
  trained = params
  for _ in range(40):
    trained, state = step(trained, state, make_batch(8))
  for k, v in common.flat(params).items():  # LoRAs (and the backbone) are untouched
    if "layer_hook" not in k:
      np.testing.assert_array_equal(common.flat(trained)[k], v)
  test = make_batch(6)
  given = np.asarray(model.compute_logits(trained, test))
  for rule in ("majority", "last"):
    routed = moa_lib.route_by_vote(model, trained, {k: v for k, v in test.items() if k != "domain_id"}, rule)
    np.testing.assert_array_equal(routed["domain_id"], test["domain_id"])
  per_layer = common.make("t5", MoA(domains=("x", "y"), rank=2, targets=("q", "v"), mode="per_layer"))[0]
  np.testing.assert_allclose(per_layer.compute_logits(trained, test), given, atol=1e-5)
