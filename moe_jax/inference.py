"""Decoding for `python -m moe_jax.infer` (see there): inputs, MOELoRA per-task
merging, detokenisation and the gin-configurable `infer`."""
from __future__ import annotations

import json
import os

import gin
import numpy as np

from moe_jax import gin_utils


def _looks_like_file(inputs: str) -> bool:
  return os.sep in inputs or inputs.endswith((".jsonl", ".json", ".txt"))


def load_rows(inputs: str, split: str, max_examples: int) -> list[dict]:
  """[{"inputs": text, "task_id": int}] from a JSONL file or a registered seqio task."""
  if os.path.exists(inputs):
    from moe_jax.data import jsonl
    rows = []
    for line_no, row in jsonl.numbered_rows(inputs, required=("inputs",), same_fields=False):
      if len(rows) == max_examples:
        break
      if not isinstance(row["inputs"], str):
        raise jsonl.DataError(f"{inputs}:{line_no}: field 'inputs' must be a string, got {row['inputs']!r}")
      task_id = row.get("task_id", 0)
      if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id < 0:
        raise jsonl.DataError(f"{inputs}:{line_no}: field 'task_id' must be an integer >= 0, got {task_id!r}")
      rows.append({"inputs": row["inputs"], "task_id": task_id})
    return rows
  if _looks_like_file(inputs):
    raise FileNotFoundError(f"INFER_INPUTS={inputs}: no such file")
  from moe_jax.data import registry
  task = registry.get_task_or_mixture(inputs)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False)
  return [{"inputs": r["inputs_pretokenized"].decode(), "task_id": int(r["task_id"])}
          for r in ds.take(max_examples).as_numpy_iterator()]


def _encode(rows, vocab, inputs_length):
  toks = [list(vocab.encode(r["inputs"]))[: inputs_length - 1] + [1] for r in rows]  # EOS as seqio
  width = max(len(t) for t in toks)
  return np.array([t + [0] * (width - len(t)) for t in toks], np.int32)


def predict_rows(model, params, rows, vocab, *, inputs_length=512, max_decode_length=64, num_beams=1,
                 batch_size=8) -> list[list[int]]:
  """Decoded token ids per row. MOELoRA: one merged plain backbone per task."""
  import jax.numpy as jnp

  from moe_jax.models import build_model
  from moe_jax.peft import MOELoRA
  task_ids = np.array([r.get("task_id", 0) for r in rows], np.int32)
  preds = np.zeros((len(rows), max_decode_length), np.int32)
  if isinstance(model.adapters, MOELoRA):
    plain = build_model(model.config)
    for t in sorted(set(task_ids.tolist())):
      merged = model.adapters.merge_task(params, t)
      idx = np.flatnonzero(task_ids == t)
      for start in range(0, len(idx), batch_size):
        sel = idx[start:start + batch_size]
        enc = _encode([rows[i] for i in sel], vocab, inputs_length)
        preds[sel] = np.asarray(plain.predict_batch(merged, {"encoder_input_tokens": jnp.asarray(enc)},
                                                    max_decode_length=max_decode_length, num_beams=num_beams))
    return preds.tolist()
  for start in range(0, len(rows), batch_size):
    sel = np.arange(start, min(start + batch_size, len(rows)))
    enc = _encode([rows[i] for i in sel], vocab, inputs_length)
    batch = {"encoder_input_tokens": jnp.asarray(enc), "task_id": jnp.asarray(task_ids[sel]),
             "domain_id": jnp.zeros((len(sel),), jnp.int32)}
    preds[sel] = np.asarray(model.predict_batch(params, batch, max_decode_length=max_decode_length,
                                                num_beams=num_beams))
  return preds.tolist()


def detokenize(vocab, ids_: list[int]) -> str:
  cut = ids_[: ids_.index(1)] if 1 in ids_ else ids_
  return vocab.decode([i for i in cut if 1 < i < vocab.vocab_size])


@gin.configurable
def infer(checkpoint_path: str = gin.REQUIRED, model_dir: str = gin.REQUIRED, inputs: str = gin.REQUIRED,
          split: str = "validation", max_examples: int = 64, inputs_length: int = 512,
          max_decode_length: int = 64, num_beams: int = 1, batch_size: int = 8) -> str:
  import jax

  from moe_jax import fs, validation, weights
  s = lambda p: validation.setting("infer", p)  # noqa: E731
  validation.existing_path(s("checkpoint_path"), checkpoint_path)
  validation.output_dir(s("model_dir"), model_dir)
  if not isinstance(inputs, str) or not inputs:
    raise ValueError(f"{s('inputs')} must be a JSONL file or a seqio task name, got {inputs!r}")
  for p, v in (("max_examples", max_examples), ("inputs_length", inputs_length),
               ("max_decode_length", max_decode_length), ("num_beams", num_beams), ("batch_size", batch_size)):
    validation.positive_int(s(p), v)
  from moe_jax.data import vocab as vocab_lib
  import tasks  # noqa: F401  registers the seqio tasks
  model = gin_utils.model()
  if model.config.family == "decoder":
    raise ValueError("infer decodes encoder-decoder (T5) models; decoder-only inputs are not wired up yet")
  rows = load_rows(inputs, split, max_examples)
  if not rows:
    raise ValueError(f"{inputs}: no examples to decode")
  params = model.init(jax.random.key(0))
  params, _, _ = weights.load_initial(model, params, checkpoint_path)
  v = vocab_lib.t5_vocabulary()
  preds = predict_rows(model, params, rows, v, inputs_length=inputs_length,
                       max_decode_length=max_decode_length, num_beams=num_beams, batch_size=batch_size)
  path = fs.join(model_dir, "infer", "predictions.jsonl")
  fs.makedirs(fs.dirname(path))
  fs.write_text(path, "".join(json.dumps({**r, "prediction": detokenize(v, p), "prediction_ids": p}) + "\n"
                              for r, p in zip(rows, preds)))
  print(f"wrote {len(rows)} predictions to {path}")
  return path
