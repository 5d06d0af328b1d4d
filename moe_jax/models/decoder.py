"""Llama-family decoder-only backbone: RoPE, SwiGLU, RMSNorm, grouped-query attention.

Parameter names follow the t5x decoder layout (`layers_i/self_attention`,
`layers_i/mlp/{gate,up,down}`); every projection is an adapter site.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from moe_jax.layers.attention import Attention
from moe_jax.layers.dense import DenseGeneral
from moe_jax.layers.embeddings import Embed
from moe_jax.layers.mlp import MLP
from moe_jax.layers.norms import RMSNorm
from moe_jax.models import layer_stack, masks
from moe_jax.models.configs import DecoderConfig
from moe_jax import adapters as sites

_INIT = nn.initializers.normal(0.02)  # Llama's initializer_range
_LAYER_KINDS = tuple(f"self_attention/{k}" for k in sites.ATTENTION_KINDS) + (
    "mlp/gate", "mlp/up", f"mlp/{sites.FFN_HIDDEN}", "mlp/down")


class DecoderOnlyLayer(nn.Module):
  config: DecoderConfig
  adapters: sites.Adapters
  layer: int = 0
  decode: bool = False

  @nn.compact
  def __call__(self, x, ctx: sites.AdapterContext, mask, positions, prompt_mask):
    """Positional arguments and an (x, None) result, so it can be scanned."""
    decode = self.decode
    c = self.config
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    path = f"decoder/layer_{self.layer}"
    info = sites.LayerInfo(path=path, stack="decoder", layer=self.layer, num_layers=c.num_layers,
                           d_model=c.d_model, site_kinds=_LAYER_KINDS)
    layer_input = sites.LayerInput(x, prompt_mask, segment_ids=ctx.segment_ids)
    ctx = sites.apply_layer_hook(self.adapters, info, layer_input, ctx)
    drop = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))
    h = RMSNorm(c.rms_norm_eps, dtype, pdtype, name="pre_self_attention_layer_norm")(x)
    h = Attention(num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.kv_dim,
                  scale_logits=True, rope_theta=c.rope_theta, dropout_rate=c.dropout_rate,
                  dtype=dtype, param_dtype=pdtype, kernel_init=_INIT, adapters=self.adapters,
                  site_path=f"{path}/self_attention", stack="decoder", layer=self.layer,
                  name="self_attention")(h, h, ctx, mask=mask, positions=positions, decode=decode)
    x = x + drop(h, deterministic=ctx.deterministic)
    h = RMSNorm(c.rms_norm_eps, dtype, pdtype, name="pre_mlp_layer_norm")(x)
    h = MLP(d_ff=c.d_ff, variant="swiglu", dropout_rate=c.dropout_rate, dtype=dtype,
            param_dtype=pdtype, kernel_init=_INIT, adapters=self.adapters,
            site_path=f"{path}/mlp", stack="decoder", layer=self.layer, name="mlp")(h, ctx)
    return x + drop(h, deterministic=ctx.deterministic), None


class DecoderOnlyTransformer(nn.Module):
  config: DecoderConfig
  adapters: sites.Adapters = sites.NO_ADAPTERS

  @nn.compact
  def __call__(self, decoder_input_tokens, features=None, *, decoder_segment_ids=None,
               decoder_positions=None, token_mask=None, prompt_mask=None, deterministic=True,
               decode=False, prefill=False):
    """`decode=True` uses the KV cache; `prefill=True` marks the prompt pass.

    `prompt_mask` [B, T] marks the prompt (inputs) part; per-layer hooks that
    decide per prompt (MiLoRA, MoA) see only it. Default: every real token.
    """
    c = self.config
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    batch, length = decoder_input_tokens.shape
    if token_mask is None:
      token_mask = jnp.ones((batch, length), bool)
    ctx = sites.AdapterContext(features=dict(features or {}), token_mask=token_mask,
                               segment_ids=decoder_segment_ids, deterministic=deterministic,
                               decode_phase=("prefill" if prefill else "step") if decode else None,
                               rematerialised=c.remat_policy != "none")
    hook = self.adapters.model_hook(name="model_hook")
    if hook is not None:
      ctx = ctx.replace(model_state=hook(ctx))
    if decoder_positions is None:
      if decoder_segment_ids is not None:
        raise ValueError("packed decoder-only batches need decoder_positions for RoPE")
      decoder_positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    embed = Embed(c.vocab_size, c.d_model, embedding_init=_INIT, dtype=dtype, param_dtype=pdtype,
                  name="token_embedder")
    x = embed(decoder_input_tokens)
    x = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    mask = None
    if not decode:
      mask = masks.causal_mask(length) & masks.segment_mask(decoder_segment_ids, decoder_segment_ids)
    x = layer_stack.apply(DecoderOnlyLayer, c, c.num_layers, x,
                          (ctx, mask, decoder_positions, token_mask if prompt_mask is None else prompt_mask),
                          dict(config=c, adapters=self.adapters, decode=decode))
    x = RMSNorm(c.rms_norm_eps, dtype, pdtype, name="decoder_norm")(x)
    x = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    if c.tie_word_embeddings:
      logits = embed.attend(x)
    else:
      logits = DenseGeneral((c.vocab_size,), ("embed",), ("vocab",), kernel_init=_INIT, dtype=dtype,
                            param_dtype=pdtype, name="logits_dense")(x)
    return logits.astype(jnp.float32)
