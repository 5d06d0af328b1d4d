"""Greedy and beam search: exactness against brute-force enumeration and an
independent beam-search reference, with the t5x brevity penalty
((5 + length) / 6) ** alpha (GNMT's length penalty, Wu et al. 2016; t5x default alpha 0.6)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.models import build_model, get_preset

V, L = 6, 3  # tiny vocabulary and length, so every output sequence can be enumerated
ALPHA = 0.6


def _penalty(length, alpha=ALPHA):
  return ((5.0 + np.asarray(length, np.float64)) / 6.0) ** alpha


def _length(seq, eos):
  """Generated length: up to and including the first EOS."""
  seq = list(seq)
  return seq.index(eos) + 1 if eos in seq else len(seq)


def _reference_beam(next_log_probs, num_beams, length, eos, pad=0, alpha=ALPHA):
  """Beam search written independently of decoding.beam_search: hypotheses
  are Python tuples; a finished one (it emitted EOS) continues only with
  padding at no cost and competes with the live ones; after `length` tokens
  the beams are ranked by summed log-prob / ((5 + length) / 6) ** alpha.
  next_log_probs(prefix tuple) -> [V] log-probabilities of the next token.
  Returns [(tokens, normalised score)] best first."""
  beams = [((), 0.0)]
  for _ in range(length):
    cands = []
    for seq, score in beams:
      if eos in seq:
        cands.append((seq + (pad,), score))
      else:
        lp = next_log_probs(seq)
        cands += [(seq + (t,), score + float(lp[t])) for t in range(len(lp))]
    beams = sorted(cands, key=lambda c: -c[1])[:num_beams]
  ranked = [(seq, score / _penalty(_length(seq, eos), alpha)) for seq, score in beams]
  return sorted(ranked, key=lambda c: -c[1])


@pytest.fixture(scope="module", params=["t5", "llama"])
def setup(request):
  if request.param == "t5":
    cfg = get_preset("t5_1_1_tiny", vocab_size=V, eos_id=1)
    batch = {"encoder_input_tokens": jnp.array([[3, 4, 5, 1], [2, 5, 1, 0]], jnp.int32)}
  else:
    cfg = get_preset("llama_tiny", vocab_size=V, eos_id=2)
    batch = {"decoder_input_tokens": jnp.array([[3, 4, 5], [5, 1, 0]], jnp.int32)}
  model = build_model(cfg)  # the default length penalty, alpha 0.6
  assert model.length_penalty_alpha == ALPHA
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


def _brute_force(family, model, params, batch, row, eos):
  """Every output of example `row`, its summed log-probability from the
  uncached full forward pass, and its generated length."""
  outs = np.array(_all_outputs(eos), np.int32)
  n = len(outs)
  lengths = np.array([_length(o, eos) for o in outs])
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
  lp = np.asarray(lp, np.float64)
  token_lp = np.take_along_axis(lp, outs[..., None], -1)[..., 0]
  return outs, (token_lp * weights).sum(-1), lengths


def test_greedy_and_exhaustive_beam_agree_with_enumeration(setup):
  family, model, params, batch = setup
  eos = model.config.eos_id
  greedy, greedy_scores = model.predict_batch(params, batch, max_decode_length=L, return_scores=True)
  # V**(L-1) beams keep every prefix; the normalised optimum is then among the
  # final top V**(L-1) raw scores: at most V of those are finished early, and
  # every complete one ranked above it would also beat it after normalising.
  beam, beam_scores = model.predict_batch(params, batch, max_decode_length=L, num_beams=V ** (L - 1),
                                          return_scores=True)
  for row in range(2):
    outs, scores, lengths = _brute_force(family, model, params, batch, row, eos)
    normalised = scores / _penalty(lengths)
    best = outs[np.argmax(normalised)]
    np.testing.assert_array_equal(np.asarray(beam)[row], best)
    np.testing.assert_allclose(beam_scores[row], normalised.max(), rtol=1e-4)
    g = tuple(int(t) for t in np.asarray(greedy)[row])
    np.testing.assert_allclose(greedy_scores[row], scores[[tuple(o) for o in outs].index(g)], rtol=1e-4)
    # Greedy is a member of the search space and can be no better than the optimum.
    assert greedy_scores[row] <= scores.max() + 1e-5


def _table_model(table, vocab, size):
  """A step function whose next-token log-probs depend on the whole prefix,
  carried in the cache as a base-(V + 1) code: beams reordered without their
  cache would read another prefix's row of `table` (example r's rows start at r * size)."""
  def step_fn(cache, tokens, positions):
    del positions
    code = cache["code"] * (vocab + 1) + tokens + 1
    return table[cache["example"] * size + code], dict(cache, code=code)
  return step_fn


def test_beam_search_prunes_and_normalises_like_the_reference():
  from moe_jax.models import decoding
  vocab, length, k, rows, eos = 4, 4, 2, 6, 1
  rng = np.random.RandomState(3)
  # One table per row: row r's prefixes index rows r * size + code.
  size = (vocab + 1) ** length
  logits = rng.randn(rows * size, vocab) * 1.5
  table = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), -1), np.float64)
  example = np.repeat(np.arange(rows), k)
  first = jnp.asarray(table[example * size], jnp.float32)
  step_fn = _table_model(jnp.asarray(table, jnp.float32), vocab, size)

  def lookup(r):
    def next_log_probs(prefix):
      code = 0
      for t in prefix:
        code = code * (vocab + 1) + t + 1
      return table[r * size + code]
    return next_log_probs

  _, beams, scores = decoding.beam_search(step_fn, {"example": jnp.asarray(example, jnp.int32),
                                                    "code": jnp.zeros(rows * k, jnp.int32)}, first,
                                          jnp.zeros(rows * k, jnp.int32), num_beams=k,
                                          max_decode_length=length, eos_id=eos, alpha=ALPHA)
  pruned = 0
  for r in range(rows):
    ref = _reference_beam(lookup(r), k, length, eos)
    np.testing.assert_array_equal(np.asarray(beams)[r], [s for s, _ in ref])
    np.testing.assert_allclose(np.asarray(scores)[r], [c for _, c in ref], rtol=1e-5)
    exhaustive = _reference_beam(lookup(r), vocab ** length, length, eos)
    pruned += ref[0][0] != exhaustive[0][0]
  assert pruned, "two beams find the optimum on every row: pruning is not exercised"


def test_length_penalty_changes_the_winner():
  # [EOS] has log-prob log 0.5 = -0.693; [2, 3, EOS] has log 0.48 + 2 log 0.98
  # = -0.774, normalised by ((5 + 3) / 6) ** 0.6 = 1.188 to -0.651: alpha 0.6
  # prefers the longer output, alpha 0 the shorter.
  from moe_jax.models import decoding
  vocab = 5
  def row(probs):
    p = np.full(vocab, 1e-3)
    for t, q in probs.items():
      p[t] = q
    return np.log(p / p.sum())
  lp = np.stack([row({1: 0.5, 2: 0.48}), row({3: 0.98}), row({1: 0.98})])

  def step_fn(cache, tokens, positions):  # next-token log-probs by position only
    return jnp.asarray(lp, jnp.float32)[jnp.minimum(positions, 2)], cache

  k = 3
  first = jnp.asarray(np.repeat(lp[:1], k, 0), jnp.float32)
  results = {}
  for alpha in (0.0, ALPHA):
    best, beams, scores = decoding.beam_search(step_fn, {}, first, jnp.ones(k, jnp.int32), num_beams=k,
                                               max_decode_length=3, eos_id=1, alpha=alpha)
    results[alpha] = np.asarray(best)[0].tolist()
    seq = np.asarray(beams)[0, 0]
    raw = sum(lp[i, t] for i, t in enumerate(seq[:_length(seq, 1)]))
    np.testing.assert_allclose(np.asarray(scores)[0, 0], raw / _penalty(_length(seq, 1), alpha), rtol=1e-5)
  assert results[0.0] == [1, 0, 0]
  assert results[ALPHA] == [2, 3, 1]


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
