"""python -m moe_jax.infer --gin_file=gin_configs/runs/infer.gin --gin_file=<model/method .gin> \\
    --gin.CHECKPOINT_PATH=... --gin.MODEL_DIR=<out> --gin.INFER_INPUTS=<file.jsonl or seqio task>

Decodes with `predict_batch` (greedy or beam). Inputs: a JSONL file whose
lines have "inputs" (and optionally "task_id"), or a seqio task's split.
MOELoRA runs are merged per task first (zero-overhead inference); MiLoRA
routes once per prompt (its decision is cached with the KV cache). Writes
MODEL_DIR/infer/predictions.jsonl atomically.
"""
import json
import os
import sys

import gin
import numpy as np

from moe_jax import gin_utils


def _jsonl_inputs(path):
  from moe_jax.data import jsonl
  for row in jsonl.read_rows(path, required=("inputs",)):
    yield row


@gin.configurable
def infer(checkpoint_path: str = gin.REQUIRED, model_dir: str = gin.REQUIRED, inputs: str = gin.REQUIRED,
          split: str = "validation", max_examples: int = 64, inputs_length: int = 512,
          max_decode_length: int = 64, num_beams: int = 1, batch_size: int = 8):
  import jax
  import jax.numpy as jnp
  from moe_jax import trainer
  from moe_jax.data import registry, vocab
  from moe_jax.models import build_model
  from moe_jax.peft import MOELoRA
  import tasks  # noqa: F401
  model = gin_utils.model()
  params = model.init(jax.random.key(0))
  params, _ = trainer._load_initial(model, params, checkpoint_path)
  v = vocab.t5_vocabulary()
  if os.path.exists(inputs):
    rows = [dict(r) for _, r in zip(range(max_examples), _jsonl_inputs(inputs))]
  else:
    task = registry.get_task_or_mixture(inputs)
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False)
    rows = [{"inputs": r["inputs_pretokenized"].decode(), "task_id": int(r["task_id"])}
            for r in ds.take(max_examples).as_numpy_iterator()]
  merged = {}
  if isinstance(model.adapters, MOELoRA):  # one plain backbone per task
    plain = build_model(model.config)
    for t in sorted({int(r.get("task_id", 0)) for r in rows}):
      merged[t] = model.adapters.merge_task(params, t)
  out = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    toks = [list(v.encode(r["inputs"]))[: inputs_length - 1] + [1] for r in chunk]
    width = max(len(t) for t in toks)
    enc = np.array([t + [0] * (width - len(t)) for t in toks], np.int32)
    task_ids = np.array([int(r.get("task_id", 0)) for r in chunk], np.int32)
    if merged:
      preds = np.zeros((len(chunk), max_decode_length), np.int32)
      for t, p in merged.items():
        rows_t = task_ids == t
        if rows_t.any():
          preds[rows_t] = np.asarray(plain.predict_batch(p, {"encoder_input_tokens": jnp.asarray(enc[rows_t])},
                                                         max_decode_length=max_decode_length, num_beams=num_beams))
    else:
      batch = {"encoder_input_tokens": jnp.asarray(enc), "task_id": jnp.asarray(task_ids),
               "domain_id": jnp.zeros_like(jnp.asarray(task_ids))}
      preds = np.asarray(model.predict_batch(params, batch, max_decode_length=max_decode_length,
                                             num_beams=num_beams))
    for r, p in zip(chunk, preds):
      ids_ = [int(x) for x in p]
      cut = ids_[: ids_.index(1)] if 1 in ids_ else ids_
      out.append({"inputs": r["inputs"], "prediction": v.decode([i for i in cut if 1 < i < v.vocab_size]),
                  "prediction_ids": ids_})
  path = os.path.join(model_dir, "infer", "predictions.jsonl")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    f.writelines(json.dumps(o) + "\n" for o in out)
  os.replace(path + ".tmp", path)
  print(f"wrote {len(out)} predictions to {path}")


def main() -> None:
  infer()


if __name__ == "__main__":
  gin_utils.exit_process(gin_utils.run(main))
