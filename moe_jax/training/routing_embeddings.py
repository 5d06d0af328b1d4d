"""Instruction embeddings for `routing="embedding"` (the MoV paper's routing ablation).

The MoV paper routes on an embedding of the task *instruction* instead of the
token. The released code only passes a precomputed per-example feature
through its hooks (its producer was not released), so this is our choice:

- the instruction of a P3 template is its prompt's literal text with the
  example's fields and Jinja control blocks left out (`p3.instruction_text`):
  the same for every example of a template, different between templates;
- its embedding is the mean over tokens of the run's *frozen* T5 encoder
  (backbone weights only, adapters excluded) - a frozen encoder as in the
  paper's Sentence-T5 set-up, available offline, in the router's own space
  (d_model), and constant for the whole run because the backbone is frozen;
- the data pipeline gives every example its `template_id`; the table
  [num templates, d_model] is computed once per run (all registered
  templates, training and held-out) and cached in MODEL_DIR, and `attach` adds
  `routing_embedding = table[template_id]` to each batch.

Packed rows carry `template_id` per segment, but the embedding router takes
one embedding per row [B, D] (routers.py), so embedding routing trains with
PACK=False.
"""
from __future__ import annotations

import io

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.adapters import is_adapter_path
from moe_jax.data import ids
from moe_jax.models.api import build_model
from moe_jax.utils import fs


CACHE_FILE = "routing_embeddings.npz"


def needed(adapters) -> bool:
  return getattr(adapters, "routing", None) == "embedding"


def _backbone(params):

  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if not is_adapter_path(k)})


def build_table(model, params, *, batch_size: int = 64, max_length: int = 128) -> tuple[list[str], np.ndarray]:
  """(template names in id order, [num templates, d_model] float32 embeddings)."""

  # seqio and TensorFlow load only when this runs
  from moe_jax.data import ids, p3, vocab
  if model.config.family != "t5":
    raise ValueError("routing='embedding' embeds instructions with the frozen T5 encoder; "
                     f"a {model.config.family} backbone has none")
  names = [ids.name_of("template_ids", i) for i in range(len(ids.current()["template_ids"]))]
  if not names:
    raise ValueError("routing='embedding': no prompt templates are registered (import tasks first)")
  v = vocab.t5_vocabulary()
  tokens = np.zeros((len(names), max_length), np.int32)
  for i, name in enumerate(names):
    ids_ = (v.encode(p3.instruction_text(name)) + [1])[:max_length]  # EOS-terminated, as inputs
    tokens[i, :len(ids_)] = ids_
  base = build_model(model.config)  # the backbone alone: adapters never change the table
  backbone = _backbone(params)

  @jax.jit
  def embed(toks):
    encoded = base.module.apply({"params": backbone}, toks, method="encode").astype(jnp.float32)
    m = (toks > 0).astype(jnp.float32)[..., None]
    return jnp.sum(encoded * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
  rows = []
  for start in range(0, len(names), batch_size):
    chunk = tokens[start:start + batch_size]
    padded = np.zeros((batch_size, max_length), np.int32)
    padded[:len(chunk)] = chunk  # one shape: one compilation
    rows.append(np.asarray(embed(padded))[:len(chunk)])
  return names, np.concatenate(rows).astype(np.float32)


def for_run(model, params, model_dir: str, write: bool = True) -> np.ndarray:
  """The run's table: read from MODEL_DIR if it was computed for these
  templates, else computed and saved (atomically)."""
  path = fs.join(model_dir, CACHE_FILE)
  names, table = None, None
  if fs.exists(path):
    with np.load(io.BytesIO(fs.read_bytes(path))) as f:
      names, table = list(f["names"]), f["table"]
  wanted = [ids.name_of("template_ids", i) for i in range(len(ids.current()["template_ids"]))]
  if names != wanted:
    names, table = build_table(model, params)
    if not write:  # another process saves it
      return table
    fs.makedirs(model_dir)
    buf = io.BytesIO()
    np.savez(buf, names=np.asarray(names), table=table)
    fs.write_bytes(path, buf.getvalue())
  return table


def attach(batch: dict, table: np.ndarray) -> dict:
  """The batch with `routing_embedding` [B, d_model] looked up by `template_id`."""
  if "template_id" not in batch:
    raise KeyError("routing='embedding' needs the 'template_id' feature in every batch (PACK=False)")
  return dict(batch, routing_embedding=table[np.asarray(batch["template_id"])])
