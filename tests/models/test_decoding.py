"""Greedy and beam search: exactness against brute-force enumeration."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.models import build_model, get_preset

V, L = 6, 3  # tiny vocabulary and length, so every output sequence can be enumerated


@pytest.fixture(scope="module", params=["t5", "llama"])
def setup(request):
  if request.param == "t5":
    cfg = get_preset("t5_1_1_tiny", vocab_size=V, eos_id=1)
    batch = {"encoder_input_tokens": jnp.array([[3, 4, 5, 1], [2, 5, 1, 0]], jnp.int32)}
  else:
    cfg = get_preset("llama_tiny", vocab_size=V, eos_id=2)
    batch = {"decoder_input_tokens": jnp.array([[3, 4, 5], [5, 1, 0]], jnp.int32)}
  model = build_model(cfg, length_penalty_alpha=0.0)
  params = model.init(jax.random.key(7))
  # Sharper distributions make ties impossible and EOS reachable.
  params = jax.tree_util.tree_map(lambda x: x * 3.0, params)
  return request.param, model, params, batch


def _all_outputs(eos):
  """Every distinct output: L tokens, padding (0) after the first EOS."""
  seen = set()
  for seq in itertools.product(range(V), repeat=L):
    seq = list(seq)
    if eos in seq:
      i = seq.index(eos)
      seq = seq[:i + 1] + [0] * (L - i - 1)
    seen.add(tuple(seq))
  return sorted(seen)


def _brute_force_scores(family, model, params, batch, row, eos):
  outs = np.array(_all_outputs(eos), np.int32)
  n = len(outs)
  # Generated length: up to and including EOS.
  lengths = np.array([list(o).index(eos) + 1 if eos in o else L for o in outs])
  weights = (np.arange(L)[None] < lengths[:, None]).astype(np.float32)
  if family == "t5":
    enc = np.repeat(np.asarray(batch["encoder_input_tokens"])[row:row + 1], n, 0)
    dec_in = np.concatenate([np.zeros((n, 1), np.int32), outs[:, :-1]], 1)
    # No decoder_target_tokens: a generated 0 is a real token here, as in decoding.
    logits = model.compute_logits(params, {"encoder_input_tokens": jnp.asarray(enc),
                                           "decoder_input_tokens": jnp.asarray(dec_in)})
    lp = jax.nn.log_softmax(logits, -1)
  else:
    prompt = np.asarray(batch["decoder_input_tokens"])[row]
    prompt = prompt[prompt > 0]
    seq = np.concatenate([np.repeat(prompt[None], n, 0), outs], 1)
    logits = model.compute_logits(params, {"decoder_input_tokens": jnp.asarray(seq)})
    lp = jax.nn.log_softmax(logits, -1)[:, len(prompt) - 1:-1]
  token_lp = np.take_along_axis(np.asarray(lp), outs[..., None], -1)[..., 0]
  return outs, (token_lp * weights).sum(-1)


def test_greedy_and_exhaustive_beam_agree_with_enumeration(setup):
  family, model, params, batch = setup
  eos = model.config.eos_id
  greedy, greedy_scores = model.predict_batch(params, batch, max_decode_length=L, return_scores=True)
  beam, beam_scores = model.predict_batch(params, batch, max_decode_length=L, num_beams=V * V,
                                          return_scores=True)
  for row in range(2):
    outs, scores = _brute_force_scores(family, model, params, batch, row, eos)
    best = outs[np.argmax(scores)]
    np.testing.assert_array_equal(np.asarray(beam)[row], best)
    np.testing.assert_allclose(beam_scores[row], scores.max(), rtol=1e-4)
    g = tuple(int(t) for t in np.asarray(greedy)[row])
    np.testing.assert_allclose(greedy_scores[row], scores[[tuple(o) for o in outs].index(g)], rtol=1e-4)
    # Greedy is a member of the search space and can be no better than the optimum.
    assert greedy_scores[row] <= scores.max() + 1e-5


def test_single_beam_is_greedy(setup):
  _, model, params, batch = setup
  greedy = model.predict_batch(params, batch, max_decode_length=5)
  from moe_jax.models import decoding
  step_fn, cache, lp, start = model._start_decoding(params, batch, 5)
  best, beams, _ = decoding.beam_search(step_fn, cache, lp, start, num_beams=1, max_decode_length=5,
                                        eos_id=model.config.eos_id)
  np.testing.assert_array_equal(best, greedy)
  assert beams.shape == (2, 1, 5)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_search_runs_one_model_step_per_fed_back_token(num_beams):
  # The last output token is chosen from the previous step's log-probabilities
  # and never fed back: L outputs take L - 1 model steps, at positions 1..L-1.
  from moe_jax.models import decoding
  fed = []
  lp = jnp.log(jnp.array([0.05, 0.05, 0.6, 0.2, 0.1]))  # token 2 best, EOS (1) never chosen

  def step_fn(cache, tokens, positions):
    jax.debug.callback(lambda p: fed.append(np.asarray(p).copy()), positions, ordered=True)
    return jnp.broadcast_to(lp, (tokens.shape[0], 5)), cache

  n = 2 * num_beams
  first = jnp.broadcast_to(lp, (n, 5))
  start = jnp.ones((n,), jnp.int32)
  if num_beams == 1:
    out, _ = decoding.greedy_search(step_fn, {}, first, start, max_decode_length=4, eos_id=1)
  else:
    out, _, _ = decoding.beam_search(step_fn, {}, first, start, num_beams=num_beams, max_decode_length=4,
                                     eos_id=1)
  jax.effects_barrier()
  assert [int(p[0]) for p in fed] == [1, 2, 3]
  np.testing.assert_array_equal(np.asarray(out), 2)


def _dots(jaxpr, inside_loop=False):
  """(inside a while loop?, dot_general equation) for every dot in a jaxpr, nested ones included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield inside_loop, eqn
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _dots(inner, inside_loop or eqn.primitive.name == "while")


def test_decode_loop_has_no_encoder_length_projection():
  # Cross-attention keys/values (after their adapter sites) are projected once at
  # prefill; the loop body only reads them from the cache.
  from functools import partial
  from moe_jax.peft import MoV
  cfg = get_preset("t5_1_1_tiny", vocab_size=V, eos_id=1)  # d_model 64, d_kv 16
  model = build_model(cfg, MoV(num_experts=2))
  enc_len = 13
  batch = {"encoder_input_tokens": jnp.ones((2, enc_len), jnp.int32)}
  params = model.init(jax.random.key(0))
  jaxpr = jax.make_jaxpr(partial(model._predict, max_decode_length=4, num_beams=1))(params, batch).jaxpr

  def projects_encoder(eqn):  # an operand over the encoder positions, contracted over d_model
    (lhs_c, rhs_c), _ = eqn.params["dimension_numbers"]
    shapes = [eqn.invars[0].aval.shape, eqn.invars[1].aval.shape]
    return any(enc_len in s and any(s[c] == cfg.d_model for c in cs) for s, cs in zip(shapes, (lhs_c, rhs_c)))

  found = [(loop, projects_encoder(e)) for loop, e in _dots(jaxpr)]
  assert any(loop for loop, _ in found), "no decode loop found"
  assert any(p and not loop for loop, p in found)  # the encoder and prefill do project
  assert not any(p and loop for loop, p in found)
