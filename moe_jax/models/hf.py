"""Import and export of Hugging Face checkpoints (T5 1.0/1.1/Flan, Llama family).

A checkpoint is a local directory with `config.json` and `model.safetensors`
(or shards listed in `model.safetensors.index.json`). Every tensor is mapped
through an explicit table; a missing, unexpected or mis-shaped tensor and any
config field we do not understand is an error naming it, so a silently wrong
model cannot be built. Exports are written to a temporary sibling directory
and renamed into place, so a failure leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from moe_jax.utils import fs
from moe_jax.models import layer_layout, safetensors_io
from moe_jax.models.api import BaseModel, build_model
from moe_jax.models.configs import DecoderConfig, ModelConfig, T5Config
from moe_jax import adapters as sites
from moe_jax.adapters import is_adapter_path


from moe_jax.errors import CheckpointError  # noqa: E402  one class for every checkpoint kind


# Fields every transformers config may carry that do not change the network.
_GENERIC_FIELDS = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "use_cache", "initializer_range", "initializer_factor", "id2label", "label2id", "return_dict",
    "output_hidden_states", "output_attentions", "torchscript", "tokenizer_class", "prefix",
    "task_specific_params", "gradient_checkpointing", "problem_type", "finetuning_task",
    "max_length", "min_length", "num_beams", "early_stopping", "length_penalty",
    "no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "do_sample", "temperature",
    "top_k", "top_p", "repetition_penalty", "chunk_size_feed_forward", "is_encoder_decoder",
    "is_decoder", "add_cross_attention", "tie_encoder_decoder", "bos_token_id", "sep_token_id",
    "pruned_heads", "output_past", "classifier_dropout", "attention_dropout", "pretraining_tp",
    "n_positions", "_attn_implementation_autoset",
}


def _check_fields(cfg: dict, used: set[str], where: str):
  unknown = sorted(set(cfg) - used - _GENERIC_FIELDS)
  if unknown:
    raise CheckpointError(f"{where}: unsupported config field(s) {unknown}; moe-jax would not "
                          "reproduce the reference model with them")


def _first(x):
  return x[0] if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------
# config.json <-> ModelConfig

_T5_FIELDS = {
    "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
    "relative_attention_num_buckets", "relative_attention_max_distance", "feed_forward_proj",
    "tie_word_embeddings", "scale_decoder_outputs", "layer_norm_epsilon", "dropout_rate",
    "pad_token_id", "eos_token_id", "decoder_start_token_id", "dense_act_fn", "is_gated_act",
}
_T5_MLP = {"gated-gelu": "gated-gelu", "relu": "relu", "gated-relu": "gated-relu"}

_LLAMA_FIELDS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_parameters",
    "rope_scaling", "tie_word_embeddings", "max_position_embeddings", "hidden_act",
    "attention_bias", "mlp_bias", "eos_token_id", "pad_token_id", "sliding_window",
}


def config_from_hf(cfg: dict, where: str, dtype: str, activation_dtype: str) -> ModelConfig:
  model_type = cfg.get("model_type")
  if model_type == "t5":
    _check_fields(cfg, _T5_FIELDS, where)
    proj = cfg.get("feed_forward_proj", "relu")
    if proj not in _T5_MLP:
      raise CheckpointError(f"{where}: feed_forward_proj={proj!r} is not supported "
                            f"(supported: {sorted(_T5_MLP)})")
    act = cfg.get("dense_act_fn")
    if act is not None and act != {"gated-gelu": "gelu_new", "relu": "relu", "gated-relu": "relu"}[proj]:
      raise CheckpointError(f"{where}: dense_act_fn={act!r} does not match feed_forward_proj={proj!r}")
    tie = cfg.get("tie_word_embeddings", True) is not False
    return T5Config(
        vocab_size=cfg.get("vocab_size", 32128), d_model=cfg.get("d_model", 512),
        d_kv=cfg.get("d_kv", 64), d_ff=cfg.get("d_ff", 2048), num_heads=cfg.get("num_heads", 8),
        num_encoder_layers=cfg.get("num_layers", 6),
        num_decoder_layers=cfg.get("num_decoder_layers") or cfg.get("num_layers", 6),
        relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=cfg.get("relative_attention_max_distance", 128),
        mlp_variant=_T5_MLP[proj], tie_word_embeddings=tie,
        # transformers' rule: rescale unless the config says tie_word_embeddings=false.
        scale_decoder_outputs=bool(cfg.get("scale_decoder_outputs", tie)),
        layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-6),
        dropout_rate=cfg.get("dropout_rate", 0.1), dtype=activation_dtype, param_dtype=dtype,
        pad_id=cfg.get("pad_token_id", 0) or 0, eos_id=_first(cfg.get("eos_token_id", 1)),
        decoder_start_id=cfg.get("decoder_start_token_id", 0) or 0)
  if model_type in ("llama", "mistral"):
    _check_fields(cfg, _LLAMA_FIELDS, where)
    if cfg.get("hidden_act", "silu") != "silu":
      raise CheckpointError(f"{where}: hidden_act={cfg['hidden_act']!r} (only 'silu' is supported)")
    for key in ("attention_bias", "mlp_bias"):
      if cfg.get(key):
        raise CheckpointError(f"{where}: {key}=true is not supported")
    if cfg.get("sliding_window") is not None:
      raise CheckpointError(f"{where}: sliding_window={cfg['sliding_window']} is not supported")
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling")
    rope_type = rope.get("rope_type", (scaling or {}).get("rope_type", (scaling or {}).get("type", "default")))
    if rope_type != "default":
      raise CheckpointError(f"{where}: rope type {rope_type!r} is not supported (only 'default')")
    heads = cfg.get("num_attention_heads", 32)
    return DecoderConfig(
        vocab_size=cfg.get("vocab_size", 32000), d_model=cfg.get("hidden_size", 4096),
        d_ff=cfg.get("intermediate_size", 11008), num_layers=cfg.get("num_hidden_layers", 32),
        num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim"), rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=cfg.get("max_position_embeddings", 2048), dtype=activation_dtype,
        param_dtype=dtype, pad_id=cfg.get("pad_token_id") or 0, bos_id=cfg.get("bos_token_id"),
        eos_id=_first(cfg.get("eos_token_id", 2)))
  raise CheckpointError(f"{where}: unsupported architecture model_type={model_type!r} "
                        f"(architectures={cfg.get('architectures')}); supported: t5, llama, mistral")


def config_to_hf(config: ModelConfig) -> dict:
  if isinstance(config, T5Config):
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "vocab_size": config.vocab_size, "d_model": config.d_model, "d_kv": config.d_kv,
        "d_ff": config.d_ff, "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers, "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "feed_forward_proj": config.mlp_variant, "tie_word_embeddings": config.tie_word_embeddings,
        "scale_decoder_outputs": config.scale_decoder_outputs,
        "layer_norm_epsilon": config.layer_norm_epsilon, "dropout_rate": config.dropout_rate,
        "is_encoder_decoder": True, "pad_token_id": config.pad_id, "eos_token_id": config.eos_id,
        "decoder_start_token_id": config.decoder_start_id, "dtype": config.param_dtype,
    }
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": config.vocab_size, "hidden_size": config.d_model,
      "intermediate_size": config.d_ff, "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.kv_dim, "rms_norm_eps": config.rms_norm_eps,
      "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
      "tie_word_embeddings": config.tie_word_embeddings,
      "max_position_embeddings": config.max_position_embeddings, "hidden_act": "silu",
      "attention_bias": False, "mlp_bias": False, "bos_token_id": config.bos_id,
      "eos_token_id": config.eos_id, "pad_token_id": config.pad_id, "dtype": config.param_dtype,
  }


# ---------------------------------------------------------------------------
# tensor tables

@dataclasses.dataclass(frozen=True)
class Tensor:
  hf_key: str
  path: tuple[str, ...]  # moe-jax parameter path
  hf_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x):
  return x


def _transpose(x):
  return x.T


def _linear(hf_key, path, d_in, d_out):
  """HF Linear weight [out, in] <-> kernel [in, out]."""
  return Tensor(hf_key, path + ("kernel",), (d_out, d_in), _transpose, _transpose)


def _qkv(hf_key, path, d_model, heads, head_dim):
  """[heads*head_dim, d_model] <-> [d_model, heads, head_dim]."""
  return Tensor(hf_key, path + ("kernel",), (heads * head_dim, d_model),
                lambda w: w.T.reshape(d_model, heads, head_dim),
                lambda k: k.reshape(d_model, heads * head_dim).T)


def _out(hf_key, path, d_model, heads, head_dim):
  """[d_model, heads*head_dim] <-> [heads, head_dim, d_model]."""
  return Tensor(hf_key, path + ("kernel",), (d_model, heads * head_dim),
                lambda w: w.T.reshape(heads, head_dim, d_model),
                lambda k: k.reshape(heads * head_dim, d_model).T)


def _scale(hf_key, path, d):
  return Tensor(hf_key, path + ("scale",), (d,), _identity, _identity)


def _attention_tensors(hf_prefix, path, d_model, heads, kv_heads, head_dim, names):
  q, k, v, o = names
  return [
      _qkv(f"{hf_prefix}.{q}.weight", path + ("query",), d_model, heads, head_dim),
      _qkv(f"{hf_prefix}.{k}.weight", path + ("key",), d_model, kv_heads, head_dim),
      _qkv(f"{hf_prefix}.{v}.weight", path + ("value",), d_model, kv_heads, head_dim),
      _out(f"{hf_prefix}.{o}.weight", path + ("out",), d_model, heads, head_dim),
  ]


def t5_tensors(c: T5Config) -> tuple[list[Tensor], dict[str, str]]:
  """(tensor table, {alias hf key: canonical hf key}) for a T5 config."""
  d, h, dk = c.d_model, c.num_heads, c.d_kv
  mlp_in = ("wi",) if c.mlp_variant == "relu" else ("wi_0", "wi_1")
  out = [Tensor("shared.weight", ("token_embedder", "embedding"), (c.vocab_size, d), _identity, _identity)]
  for stack, n, hf_stack in (("encoder", c.num_encoder_layers, "encoder"),
                             ("decoder", c.num_decoder_layers, "decoder")):
    out.append(Tensor(f"{hf_stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                      (stack, "relpos_bias", "rel_embedding"),
                      (c.relative_attention_num_buckets, h), _transpose, _transpose))
    for i in range(n):
      hf = f"{hf_stack}.block.{i}.layer"
      p = (stack, f"layers_{i}")
      qkvo = ("q", "k", "v", "o")
      if stack == "encoder":
        out += _attention_tensors(f"{hf}.0.SelfAttention", p + ("attention",), d, h, h, dk, qkvo)
        out.append(_scale(f"{hf}.0.layer_norm.weight", p + ("pre_attention_layer_norm",), d))
        mlp_idx = 1
      else:
        out += _attention_tensors(f"{hf}.0.SelfAttention", p + ("self_attention",), d, h, h, dk, qkvo)
        out.append(_scale(f"{hf}.0.layer_norm.weight", p + ("pre_self_attention_layer_norm",), d))
        out += _attention_tensors(f"{hf}.1.EncDecAttention", p + ("encoder_decoder_attention",), d, h, h,
                                  dk, qkvo)
        out.append(_scale(f"{hf}.1.layer_norm.weight", p + ("pre_cross_attention_layer_norm",), d))
        mlp_idx = 2
      for name in mlp_in:
        out.append(_linear(f"{hf}.{mlp_idx}.DenseReluDense.{name}.weight", p + ("mlp", name), d, c.d_ff))
      out.append(_linear(f"{hf}.{mlp_idx}.DenseReluDense.wo.weight", p + ("mlp", "wo"), c.d_ff, d))
      out.append(_scale(f"{hf}.{mlp_idx}.layer_norm.weight", p + ("pre_mlp_layer_norm",), d))
  out.append(_scale("encoder.final_layer_norm.weight", ("encoder", "encoder_norm"), d))
  out.append(_scale("decoder.final_layer_norm.weight", ("decoder", "decoder_norm"), d))
  aliases = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}
  if c.tie_word_embeddings:
    aliases["lm_head.weight"] = "shared.weight"
  else:
    out.append(_linear("lm_head.weight", ("decoder", "logits_dense"), d, c.vocab_size))
  return out, aliases


def llama_tensors(c: DecoderConfig) -> tuple[list[Tensor], dict[str, str]]:
  d = c.d_model
  out = [Tensor("model.embed_tokens.weight", ("token_embedder", "embedding"), (c.vocab_size, d),
                _identity, _identity)]
  for i in range(c.num_layers):
    hf, p = f"model.layers.{i}", (f"layers_{i}",)
    out += _attention_tensors(f"{hf}.self_attn", p + ("self_attention",), d, c.num_heads,
                              c.num_kv_heads, c.kv_dim, ("q_proj", "k_proj", "v_proj", "o_proj"))
    out.append(_linear(f"{hf}.mlp.gate_proj.weight", p + ("mlp", "gate"), d, c.d_ff))
    out.append(_linear(f"{hf}.mlp.up_proj.weight", p + ("mlp", "up"), d, c.d_ff))
    out.append(_linear(f"{hf}.mlp.down_proj.weight", p + ("mlp", "down"), c.d_ff, d))
    out.append(_scale(f"{hf}.input_layernorm.weight", p + ("pre_self_attention_layer_norm",), d))
    out.append(_scale(f"{hf}.post_attention_layernorm.weight", p + ("pre_mlp_layer_norm",), d))
  out.append(_scale("model.norm.weight", ("decoder_norm",), d))
  aliases = {}
  if c.tie_word_embeddings:
    aliases["lm_head.weight"] = "model.embed_tokens.weight"
  else:
    out.append(_linear("lm_head.weight", ("logits_dense",), d, c.vocab_size))
  return out, aliases


def tensor_table(config: ModelConfig):
  return t5_tensors(config) if isinstance(config, T5Config) else llama_tensors(config)


# ---------------------------------------------------------------------------
# reading

def read_config(path: str) -> dict:
  """An HF checkpoint directory's config.json (local or a URL)."""
  cfg_file = fs.join(path, "config.json")
  if not fs.exists(cfg_file):
    raise CheckpointError(f"{path}: missing config.json")
  try:
    cfg = json.loads(fs.read_text(cfg_file))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{cfg_file}: invalid JSON ({e})") from None
  if not isinstance(cfg, dict):
    raise CheckpointError(f"{cfg_file}: expected a JSON object")
  return cfg


def read_weight_map(index: str) -> dict:
  """tensor -> shard file of a sharded checkpoint's index."""
  try:
    weight_map = json.loads(fs.read_text(index)).get("weight_map")
  except (OSError, ValueError, AttributeError) as e:
    raise CheckpointError(f"{index}: invalid JSON index ({e})") from None
  if not isinstance(weight_map, dict):
    raise CheckpointError(f"{index}: no 'weight_map' object")
  return weight_map


def shard_files(path: str) -> tuple[list[str], dict | None]:
  """(safetensors file names, the index's weight map or None) of a checkpoint directory."""
  index = fs.join(path, "model.safetensors.index.json")
  if fs.exists(index):
    weight_map = read_weight_map(index)
    files = sorted(set(weight_map.values()))
  else:
    files = [fs.basename(f) for f in fs.glob(fs.join(path, "*.safetensors"))]
    weight_map = None
  if not files:
    raise CheckpointError(f"{path}: no *.safetensors files (found {sorted(fs.listdir(path))})")
  return files, weight_map


def _read_all_tensors(path: str) -> dict[str, tuple[np.ndarray, str]]:
  index = fs.join(path, "model.safetensors.index.json")
  files, weight_map = shard_files(path)
  tensors = {}
  for name in files:
    file = fs.join(path, name)
    if not fs.exists(file):
      raise CheckpointError(f"{index}: shard {name!r} listed in weight_map does not exist")
    for key, arr in safetensors_io.load(file).items():
      if key in tensors:
        raise CheckpointError(f"{file}: tensor {key!r} also appears in {tensors[key][1]}")
      tensors[key] = (arr, file)
  if weight_map is not None:
    for key, name in weight_map.items():
      if key not in tensors:
        raise CheckpointError(f"{index}: tensor {key!r} is listed for {name} but not stored there")
  return tensors


def load_hf_checkpoint(path: str, dtype: Any = "float32", *, activation_dtype: Any = None,
                       adapters: sites.Adapters = sites.NO_ADAPTERS, scan_layers: bool = False,
                       **model_kwargs):
  """Loads a local HF checkpoint directory; returns (model, params).

  `dtype` is the parameter dtype; activations default to the same dtype.
  `scan_layers` builds the scanned model and stacks the layers' weights.
  `adapters` builds the model with a PEFT method attached (its parameters are
  not in the checkpoint: initialise them separately).
  """
  dtype = jnp.dtype(dtype).name
  activation_dtype = jnp.dtype(activation_dtype or dtype).name
  cfg_file = fs.join(path, "config.json")
  if not fs.isdir(path):
    raise CheckpointError(f"{path}: not a directory")
  hf_cfg = read_config(path)
  config = config_from_hf(hf_cfg, cfg_file, dtype, activation_dtype)
  tensors = _read_all_tensors(path)
  config = _resolve_head_tying(config, tensors)
  table, aliases = tensor_table(config)

  expected = {t.hf_key for t in table}
  missing = sorted(expected - set(tensors))
  if missing:
    raise CheckpointError(f"{path}: missing tensor(s) {missing[:5]}" + (
        f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
  extra = sorted(set(tensors) - expected - set(aliases))
  if extra:
    raise CheckpointError(f"{path}: unexpected tensor(s) {extra[:5]} in {tensors[extra[0]][1]}" + (
        f" and {len(extra) - 5} more" if len(extra) > 5 else ""))
  for alias, canonical in aliases.items():
    if alias in tensors and not np.array_equal(tensors[alias][0], tensors[canonical][0]):
      raise CheckpointError(f"{tensors[alias][1]}: tensor {alias!r} differs from {canonical!r}, "
                            "but the config ties them")

  host = _host_params(config, table, tensors)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x[...], dtype), host,
                                  is_leaf=lambda x: isinstance(x, LazyTensor))
  if scan_layers:
    config = dataclasses.replace(config, scan_layers=True)
    params = layer_layout.stack_layers(params)
  model = build_model(config, adapters, **model_kwargs)
  _check_against_model(model, params, path)
  return model, params


class LazyTensor:
  """A checkpoint tensor in our layout, read from the (memory-mapped) file only
  when sliced, one tensor at a time: placing it into shards
  (`checkpoints.place_like`) never holds the whole backbone in host memory."""

  def __init__(self, array: np.ndarray, to_ours: Callable, shape: tuple):
    self._array, self._to_ours, self.shape = array, to_ours, tuple(shape)
    self._cached = None
    self.dtype = np.dtype(np.float32)

  def __getitem__(self, idx):
    if self._cached is None:  # the shards of one tensor are read one after another
      self._cached = np.asarray(self._to_ours(np.asarray(self._array, np.float32)))
    out = self._cached[idx]
    if idx is Ellipsis or out.shape == self.shape:
      self.release()  # a full read: nothing more will be asked of this tensor
    return out

  def release(self):
    """Drop the transformed copy (after the last shard was read)."""
    self._cached = None


def _host_params(config, table, tensors) -> dict:
  flat = {}
  for t in table:
    arr, file = tensors[t.hf_key]
    if tuple(arr.shape) != t.hf_shape:
      raise CheckpointError(f"{file}: tensor {t.hf_key!r} has shape {tuple(arr.shape)}, "
                            f"config.json implies {t.hf_shape}")
    ours_shape = np.empty(t.hf_shape, np.bool_)  # shape bookkeeping without reading the data
    flat[t.path] = LazyTensor(arr, t.to_ours, t.to_ours(ours_shape).shape)
  return traverse_util.unflatten_dict(flat)


def read_hf_params(path: str) -> dict:
  """The backbone parameters of an HF checkpoint directory, unrolled, as
  `LazyTensor`s (nothing read yet): for loading into a sharded model."""
  cfg_file = fs.join(path, "config.json")
  hf_cfg = read_config(path)
  tensors = _read_all_tensors(path)
  config = _resolve_head_tying(config_from_hf(hf_cfg, cfg_file, "float32", "float32"), tensors)
  table, _ = tensor_table(config)
  missing = sorted({t.hf_key for t in table} - set(tensors))
  if missing:
    raise CheckpointError(f"{path}: missing tensor(s) {missing[:5]}")
  return _host_params(config, table, tensors)


def _resolve_head_tying(config: ModelConfig, tensors) -> ModelConfig:
  """Decide tying from the tensors, as transformers does when loading.

  transformers 5 always declares T5's head tied but unties it when the file
  holds a distinct `lm_head.weight` (every T5 v1.1 / Flan checkpoint); a tied
  Llama config with a distinct head is untied the same way.
  """
  embed_key = "shared.weight" if isinstance(config, T5Config) else "model.embed_tokens.weight"
  head = tensors.get("lm_head.weight")
  embed = tensors.get(embed_key)
  distinct = head is not None and (embed is None or not np.array_equal(head[0], embed[0]))
  if isinstance(config, T5Config):
    return dataclasses.replace(config, tie_word_embeddings=head is None or not distinct)
  if config.tie_word_embeddings and distinct:
    return dataclasses.replace(config, tie_word_embeddings=False)
  return config


def _check_against_model(model: BaseModel, params, where: str):
  """The table and the Flax module must agree on every backbone parameter."""
  shapes = traverse_util.flatten_dict(nn.unbox(model.abstract_variables()["params"]))
  ours = traverse_util.flatten_dict(params)
  backbone = {k: v for k, v in shapes.items() if not is_adapter_path(k)}
  if set(backbone) != set(ours):
    raise CheckpointError(f"{where}: internal mapping mismatch: "
                          f"{sorted(set(backbone) ^ set(ours))[:5]}")
  for k, v in ours.items():
    if tuple(v.shape) != tuple(backbone[k].shape):
      raise CheckpointError(f"{where}: internal shape mismatch at {'/'.join(k)}")


# ---------------------------------------------------------------------------
# writing

def save_hf_checkpoint(model: BaseModel, params, path: str, *, overwrite: bool = False,
                       dtype: Any = None) -> str:
  """Writes `config.json` + `model.safetensors` that transformers loads.

  `params` must be exactly the backbone's parameters (merge or drop adapters
  first). The directory appears complete or not at all.
  """
  config = model.config
  table, _ = tensor_table(config)
  flat = {k: v for k, v in traverse_util.flatten_dict(layer_layout.unstack_layers(params)).items()}
  expected = {t.path for t in table}
  extra = sorted("/".join(k) for k in set(flat) - expected)
  if extra:
    raise CheckpointError(f"params have entries with no HF counterpart (adapters?): {extra[:5]}")
  missing = sorted("/".join(k) for k in expected - set(flat))
  if missing:
    raise CheckpointError(f"params are missing {missing[:5]}")
  out_dtype = np.dtype(jnp.dtype(dtype or config.param_dtype))
  tensors = {}
  for t in table:
    arr = np.asarray(jax.device_get(flat[t.path]), np.float32)
    hf = t.to_hf(arr)
    if tuple(hf.shape) != t.hf_shape:
      raise CheckpointError(f"param {'/'.join(t.path)} has shape {arr.shape}; "
                            f"{t.hf_key} needs {t.hf_shape}")
    tensors[t.hf_key] = np.ascontiguousarray(hf).astype(out_dtype)
  hf_cfg = config_to_hf(config)
  hf_cfg["dtype"] = out_dtype.name

  path = fs.normalize(path)
  if fs.exists(path) and fs.listdir(path) and not overwrite:
    raise CheckpointError(f"{path}: exists and is not empty (pass overwrite=True)")
  if fs.is_uri(path):
    # Object stores have no directory rename: the weights first, config.json
    # last, so a reader (which looks for config.json) never sees half of it.
    fs.makedirs(path)
    safetensors_io.save(fs.join(path, "model.safetensors"), tensors)
    fs.write_text(fs.join(path, "config.json"), json.dumps(hf_cfg, indent=2))
    return path
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  try:
    safetensors_io.save(os.path.join(tmp, "model.safetensors"), tensors)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_cfg, f, indent=2)
    if os.path.exists(path):
      old = tmp + ".old"
      os.rename(path, old)
      os.rename(tmp, path)
      shutil.rmtree(old)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path
