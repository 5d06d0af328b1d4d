"""Greedy and beam search over a KV cache, independent of the backbone.

A backbone supplies `step_fn(cache, tokens [N], positions [N]) -> (log_probs [N, V], cache)`
and the log-probabilities of the first generated token. Every leaf of `cache`
has the batch (N) as its leading axis, so beams are reordered by gathering it.
After EOS an example emits padding (0), like t5x and Hugging Face.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

StepFn = Callable[[dict, jax.Array, jax.Array], tuple[jax.Array, dict]]
NEG_INF = -1e30


def greedy_search(step_fn: StepFn, cache, first_log_probs, start_positions, *, max_decode_length: int,
                  eos_id: int, pad_id: int = 0):
  """Returns tokens [N, max_decode_length] and their summed log-probabilities [N].

  The model runs max_decode_length - 1 steps: the last token is chosen from
  the previous step's log-probabilities and never fed back."""
  n = first_log_probs.shape[0]

  def pick(i, log_probs, out, done, score):
    token = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    token_lp = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    score = score + jnp.where(done, 0.0, token_lp)
    token = jnp.where(done, pad_id, token)
    out = out.at[:, i].set(token)
    return token, out, done | (token == eos_id), score

  def cond(state):
    i, _, _, _, done, _ = state
    return (i < max_decode_length - 1) & ~jnp.all(done)

  def body(state):
    i, cache, log_probs, out, done, score = state
    token, out, done, score = pick(i, log_probs, out, done, score)
    log_probs, cache = step_fn(cache, token, start_positions + i)
    return i + 1, cache, log_probs, out, done, score

  out = jnp.full((n, max_decode_length), pad_id, jnp.int32)
  state = (0, cache, first_log_probs, out, jnp.zeros(n, bool), jnp.zeros(n, jnp.float32))
  i, _, log_probs, out, done, score = jax.lax.while_loop(cond, body, state)
  # Early exit (all done) leaves i < max_decode_length - 1: the pick writes padding there.
  _, out, _, score = pick(i, log_probs, out, done, score)
  return out, score


def brevity_penalty(length, alpha: float):
  """t5x / GNMT length normalisation ((5 + L) / 6) ** alpha."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def beam_search(step_fn: StepFn, cache, first_log_probs, start_positions, *, num_beams: int,
                max_decode_length: int, eos_id: int, pad_id: int = 0, alpha: float = 0.6):
  """Beam search; inputs are already repeated `num_beams` times per example.

  Finished beams stay in the beam with a frozen score and compete with live
  ones; the final choice divides each beam's summed log-probability by the
  brevity penalty. Returns (best tokens [B, L], all beams [B, K, L],
  normalised scores [B, K]) with beams sorted best first.
  """
  k = num_beams
  nk, vocab = first_log_probs.shape
  b = nk // k

  def gather_beams(x, beam_idx):  # x [B, K, ...]
    idx = beam_idx.reshape(beam_idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)

  def gather_flat(x, beam_idx):  # x [B*K, ...], e.g. a cache leaf
    return gather_beams(x.reshape((b, k) + x.shape[1:]), beam_idx).reshape(x.shape)

  def select(i, log_probs, seqs, done, lengths, scores):
    log_probs = log_probs.reshape(b, k, vocab)
    # A finished beam may only continue with padding, at no cost.
    pad_only = jnp.full((vocab,), NEG_INF).at[pad_id].set(0.0)
    log_probs = jnp.where(done[..., None], pad_only, log_probs)
    cand = (scores[..., None] + log_probs).reshape(b, k * vocab)
    new_scores, flat = jax.lax.top_k(cand, k)
    beam_idx, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    seqs, done, lengths = (gather_beams(x, beam_idx) for x in (seqs, done, lengths))
    token = jnp.where(done, pad_id, token)
    seqs = seqs.at[:, :, i].set(token)
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | (token == eos_id)
    return beam_idx, token, seqs, done, lengths, new_scores

  def body(i, state):
    cache, log_probs, seqs, done, lengths, scores = state
    beam_idx, token, seqs, done, lengths, scores = select(i, log_probs, seqs, done, lengths, scores)
    cache = jax.tree_util.tree_map(lambda x: gather_flat(x, beam_idx), cache)
    log_probs, cache = step_fn(cache, token.reshape(nk), start_positions + i)
    return cache, log_probs, seqs, done, lengths, scores

  # Only the first copy of each example is live at the start, so the first
  # step expands it into k distinct continuations.
  scores = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  seqs = jnp.full((b, k, max_decode_length), pad_id, jnp.int32)
  state = (cache, first_log_probs, seqs, jnp.zeros((b, k), bool), jnp.zeros((b, k), jnp.int32), scores)
  # max_decode_length - 1 model steps; the last token needs no step after it.
  _, log_probs, seqs, done, lengths, scores = jax.lax.fori_loop(0, max_decode_length - 1, body, state)
  _, _, seqs, _, lengths, scores = select(max_decode_length - 1, log_probs, seqs, done, lengths, scores)
  normalised = scores / brevity_penalty(jnp.maximum(lengths, 1), alpha)
  order = jnp.argsort(-normalised, axis=1)
  seqs = jnp.take_along_axis(seqs, order[..., None], axis=1)
  normalised = jnp.take_along_axis(normalised, order, axis=1)
  return seqs[:, 0], seqs, normalised
