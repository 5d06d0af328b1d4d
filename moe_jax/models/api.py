"""t5x-like model API: compute_logits / score_batch / loss_fn / predict_batch.

Batches use t5x feature names. Encoder-decoder: `encoder_input_tokens`,
`decoder_input_tokens` (targets shifted right, starting with 0),
`decoder_target_tokens`, optional `decoder_loss_weights` and packing features
`{encoder,decoder}_segment_ids`. Decoder-only: `decoder_input_tokens`,
`decoder_target_tokens`, optional `decoder_loss_weights`,
`decoder_causal_attention` (1 on the prompt/inputs part), segment ids and
`decoder_positions`. Token id 0 is padding. Per-example features the adapters
read (`task_id`, `domain_id`, `routing_embedding`) are passed through.
"""
from __future__ import annotations

import abc
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax.models import decoding
from moe_jax.models.configs import DecoderConfig, ModelConfig, T5Config
from moe_jax.models.decoder import DecoderOnlyTransformer
from moe_jax.models.t5 import T5Transformer
from moe_jax import adapters as sites

CONTEXT_FEATURES = ("task_id", "domain_id", "routing_embedding")
LOSS_NORMALIZERS = ("num_real_target_tokens", "average_per_sequence", "sum")


def context_features(batch) -> dict:
  return {k: batch[k] for k in CONTEXT_FEATURES if k in batch}


def cross_entropy(logits, targets, weights, z_loss: float):
  """Per-token cross entropy plus t5x's z-loss term z * log(Z)^2."""
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  xent = (log_z - target_logit) * weights
  return xent, z_loss * jnp.square(log_z) * weights


def token_correct(logits, targets):
  """[..., V], [...] -> bool [...]: the target's logit is the largest. The same
  as argmax == target except that a target tied for the largest counts (argmax
  keeps the first index). XLA:CPU ran argmax's (value, index) reduction over
  the vocabulary at ~4 ns per logit, 70 ms of a 3.5 s bench step; the max
  alone is the one logsumexp takes anyway."""
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return target_logit >= jnp.max(logits, axis=-1)


def per_sequence_totals(weights, segment_ids=None):
  """[B, T]: each token's sequence total of `weights`; a sequence is a packed
  segment when `segment_ids` [B, T] is given (t5x: _sum_weights_per_segment),
  else the whole row."""
  if segment_ids is None:
    return jnp.broadcast_to(jnp.sum(weights, axis=-1, keepdims=True), weights.shape)
  b, t = weights.shape
  # one bucket per (row, segment id); ids are < T + 1
  ids = segment_ids.astype(jnp.int32) + (t + 1) * jnp.arange(b, dtype=jnp.int32)[:, None]
  sums = jax.ops.segment_sum(weights.reshape(-1), ids.reshape(-1), num_segments=b * (t + 1))
  return sums[ids]


def _dummy_context(batch_size, d_model):
  """Features that task/domain/instruction-conditioned adapters need to initialise
  (routing embeddings have the backbone's width, see routing_embeddings.py)."""
  z = jnp.zeros((batch_size,), jnp.int32)
  return {"task_id": z, "domain_id": z, "routing_embedding": jnp.zeros((batch_size, d_model), jnp.float32)}


def sum_collection(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return sum((jnp.sum(x) for x in leaves), jnp.zeros((), jnp.float32))


class BaseModel(abc.ABC):
  """Shared pieces; subclasses define the module and how a batch is applied."""
  module: nn.Module
  config: ModelConfig

  def __init__(self, config: ModelConfig, adapters: sites.Adapters = sites.NO_ADAPTERS, *,
               z_loss: float = 1e-4, loss_normalizing_factor: str = "num_real_target_tokens",
               length_penalty_alpha: float = 0.6):
    if loss_normalizing_factor not in LOSS_NORMALIZERS:
      raise ValueError(f"loss_normalizing_factor={loss_normalizing_factor!r}; "
                       f"expected one of {LOSS_NORMALIZERS}")
    self.config = config
    self.adapters = adapters
    self.z_loss = z_loss
    self.loss_normalizing_factor = loss_normalizing_factor
    self.length_penalty_alpha = length_penalty_alpha
    self._logits_jit = jax.jit(self._logits)
    self._score_jit = jax.jit(self._score)
    self._predict_jit = jax.jit(self._predict, static_argnames=("max_decode_length", "num_beams"))

  # ---- parameters --------------------------------------------------------
  def dummy_batch(self, batch_size=1, length=4) -> dict:
    """A minimal batch of the model's features (init, shape tracing)."""
    return self._dummy_batch(batch_size, length)

  def apply_with_state(self, params, batch, dropout_rng=None, mutable=()):
    """(outputs, mutated collections) of one forward pass, e.g. to read the
    router statistics methods sow."""
    return self._apply(params, batch, dropout_rng, mutable)

  @abc.abstractmethod
  def _dummy_batch(self, batch_size=1, length=4) -> dict:
    """A small batch with every feature the module needs (for init)."""

  @abc.abstractmethod
  def _module_kwargs(self, batch) -> dict:
    """Keyword arguments of the Flax module's __call__ for a batch."""

  @abc.abstractmethod
  def _start_decoding(self, params, batch, max_decode_length):
    """(step_fn, cache, first log-probs [N, V], start positions [N])."""

  def init_variables(self, rng, batch: Optional[dict] = None) -> dict:
    """Boxed variables (params carry logical axis names)."""
    batch = batch or self._dummy_batch()
    return self.module.init({"params": rng, "dropout": rng}, **self._module_kwargs(batch))

  def init(self, rng, batch: Optional[dict] = None):
    """Plain float params (no boxes), computed eagerly (op by op). Jitted, the
    same initialisers round differently in the last bit (XLA folds a
    sample's constant scalings, e.g. normal's sqrt(2) and the stddev, into one
    multiply), so the trainer, the entry points and anything comparing with a
    run's backbone use one jitted program: `frozen_source.init_params`."""
    return nn.unbox(self.init_variables(rng, batch)["params"])

  def abstract_variables(self, batch: Optional[dict] = None):
    """Shapes and logical axes without allocating memory."""
    return jax.eval_shape(lambda r: self.init_variables(r, batch), jax.random.key(0))

  def param_logical_axes(self, batch: Optional[dict] = None):
    """PartitionSpec of logical axis names for every parameter."""
    return nn.get_partition_spec(self.abstract_variables(batch))["params"]

  # ---- forward -----------------------------------------------------------
  def _apply(self, params, batch, dropout_rng=None, mutable=()):
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    kwargs = self._module_kwargs(batch)
    kwargs["deterministic"] = dropout_rng is None
    return self.module.apply({"params": params}, rngs=rngs, mutable=list(mutable) or False, **kwargs)

  def _logits(self, params, batch, dropout_rng=None):
    return self._apply(params, batch, dropout_rng)

  def compute_logits(self, params, batch, dropout_rng=None) -> jax.Array:
    """[B, T, V] float32 logits for the decoder positions."""
    return self._logits_jit(params, batch, dropout_rng)

  def _loss_weights(self, batch):
    if "decoder_loss_weights" in batch:
      return batch["decoder_loss_weights"].astype(jnp.float32)
    return (batch["decoder_target_tokens"] > 0).astype(jnp.float32)

  def _score(self, params, batch):
    logits = self._logits(params, batch)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token = jnp.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
    return jnp.sum(token * self._loss_weights(batch), axis=-1)

  def score_batch(self, params, batch) -> jax.Array:
    """[B] summed log-likelihood of the weighted (non-pad) target tokens."""
    return self._score_jit(params, batch)

  def loss_weights_and_normalizer(self, batch) -> tuple[jax.Array, jax.Array]:
    """Per-token loss weights [B, T] and the divisor of their weighted sum.

    As t5x/losses.py: `num_real_target_tokens` divides by the number of
    weighted tokens; `average_per_sequence` first divides each token's weight by
    its sequence's total, where a sequence is a packed *segment*
    (`decoder_segment_ids`) or else a row, then divides by the number of
    sequences; `sum` divides by 1. The same examples packed or not, whole or
    split into micro-batches (with the whole batch's divisor), give one loss.
    """
    weights = self._loss_weights(batch)
    if self.loss_normalizing_factor == "average_per_sequence":
      totals = per_sequence_totals(weights, batch.get("decoder_segment_ids"))
      weights = jnp.where(totals > 0, weights / jnp.where(totals > 0, totals, 1.0), 0.0)
      return weights, jnp.sum(weights)
    if self.loss_normalizing_factor == "num_real_target_tokens":
      return weights, jnp.sum(weights)
    return weights, jnp.ones((), jnp.float32)

  def loss_fn(self, params, batch, dropout_rng, *, normalizer: Optional[jax.Array] = None,
              aux_loss_scale: float = 1.0) -> tuple[jax.Array, dict[str, Any]]:
    """Training loss (cross entropy + z-loss + adapters' auxiliary losses) and metrics.

    `normalizer` overrides the batch's own loss divisor and `aux_loss_scale`
    weights the auxiliary losses: gradient accumulation passes the whole
    batch's divisor and 1/k, so the k micro-batch gradients sum to the
    full-batch gradient. Not jitted here: the trainer jits the whole step.
    """
    logits, aux = self._apply(params, batch, dropout_rng, mutable=(sites.AUX_LOSS_COLLECTION,
                                                                   sites.ROUTER_STATS_COLLECTION))
    token_weights = self._loss_weights(batch)
    weights, own_normalizer = self.loss_weights_and_normalizer(batch)
    if normalizer is None:
      normalizer = own_normalizer
    normalizer = jnp.maximum(normalizer, 1e-8)
    targets = batch["decoder_target_tokens"]
    xent, zl = cross_entropy(logits, targets, weights, self.z_loss)
    token_xent, _ = cross_entropy(logits, targets, token_weights, 0.0)
    # per-example mean token loss, for per-task logging only
    per_example = jnp.sum(token_xent, -1) / jnp.maximum(jnp.sum(token_weights, -1), 1.0)
    xent_loss, z_loss = jnp.sum(xent) / normalizer, jnp.sum(zl) / normalizer
    aux_loss = aux_loss_scale * sum_collection(aux.get(sites.AUX_LOSS_COLLECTION, {}))
    loss = xent_loss + z_loss + aux_loss
    correct = token_correct(logits, targets) * token_weights
    metrics = {
        "loss": loss, "cross_entropy": xent_loss, "z_loss": z_loss, "aux_loss": aux_loss,
        "accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(token_weights), 1e-8),
        "num_tokens": jnp.sum(token_weights),
        "per_example_cross_entropy": per_example,
        "router_stats": aux.get(sites.ROUTER_STATS_COLLECTION, {}),
    }
    return loss, metrics

  # ---- decoding ----------------------------------------------------------
  def predict_batch(self, params, batch, max_decode_length: int = 32, num_beams: int = 1,
                    return_scores: bool = False):
    """Greedy (num_beams=1) or beam search over a KV cache.

    Returns int32 tokens [B, max_decode_length] (after EOS: 0); with
    `return_scores`, also the sequence scores (greedy: summed log-prob; beam:
    length-normalised as t5x).
    """
    if max_decode_length < 1 or num_beams < 1:
      raise ValueError(f"max_decode_length={max_decode_length} and num_beams={num_beams} must be >= 1")
    tokens, scores = self._predict_jit(params, batch, max_decode_length=max_decode_length,
                                       num_beams=num_beams)
    return (tokens, scores) if return_scores else tokens

  def _predict(self, params, batch, *, max_decode_length, num_beams):
    if num_beams > 1:
      batch = jax.tree_util.tree_map(lambda x: jnp.repeat(x, num_beams, axis=0), batch)
    step_fn, cache, first_lp, start = self._start_decoding(params, batch, max_decode_length)
    eos = self.config.eos_id
    if num_beams == 1:
      return decoding.greedy_search(step_fn, cache, first_lp, start,
                                    max_decode_length=max_decode_length, eos_id=eos)
    best, _, scores = decoding.beam_search(step_fn, cache, first_lp, start, num_beams=num_beams,
                                           max_decode_length=max_decode_length, eos_id=eos,
                                           alpha=self.length_penalty_alpha)
    return best, scores[:, 0]


class EncoderDecoderModel(BaseModel):
  """T5-family model."""

  def __init__(self, config: T5Config, adapters: sites.Adapters = sites.NO_ADAPTERS, **kwargs):
    self.module = T5Transformer(config, adapters)
    super().__init__(config, adapters, **kwargs)

  def _dummy_batch(self, batch_size=1, length=4):
    z = jnp.ones((batch_size, length), jnp.int32)
    return {"encoder_input_tokens": z, "decoder_input_tokens": z, "decoder_target_tokens": z,
            **_dummy_context(batch_size, self.config.d_model)}

  def _module_kwargs(self, batch):
    return dict(encoder_input_tokens=batch["encoder_input_tokens"],
                decoder_input_tokens=batch["decoder_input_tokens"],
                features=context_features(batch),
                decoder_target_tokens=batch.get("decoder_target_tokens"),
                encoder_segment_ids=batch.get("encoder_segment_ids"),
                decoder_segment_ids=batch.get("decoder_segment_ids"))

  def _start_decoding(self, params, batch, max_decode_length):
    enc_tokens = batch["encoder_input_tokens"]
    features = context_features(batch)
    n = enc_tokens.shape[0]
    encoded = self.module.apply({"params": params}, enc_tokens, features, method="encode")
    # Positions 0 (the start token) .. max_decode_length - 1: the last output
    # token is never fed back.
    cache_len = max_decode_length

    def decode(variables, tokens, positions, prefill=False):
      return self.module.apply(variables, encoded, enc_tokens, tokens, features,
                               decoder_positions=positions, decode=True, prefill=prefill,
                               mutable=["cache"], method="decode")

    zeros = jnp.zeros((n, cache_len), jnp.int32)
    # Only the cache's shapes are needed here (no computation is traced into the program).
    shapes = jax.eval_shape(lambda: decode({"params": params}, zeros, jnp.broadcast_to(
        jnp.arange(cache_len), (n, cache_len)), prefill=True)[1]["cache"])
    cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def step_fn(cache, tokens, positions, prefill=False):
      logits, new = decode({"params": params, "cache": cache}, tokens[:, None], positions[:, None],
                           prefill)
      return jax.nn.log_softmax(logits[:, 0], axis=-1), new["cache"]

    start = jnp.zeros((n,), jnp.int32)
    # The first step (decoder start token) is the prompt pass: the encoder
    # output is complete, so per-example decisions are made here, once.
    first_lp, cache = step_fn(cache, jnp.full((n,), self.config.decoder_start_id, jnp.int32), start,
                              prefill=True)
    return step_fn, cache, first_lp, start + 1


class DecoderOnlyModel(BaseModel):
  """Llama-family model. For prediction, `decoder_input_tokens` holds the
  right-padded prompts; their lengths come from `decoder_causal_attention` if
  given, else from the non-pad tokens."""

  def __init__(self, config: DecoderConfig, adapters: sites.Adapters = sites.NO_ADAPTERS, **kwargs):
    self.module = DecoderOnlyTransformer(config, adapters)
    super().__init__(config, adapters, **kwargs)

  def _dummy_batch(self, batch_size=1, length=4):
    z = jnp.ones((batch_size, length), jnp.int32)
    return {"decoder_input_tokens": z, "decoder_target_tokens": z, **_dummy_context(batch_size, self.config.d_model)}

  def _module_kwargs(self, batch):
    tokens = batch["decoder_input_tokens"]
    return dict(decoder_input_tokens=tokens, features=context_features(batch),
                decoder_segment_ids=batch.get("decoder_segment_ids"),
                decoder_positions=batch.get("decoder_positions"),
                token_mask=tokens != self.config.pad_id,
                prompt_mask=(batch["decoder_causal_attention"] > 0
                             if "decoder_causal_attention" in batch else None))

  def _loss_weights(self, batch):
    weights = super()._loss_weights(batch)
    if "decoder_loss_weights" not in batch and "decoder_causal_attention" in batch:
      # Prefix LM: the loss and scores cover only the targets after the inputs.
      # position t predicts token t+1: it is a target position unless t+1 is in the prompt
      causal = batch["decoder_causal_attention"]
      next_in_prompt = jnp.concatenate([causal[:, 1:], jnp.zeros_like(causal[:, :1])], axis=1)
      weights = weights * (1 - next_in_prompt).astype(jnp.float32)
    return weights

  def _start_decoding(self, params, batch, max_decode_length):
    prompt = batch["decoder_input_tokens"]
    n, prompt_len = prompt.shape
    if "decoder_causal_attention" in batch:
      lengths = jnp.sum(batch["decoder_causal_attention"] > 0, axis=-1).astype(jnp.int32)
    else:
      lengths = jnp.sum(prompt != self.config.pad_id, axis=-1).astype(jnp.int32)
    features = context_features(batch)
    # The prompt, then max_decode_length - 1 generated tokens fed back (the last is not).
    cache_len = prompt_len + max_decode_length - 1

    def run(variables, tokens, positions, token_mask=None, prefill=False):
      if token_mask is None:
        token_mask = jnp.ones(tokens.shape, bool)
      return self.module.apply(variables, tokens, features, decoder_positions=positions,
                               token_mask=token_mask, prompt_mask=token_mask, decode=True,
                               prefill=prefill, mutable=["cache"])

    full = jnp.broadcast_to(jnp.arange(cache_len), (n, cache_len))
    shapes = jax.eval_shape(lambda: run({"params": params}, jnp.zeros((n, cache_len), jnp.int32), full,
                                        prefill=True)[1]["cache"])
    cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    # Prefill: the whole right-padded prompt at once; positions past an
    # example's length hold junk keys that its generated tokens overwrite.
    prompt_mask = jnp.arange(prompt_len)[None] < lengths[:, None]
    logits, new = run({"params": params, "cache": cache}, prompt,
                      jnp.broadcast_to(jnp.arange(prompt_len), (n, prompt_len)), prompt_mask,
                      prefill=True)
    last = jnp.take_along_axis(logits, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]

    def step_fn(cache, tokens, positions):
      logits, new = run({"params": params, "cache": cache}, tokens[:, None], positions[:, None])
      return jax.nn.log_softmax(logits[:, 0], axis=-1), new["cache"]

    return step_fn, new["cache"], jax.nn.log_softmax(last, axis=-1), lengths


def build_model(config: ModelConfig, adapters: sites.Adapters = sites.NO_ADAPTERS, **kwargs) -> BaseModel:
  if isinstance(config, T5Config):
    return EncoderDecoderModel(config, adapters, **kwargs)
  if isinstance(config, DecoderConfig):
    return DecoderOnlyModel(config, adapters, **kwargs)
  raise TypeError(f"unsupported model config {type(config).__name__}")
