"""T5X / flaxformer T5 parameter layouts -> a moe-jax T5 config and parameter tree.

t5x's minimal T5 (`t5x/examples/t5/network.py`) names its parameters as
moe-jax does (`encoder/layers_0/attention/query/kernel`, ...), with 2-D
attention kernels: q/k/v `[d_model, heads*d_kv]` and out `[heads*d_kv,
d_model]`, heads outermost. The flaxformer T5 used by the released MoV code
(`flaxformer/architectures/t5/t5_architecture.py`) has the same names for
T5 v1.1 and may also have: 3-D kernels (`split_head_kernel`), fused
`qkv_fused` / `kv_fused` attention kernels, a fused `mlp/wi_fused` kernel
`[d_model, n, d_ff]`, and one relative bias per layer
(`layers_N/relpos_bias/rel_embedding`, accepted when all layers of a stack
hold the same bias, since moe-jax shares one per stack as T5 does).
Every checkpoint array must be used and every parameter found; otherwise a
`CheckpointError` names it.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

import numpy as np

from moe_jax.models.configs import T5Config
from moe_jax.models.hf import CheckpointError
from moe_jax.models.t5x.reader import Leaf

_LAYER = re.compile(r"^(encoder|decoder)/layers_(\d+)/")
GATED = ("gated-gelu", "gated-relu")


@dataclasses.dataclass(frozen=True)
class Source:
  """How one moe-jax parameter is made from checkpoint arrays."""
  leaves: tuple[str, ...]  # checkpoint names (without `target/`)
  make: Callable[..., np.ndarray]  # arrays of `leaves` -> array in moe-jax's layout


def _require(names: dict[str, Leaf], name: str, file: str) -> Leaf:
  if name not in names:
    raise CheckpointError(f"{file}: missing array target/{name}")
  return names[name]


def _layer_count(names, stack: str, file: str) -> int:
  idx = {int(m.group(2)) for n in names if (m := _LAYER.match(n)) and m.group(1) == stack}
  if not idx:
    raise CheckpointError(f"{file}: no {stack} layers (target/{stack}/layers_N/...)")
  if idx != set(range(max(idx) + 1)):
    missing = sorted(set(range(max(idx) + 1)) - idx)
    raise CheckpointError(f"{file}: {stack} layers {missing} are missing (found {sorted(idx)})")
  return max(idx) + 1


def _relpos_name(names, stack: str) -> str:
  shared, per_layer = f"{stack}/relpos_bias/rel_embedding", f"{stack}/layers_0/relpos_bias/rel_embedding"
  return per_layer if per_layer in names and shared not in names else shared


def infer_config(names: dict[str, Leaf], file: str, config: Optional[T5Config] = None) -> T5Config:
  """The T5 configuration the arrays' shapes imply (checked against `config` if given)."""
  emb = _require(names, "token_embedder/embedding", file)
  if len(emb.shape) != 2:
    raise CheckpointError(f"{file}: target/token_embedder/embedding has shape {emb.shape}, expected 2-D")
  vocab, d = emb.shape
  rel = _require(names, _relpos_name(names, "encoder"), file)
  if len(rel.shape) != 2:
    raise CheckpointError(f"{file}: target/{rel.name[len('target/'):]} has shape {rel.shape}, "
                          "expected [heads, buckets]")
  heads, buckets = rel.shape
  attn = "encoder/layers_0/attention"
  if f"{attn}/qkv_fused/kernel" in names:
    q, n_fused = names[f"{attn}/qkv_fused/kernel"], 3
  else:
    q, n_fused = _require(names, f"{attn}/query/kernel", file), 1
  width = int(np.prod(q.shape[1:]))
  if q.shape[0] != d or width % (n_fused * heads):
    raise CheckpointError(f"{file}: {q.name} has shape {q.shape}, which does not fit d_model {d} "
                          f"and {heads} heads (from {rel.name})")
  d_kv = width // (n_fused * heads)
  mlp = "encoder/layers_0/mlp"
  if f"{mlp}/wi_fused/kernel" in names:
    wi = names[f"{mlp}/wi_fused/kernel"]
    if len(wi.shape) != 3 or wi.shape[1] not in (1, 2):
      raise CheckpointError(f"{file}: {wi.name} has shape {wi.shape}, expected [d_model, 1 or 2, d_ff]")
    gated = wi.shape[1] == 2
  elif f"{mlp}/wi_0/kernel" in names:
    gated = True
  else:
    _require(names, f"{mlp}/wi/kernel", file)
    gated = False
  wo = _require(names, f"{mlp}/wo/kernel", file)
  d_ff = wo.shape[0]
  tie = "decoder/logits_dense/kernel" not in names
  if config is not None and (config.mlp_variant in GATED) == gated:
    variant = config.mlp_variant
  else:  # T5 v1.1: gated GELU; T5 1.0: ReLU
    variant = "gated-gelu" if gated else "relu"
  inferred = dict(
      vocab_size=vocab, d_model=d, d_kv=d_kv, d_ff=d_ff, num_heads=heads,
      num_encoder_layers=_layer_count(names, "encoder", file),
      num_decoder_layers=_layer_count(names, "decoder", file),
      relative_attention_num_buckets=buckets, mlp_variant=variant, tie_word_embeddings=tie,
      # t5x divides the logits by sqrt(d_model) exactly when they come from the embedding.
      scale_decoder_outputs=tie)
  if config is None:
    return T5Config(**inferred)
  wrong = {k: (v, getattr(config, k)) for k, v in inferred.items() if getattr(config, k) != v}
  if wrong:
    detail = ", ".join(f"{k}={v} (config says {c})" for k, (v, c) in sorted(wrong.items()))
    raise CheckpointError(f"{file}: the checkpoint's shapes imply {detail}")
  return config


def _fit(leaf: Leaf, accepted: list[tuple[int, ...]], ours: tuple[int, ...], index=None) -> Source:
  """A source that reshapes `leaf` (one of `accepted` shapes) to `ours`."""
  if leaf.shape not in accepted:
    raise CheckpointError(f"{leaf.name} ({leaf.where}) has shape {leaf.shape}; the inferred "
                          f"configuration needs {' or '.join(map(str, accepted))}")
  full = accepted[-1]  # the unflattened layout

  def make(a):
    a = a.reshape(full)
    return (a if index is None else a[:, index]).reshape(ours)
  return Source((leaf.name[len("target/"):],), make)


def _attention(names, p: str, c: T5Config, file: str) -> dict[str, Source]:
  d, h, dk = c.d_model, c.num_heads, c.d_kv
  qkv_shape, out_shape = (d, h, dk), (h, dk, d)
  out = {}
  for fused, parts in (("qkv_fused", ("query", "key", "value")), ("kv_fused", ("key", "value"))):
    name = f"{p}/{fused}/kernel"
    if name in names:
      n = len(parts)
      for i, part in enumerate(parts):
        out[f"{p}/{part}/kernel"] = _fit(names[name], [(d, n * h * dk), (d, n, h, dk)], qkv_shape, i)
  for part in ("query", "key", "value"):
    if f"{p}/{part}/kernel" not in out:
      out[f"{p}/{part}/kernel"] = _fit(_require(names, f"{p}/{part}/kernel", file),
                                       [(d, h * dk), qkv_shape], qkv_shape)
  out[f"{p}/out/kernel"] = _fit(_require(names, f"{p}/out/kernel", file), [(h * dk, d), out_shape],
                                out_shape)
  return out


def _mlp(names, p: str, c: T5Config, file: str) -> dict[str, Source]:
  d, f = c.d_model, c.d_ff
  ins = ("wi_0", "wi_1") if c.mlp_variant in GATED else ("wi",)
  out = {}
  if f"{p}/wi_fused/kernel" in names:
    for i, part in enumerate(ins):
      out[f"{p}/{part}/kernel"] = _fit(names[f"{p}/wi_fused/kernel"], [(d, len(ins), f)], (d, f), i)
  else:
    for part in ins:
      out[f"{p}/{part}/kernel"] = _fit(_require(names, f"{p}/{part}/kernel", file), [(d, f)], (d, f))
  out[f"{p}/wo/kernel"] = _fit(_require(names, f"{p}/wo/kernel", file), [(f, d)], (f, d))
  return out


def _scale(names, name: str, c: T5Config, file: str) -> Source:
  return _fit(_require(names, name, file), [(c.d_model,)], (c.d_model,))


def _relpos(names, stack: str, n_layers: int, c: T5Config, file: str) -> Source:
  shape = (c.num_heads, c.relative_attention_num_buckets)
  shared = f"{stack}/relpos_bias/rel_embedding"
  if shared in names:
    return _fit(names[shared], [shape], shape)
  per_layer = [f"{stack}/layers_{i}/relpos_bias/rel_embedding" for i in range(n_layers)]
  for name in per_layer:
    _fit(_require(names, name, file), [shape], shape)

  def make(*arrays):
    for name, a in zip(per_layer[1:], arrays[1:]):
      if not np.array_equal(a, arrays[0]):
        raise CheckpointError(f"{file}: target/{name} differs from layer 0's relative position bias; "
                              "moe-jax shares one bias per stack, as T5 does")
    return arrays[0]
  return Source(tuple(per_layer), make)


def sources(names: dict[str, Leaf], c: T5Config, file: str) -> dict[tuple[str, ...], Source]:
  """{moe-jax parameter path: Source}; every checkpoint array must be used."""
  out: dict[str, Source] = {
      "token_embedder/embedding": _fit(names["token_embedder/embedding"], [(c.vocab_size, c.d_model)],
                                       (c.vocab_size, c.d_model))}
  for stack, n in (("encoder", c.num_encoder_layers), ("decoder", c.num_decoder_layers)):
    out[f"{stack}/relpos_bias/rel_embedding"] = _relpos(names, stack, n, c, file)
    for i in range(n):
      p = f"{stack}/layers_{i}"
      if stack == "encoder":
        out.update(_attention(names, f"{p}/attention", c, file))
        norms = ("pre_attention_layer_norm",)
      else:
        out.update(_attention(names, f"{p}/self_attention", c, file))
        out.update(_attention(names, f"{p}/encoder_decoder_attention", c, file))
        norms = ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm")
      for norm in norms + ("pre_mlp_layer_norm",):
        out[f"{p}/{norm}/scale"] = _scale(names, f"{p}/{norm}/scale", c, file)
      out.update(_mlp(names, f"{p}/mlp", c, file))
    norm = f"{stack}/{stack}_norm/scale"
    out[norm] = _scale(names, norm, c, file)
  if not c.tie_word_embeddings:
    out["decoder/logits_dense/kernel"] = _fit(names["decoder/logits_dense/kernel"],
                                              [(c.d_model, c.vocab_size)], (c.d_model, c.vocab_size))
  used = {leaf for s in out.values() for leaf in s.leaves}
  unknown = sorted(set(names) - used)
  if unknown:
    raise CheckpointError(f"{file}: unknown array(s) " + ", ".join(f"target/{u}" for u in unknown[:5]) +
                          (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "") +
                          "; not part of a T5X / flaxformer T5")
  return {tuple(k.split("/")): v for k, v in out.items()}
