"""Decoding for `python -m moe_jax.infer` (see there): inputs, prompts for
either backbone, MoA domains, MOELoRA per-task merging, detokenisation and
the gin-configurable `infer`.

Prompts are tokenised as training tokenises them (the T5 SentencePiece
vocabulary, EOS appended, seqio's `add_eos`), for both backbones: an
encoder-decoder model reads them as `encoder_input_tokens`; a decoder-only
model continues them as the prefix LM it was trained as (`prefix_lm`: the
inputs, EOS, then the targets), so they are its right-padded
`decoder_input_tokens` with `decoder_causal_attention` on the prompt.

Rows name their MoA domain by name (`domain`); see `load_rows`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import gin
import numpy as np

from moe_jax.data import ids, jsonl, user_tasks
from moe_jax.data.jsonl import DataError
from moe_jax.models import build_model
from moe_jax.models.configured import model as configured_model
from moe_jax.training import frozen_source, weights
from moe_jax.utils import fs, validation


EOS = 1  # the T5 vocabulary's, which training appends to every prompt


def _looks_like_file(inputs: str) -> bool:
  return fs.is_uri(inputs) or os.sep in inputs or inputs.endswith((".jsonl", ".json", ".txt"))


def load_rows(inputs: str, split: str, max_examples: int) -> list[dict]:
  """[{"inputs": text, "task_id": int, "domain": name}] from a JSONL file or a
  registered seqio task or mixture ("domain" only where the row has one).

  JSONL lines have "inputs" and optionally "task_id" (the data's task id, as
  in the run's ids.json; default 0) and the MoA domain as "domain" (a name,
  e.g. "sentiment") or "domain_id" (the data's domain id, as in ids.json and
  as seqio rows carry it, not an index into MoA.domains). Seqio rows carry
  their task's domain. Domains are matched to MoA.domains by name, as in
  training."""
  if fs.exists(inputs):
    return _jsonl_rows(inputs, max_examples)
  if _looks_like_file(inputs):
    raise FileNotFoundError(f"INFER_INPUTS={inputs}: no such file")
  return _seqio_rows(inputs, split, max_examples)


def _jsonl_rows(path: str, max_examples: int) -> list[dict]:
  rows = []
  for line_no, row in jsonl.numbered_rows(path, required=("inputs",), same_fields=False):
    if len(rows) == max_examples:
      break
    where = f"{path}:{line_no}"
    if not isinstance(row["inputs"], str):
      raise jsonl.DataError(f"{where}: field 'inputs' must be a string, got {row['inputs']!r}")
    task_id = row.get("task_id", 0)
    if not _is_id(task_id):
      raise jsonl.DataError(f"{where}: field 'task_id' must be an integer >= 0, got {task_id!r}")
    out = {"inputs": row["inputs"], "task_id": task_id}
    domain = _jsonl_domain(where, row)
    if domain is not None:
      out["domain"] = domain
    rows.append(out)
  return rows


def _is_id(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _jsonl_domain(where: str, row: dict) -> Optional[str]:
  """The row's domain name from "domain" and/or "domain_id" (null: none)."""
  name, data_id = row.get("domain"), row.get("domain_id")
  if name is not None and (not isinstance(name, str) or not name):
    raise DataError(f"{where}: field 'domain' must be a domain name (a non-empty string), got {name!r}")
  if data_id is None:
    return name
  known = ids.current()["domain_ids"]
  if not _is_id(data_id) or data_id not in known.values():
    raise DataError(f"{where}: field 'domain_id' must be a data domain id (the run's ids.json: {known}), "
                    f"got {data_id!r}; or name the domain in 'domain'")
  by_id = ids.name_of("domain_ids", data_id)
  if name is not None and name != by_id:
    raise DataError(f"{where}: field 'domain' ({name!r}) and 'domain_id' ({data_id}, which is {by_id!r}) "
                    "name different domains")
  return by_id


def _seqio_rows(name: str, split: str, max_examples: int) -> list[dict]:
  # seqio and TensorFlow load only when this runs
  from moe_jax.data import ids, registry
  source = registry.get_task_or_mixture(name)
  extra = {}
  if hasattr(source, "tasks"):  # a mixture keeps only its output features unless told
    extra["passthrough_features"] = ("inputs_pretokenized", "task_id", "domain_id")
  ds = source.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False, **extra)
  return [{"inputs": r["inputs_pretokenized"].decode(), "task_id": int(r["task_id"]),
           "domain": ids.name_of("domain_ids", int(r["domain_id"]))}
          for r in ds.take(max_examples).as_numpy_iterator()]


@dataclasses.dataclass(frozen=True)
class Prompts:
  """Rows made ready for decoding: token ids (unpadded) and per-row features."""
  tokens: list[list[int]]
  task_ids: np.ndarray  # [N] int32
  features: dict  # per-row batch features the method reads from the rows (e.g. MoA's domain_id)


def tokenize(rows, vocab, inputs_length: int) -> list[list[int]]:
  """Each row's "inputs" as training tokenises them: cut to `inputs_length`
  keeping a final EOS (seqio's append_eos_after_trim)."""
  return [list(vocab.encode(r["inputs"]))[: inputs_length - 1] + [EOS] for r in rows]


def prepare(model, rows, vocab, inputs_length: int) -> Prompts:
  """Tokens and features, checked against the model (before any weights are read)."""
  tokens = tokenize(rows, vocab, inputs_length)
  _check_vocabulary(model.config, vocab, tokens)
  task_ids = np.array([r.get("task_id", 0) for r in rows], np.int32)
  return Prompts(tokens, task_ids, model.adapters.row_features(rows))


def _check_vocabulary(config, vocab, tokens) -> None:
  # An id past the embedding table does not fail: jnp.take gives its embedding as NaN.
  for i, toks in enumerate(tokens):
    if max(toks) >= config.vocab_size:
      raise ValueError(f"row {i + 1}: token id {max(toks)} is outside the model's vocabulary of "
                       f"{config.vocab_size} ids; prompts use the T5 vocabulary ({vocab.vocab_size} ids), as "
                       "training does (e.g. --gin.model.config_overrides=\"{'vocab_size': 32128}\")")


def _prompt_batch(config, tokens) -> dict:
  """Right-padded prompts as the backbone reads them."""
  width = max(len(t) for t in tokens)
  padded = np.array([t + [0] * (width - len(t)) for t in tokens], np.int32)
  if config.family == "decoder":
    lengths = np.array([len(t) for t in tokens])
    return {"decoder_input_tokens": padded,
            "decoder_causal_attention": (np.arange(width)[None] < lengths[:, None]).astype(np.int32)}
  return {"encoder_input_tokens": padded}


def decode(model, params, prompts: Prompts, *, max_decode_length=64, num_beams=1, batch_size=8) -> list[list[int]]:
  """Decoded token ids per row. MOELoRA: one merged plain backbone per task."""
  if model.adapters.merges_per_task:
    return _decode_merged(model, params, prompts, max_decode_length=max_decode_length, num_beams=num_beams,
                          batch_size=batch_size)
  preds = np.zeros((len(prompts.tokens), max_decode_length), np.int32)
  for start in range(0, len(prompts.tokens), batch_size):
    sel = np.arange(start, min(start + batch_size, len(prompts.tokens)))
    batch = dict(_prompt_batch(model.config, [prompts.tokens[i] for i in sel]), task_id=prompts.task_ids[sel])
    batch.update({k: v[sel] for k, v in prompts.features.items()})
    batch = model.adapters.decode_batch(model, params, batch)
    preds[sel] = np.asarray(model.predict_batch(params, batch, max_decode_length=max_decode_length,
                                                num_beams=num_beams))
  return preds.tolist()


def _decode_merged(model, params, prompts: Prompts, *, max_decode_length, num_beams, batch_size):
  plain = build_model(model.config)
  preds = np.zeros((len(prompts.tokens), max_decode_length), np.int32)
  for t in sorted(set(prompts.task_ids.tolist())):
    merged = model.adapters.merge_task(params, t)
    idx = np.flatnonzero(prompts.task_ids == t)
    for start in range(0, len(idx), batch_size):
      sel = idx[start:start + batch_size]
      batch = _prompt_batch(model.config, [prompts.tokens[i] for i in sel])
      preds[sel] = np.asarray(plain.predict_batch(merged, batch, max_decode_length=max_decode_length,
                                                  num_beams=num_beams))
  return preds.tolist()


def predict_rows(model, params, rows, vocab, *, inputs_length=512, max_decode_length=64, num_beams=1,
                 batch_size=8) -> list[list[int]]:
  """Decoded token ids per row (`prepare`, then `decode`)."""
  return decode(model, params, prepare(model, rows, vocab, inputs_length), max_decode_length=max_decode_length,
                num_beams=num_beams, batch_size=batch_size)


def detokenize(vocab, ids_: list[int]) -> str:
  cut = ids_[: ids_.index(EOS)] if EOS in ids_ else ids_
  return vocab.decode([i for i in cut if EOS < i < vocab.vocab_size])


@gin.configurable
def infer(checkpoint_path: str = gin.REQUIRED, model_dir: str = gin.REQUIRED, inputs: str = gin.REQUIRED,
          split: str = "validation", max_examples: int = 64, inputs_length: int = 512,
          max_decode_length: int = 64, num_beams: int = 1, batch_size: int = 8) -> str:
  s = lambda p: validation.setting("infer", p)  # noqa: E731
  validation.existing_path(s("checkpoint_path"), checkpoint_path)
  validation.output_dir(s("model_dir"), model_dir)
  if not isinstance(inputs, str) or not inputs:
    raise ValueError(f"{s('inputs')} must be a JSONL file or a seqio task name, got {inputs!r}")
  for p, v in (("max_examples", max_examples), ("inputs_length", inputs_length),
               ("max_decode_length", max_decode_length), ("num_beams", num_beams), ("batch_size", batch_size)):
    validation.positive_int(s(p), v)
  # seqio and TensorFlow load only when this runs
  from moe_jax.data import vocab as vocab_lib
  user_tasks.register_tasks()  # the seqio tasks (and the data's domain ids), the user's too
  model = configured_model()
  rows = load_rows(inputs, split, max_examples)
  if not rows:
    raise ValueError(f"{inputs}: no examples to decode")
  v = vocab_lib.t5_vocabulary()
  prompts = prepare(model, rows, v, inputs_length)
  params = frozen_source.init_params(model, 0)  # the trainer's init program
  params, _, _ = weights.load_initial(model, params, checkpoint_path)
  preds = decode(model, params, prompts, max_decode_length=max_decode_length, num_beams=num_beams,
                 batch_size=batch_size)
  path = fs.join(model_dir, "infer", "predictions.jsonl")
  fs.makedirs(fs.dirname(path))
  fs.write_text(path, "".join(json.dumps({**r, "prediction": detokenize(v, p), "prediction_ids": p}) + "\n"
                              for r, p in zip(rows, preds)))
  print(f"wrote {len(rows)} predictions to {path}")
  return path
