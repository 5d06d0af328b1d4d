"""T5 encoder-decoder backbone (v1.1 by default; 1.0 via config), t5x layout.

Pre-norm residual blocks with RMS norm, one relative position bias per stack
(bidirectional in the encoder, causal in the decoder), no attention-logit
scaling and no biases. Every projection is an adapter site (see moe_jax/adapters.py).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from moe_jax.layers.attention import Attention
from moe_jax.layers.dense import DenseGeneral
from moe_jax.layers.embeddings import Embed
from moe_jax.layers.mlp import MLP, VARIANTS
from moe_jax.layers.norms import RMSNorm
from moe_jax.layers.position import RelativePositionBias, relative_bias
from moe_jax.models import layer_stack, masks
from moe_jax.models.configs import T5Config
from moe_jax import adapters as sites

# Attention kernels use t5x's init (fan-in normal); MLP kernels fan-in truncated normal.
_ATTN_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def _mlp_kinds(cfg: T5Config) -> tuple[str, ...]:
  in_names, _, out_name = VARIANTS[cfg.mlp_variant]
  return in_names + (sites.FFN_HIDDEN, out_name)


class _Block(nn.Module):
  """Shared helpers of encoder and decoder layers."""
  config: T5Config
  adapters: sites.Adapters
  stack: str = ""
  layer: int = 0

  @property
  def path(self) -> str:
    return f"{self.stack}/layer_{self.layer}"

  def _norm(self, name):
    c = self.config
    return RMSNorm(c.layer_norm_epsilon, jnp.dtype(c.dtype), jnp.dtype(c.param_dtype), name=name)

  def _attention(self, name, block):
    c = self.config
    return Attention(num_heads=c.num_heads, head_dim=c.d_kv, dropout_rate=c.dropout_rate,
                     dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
                     kernel_init=_ATTN_INIT, adapters=self.adapters,
                     site_path=f"{self.path}/{block}", stack=self.stack, layer=self.layer,
                     block=block, name=name)

  def _mlp(self):
    c = self.config
    return MLP(d_ff=c.d_ff, variant=c.mlp_variant, dropout_rate=c.dropout_rate,
               dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
               adapters=self.adapters, site_path=f"{self.path}/mlp", stack=self.stack,
               layer=self.layer, name="mlp")

  def _dropout(self, x, ctx):
    return nn.Dropout(self.config.dropout_rate, broadcast_dims=(-2,))(x, deterministic=ctx.deterministic)

  def _layer_info(self, num_layers, blocks):
    kinds = tuple(f"{b}/{k}" for b in blocks for k in sites.ATTENTION_KINDS)
    kinds += tuple(f"mlp/{k}" for k in _mlp_kinds(self.config))
    return sites.LayerInfo(path=self.path, stack=self.stack, layer=self.layer,
                           num_layers=num_layers, d_model=self.config.d_model, site_kinds=kinds)


class EncoderLayer(_Block):
  """Positional arguments and an (x, None) result, so it can be scanned."""
  stack: str = "encoder"

  @nn.compact
  def __call__(self, x, ctx: sites.AdapterContext, mask, bias):
    bias_fn = lambda *_: bias
    info = self._layer_info(self.config.num_encoder_layers, ("self_attention",))
    layer_input = sites.LayerInput(x, ctx.token_mask, segment_ids=ctx.segment_ids)
    ctx = sites.apply_layer_hook(self.adapters, info, layer_input, ctx)
    h = self._norm("pre_attention_layer_norm")(x)
    h = self._attention("attention", "self_attention")(h, h, ctx, mask=mask, bias_fn=bias_fn)
    x = x + self._dropout(h, ctx)
    h = self._mlp()(self._norm("pre_mlp_layer_norm")(x), ctx)
    return x + self._dropout(h, ctx), None


class DecoderLayer(_Block):
  """`bias` [1, H, T, T] in training; in cached decoding (`decode`) the bias
  is computed from the shared `relpos_table` at each step's positions."""
  stack: str = "decoder"
  decode: bool = False

  @nn.compact
  def __call__(self, x, ctx: sites.AdapterContext, encoded, encoded_mask, self_mask, cross_mask, bias,
               relpos_table, positions):
    decode = self.decode
    c = self.config
    if decode:
      bias_fn = functools.partial(relative_bias, relpos_table, bidirectional=False,
                                  num_buckets=c.relative_attention_num_buckets,
                                  max_distance=c.relative_attention_max_distance, dtype=jnp.dtype(c.dtype))
    else:
      bias_fn = lambda *_: bias
    info = self._layer_info(self.config.num_decoder_layers, ("self_attention", "cross_attention"))
    layer_input = sites.LayerInput(x, ctx.token_mask, encoded, encoded_mask, ctx.segment_ids,
                                   ctx.encoded_segment_ids)
    ctx = sites.apply_layer_hook(self.adapters, info, layer_input, ctx)
    h = self._norm("pre_self_attention_layer_norm")(x)
    h = self._attention("self_attention", "self_attention")(
        h, h, ctx, mask=self_mask, bias_fn=bias_fn, positions=positions, decode=decode)
    x = x + self._dropout(h, ctx)
    h = self._norm("pre_cross_attention_layer_norm")(x)
    h = self._attention("encoder_decoder_attention", "cross_attention")(
        h, encoded, ctx, mask=cross_mask, decode=decode)  # decode: keys/values cached at prefill
    x = x + self._dropout(h, ctx)
    h = self._mlp()(self._norm("pre_mlp_layer_norm")(x), ctx)
    return x + self._dropout(h, ctx), None


def _relpos(cfg: T5Config, bidirectional: bool) -> RelativePositionBias:
  return RelativePositionBias(cfg.num_heads, cfg.relative_attention_num_buckets,
                              cfg.relative_attention_max_distance, bidirectional,
                              jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype), name="relpos_bias")


class Encoder(nn.Module):
  config: T5Config
  adapters: sites.Adapters
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens, ctx: sites.AdapterContext, segment_ids=None):
    cfg = self.config
    length = tokens.shape[1]
    x = self.shared_embedding(tokens)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=ctx.deterministic)
    mask = masks.padding_mask(None, tokens > 0) & masks.segment_mask(segment_ids, segment_ids)
    bias = _relpos(cfg, True)(jnp.arange(length)[None], jnp.arange(length))
    x = layer_stack.apply(EncoderLayer, cfg, cfg.num_encoder_layers, x, (ctx, mask, bias),
                          dict(config=cfg, adapters=self.adapters))
    x = RMSNorm(cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype),
                name="encoder_norm")(x)
    return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=ctx.deterministic)


class Decoder(nn.Module):
  config: T5Config
  adapters: sites.Adapters
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded, encoder_tokens, decoder_input_tokens, ctx: sites.AdapterContext, *,
               decoder_target_tokens=None, encoder_segment_ids=None, decoder_segment_ids=None,
               positions=None, decode=False):
    cfg = self.config
    length = decoder_input_tokens.shape[1]
    x = self.shared_embedding(decoder_input_tokens)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=ctx.deterministic)
    relpos = _relpos(cfg, False)
    encoded_mask = encoder_tokens > 0
    cross_mask = masks.padding_mask(None, encoded_mask) & masks.segment_mask(decoder_segment_ids,
                                                                             encoder_segment_ids)
    if decode:
      self_mask, bias, table = None, None, relpos.table()  # the KV cache builds the causal mask
    else:
      self_mask = masks.causal_mask(length) & masks.segment_mask(decoder_segment_ids, decoder_segment_ids)
      if decoder_target_tokens is not None:
        self_mask = self_mask & masks.padding_mask(None, decoder_target_tokens > 0)
      bias, table = relpos(jnp.arange(length)[None], jnp.arange(length)), None
    x = layer_stack.apply(DecoderLayer, cfg, cfg.num_decoder_layers, x,
                          (ctx, encoded, encoded_mask, self_mask, cross_mask, bias, table, positions),
                          dict(config=cfg, adapters=self.adapters, decode=decode))
    x = RMSNorm(cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype),
                name="decoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=ctx.deterministic)
    if cfg.scale_decoder_outputs:  # T5 1.0 rescales before its tied head
      x = x * cfg.d_model ** -0.5
    if cfg.tie_word_embeddings:
      logits = self.shared_embedding.attend(x)
    else:
      logits = DenseGeneral((cfg.vocab_size,), ("embed",), ("vocab",),
                            kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                            dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                            name="logits_dense")(x)
    return logits.astype(jnp.float32)


class T5Transformer(nn.Module):
  """The full encoder-decoder. `encode`/`decode` are separate for decoding."""
  config: T5Config
  adapters: sites.Adapters = sites.NO_ADAPTERS

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.dtype(cfg.dtype),
                                param_dtype=jnp.dtype(cfg.param_dtype))
    self.encoder = Encoder(cfg, self.adapters, self.token_embedder)
    self.decoder = Decoder(cfg, self.adapters, self.token_embedder)
    self.adapter_model_hook = self.adapters.model_hook(name=None)

  def _context(self, features, token_mask, deterministic, decode_phase=None, segment_ids=None):
    ctx = sites.AdapterContext(features=dict(features or {}), token_mask=token_mask,
                               segment_ids=segment_ids, deterministic=deterministic,
                               decode_phase=decode_phase,
                               rematerialised=self.config.remat_policy != "none")
    if self.adapter_model_hook is not None:
      ctx = ctx.replace(model_state=self.adapter_model_hook(ctx))
    return ctx

  def encode(self, encoder_input_tokens, features=None, *, encoder_segment_ids=None,
             deterministic=True):
    ctx = self._context(features, encoder_input_tokens > 0, deterministic, segment_ids=encoder_segment_ids)
    return self.encoder(encoder_input_tokens, ctx, encoder_segment_ids)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, features=None, *,
             decoder_target_tokens=None, encoder_segment_ids=None, decoder_segment_ids=None,
             decoder_positions=None, deterministic=True, decode=False, prefill=False):
    """`decode=True` runs one cached step; `prefill=True` marks the first one,
    where per-example decisions (e.g. MiLoRA routing) are made and cached."""
    if decode or decoder_target_tokens is None:
      token_mask = jnp.ones(decoder_input_tokens.shape, bool)
    else:
      token_mask = decoder_target_tokens > 0
    ctx = self._context(features, token_mask, deterministic,
                        ("prefill" if prefill else "step") if decode else None, decoder_segment_ids)
    ctx = ctx.replace(encoded_mask=encoder_input_tokens > 0, encoded_segment_ids=encoder_segment_ids)
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens, ctx,
                        decoder_target_tokens=decoder_target_tokens,
                        encoder_segment_ids=encoder_segment_ids,
                        decoder_segment_ids=decoder_segment_ids, positions=decoder_positions,
                        decode=decode)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, features=None, *,
               decoder_target_tokens=None, encoder_segment_ids=None, decoder_segment_ids=None,
               deterministic=True):
    encoded = self.encode(encoder_input_tokens, features, encoder_segment_ids=encoder_segment_ids,
                          deterministic=deterministic)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, features,
                       decoder_target_tokens=decoder_target_tokens,
                       encoder_segment_ids=encoder_segment_ids,
                       decoder_segment_ids=decoder_segment_ids, deterministic=deterministic)
