"""python -m moe_jax.preflight --gin_file=... --gin.KEY=VALUE ...   (the train command's flags)

Reads, from where it runs, every input a training run names, before the run
books its chips: launch/tpu_pod.sh runs it on worker 0 of a new slice (a
clean VM that has the repository and whatever the buckets hold). It checks

  data        the mixture's datasets in the configured DATA_SOURCE / DATA_DIR
              (the `moe_jax.data.inspect` table: which the source lacks);
  vocabulary  VOCABULARY (or the kit's / the public bucket's) loads;
  checkpoint  INITIAL_CHECKPOINT_PATH's metadata reads (HF: config.json and
              every shard's header; T5X: the msgpack tree and step; a moe-jax
              run: the step and parameter shapes), no weights;
  MODEL_DIR   can be written (a probe file, removed again).

Prints one line per check; exit 0 when every input is there, 2 with one
`error: ...` line naming the first that is not (as the entry points do).
"""
from __future__ import annotations

import sys
import uuid

import gin

from moe_jax import gin_utils
from moe_jax.data import inspect, sources, user_tasks
from moe_jax.models import hf, safetensors_io, t5x
from moe_jax.training import checkpoints
from moe_jax.utils import fs, paths


def _macro(name: str, default=None):
  try:
    return gin.query_parameter(f"%{name}")
  except ValueError:
    return default


def check_data(mixture: str) -> str:
  user_tasks.register_tasks()  # reads no data
  sources.data_source()
  summary = inspect.report(mixture)
  missing = summary["missing"]
  if missing and (not sources.skip_unavailable() or len(missing) == summary["datasets"]):
    hint = "" if sources.skip_unavailable() else "; SKIP_UNAVAILABLE=True trains on the rest"
    raise FileNotFoundError(f"data: {sources.current()} (DATA_DIR {gin_utils.data_dir()}) lacks "
                            f"{len(missing)} of {summary['datasets']} datasets of {mixture}: "
                            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}{hint}")
  return (f"data: {summary['available']} of {summary['datasets']} datasets of {mixture} available "
          f"({summary['tasks']} tasks) from {sources.current()}")


def check_vocabulary() -> str:
  # seqio and TensorFlow load only when this runs
  from moe_jax.data import vocab
  v = vocab.t5_vocabulary()
  return f"vocabulary: {paths.vocabulary_path()} ({v.vocab_size} ids)"


def check_checkpoint(path: str) -> str:
  if fs.exists(fs.join(path, "config.json")):
    config = hf.read_config(path)
    shards, _ = hf.shard_files(path)
    tensors = sum(len(safetensors_io.read_header(fs.join(path, s))) - 1 for s in shards)
    return (f"checkpoint: {path}: Hugging Face {config.get('model_type', '?')}, d_model "
            f"{config.get('d_model', config.get('hidden_size', '?'))}, {tensors} tensors in {len(shards)} file(s)")
  if t5x.is_t5x_checkpoint(path):
    ckpt = t5x.T5XCheckpoint(path)
    return f"checkpoint: {ckpt.file}: T5X, step {ckpt.step}, {len(ckpt.target)} parameter arrays"
  step_dir = checkpoints.step_dir_of(path)
  shapes = checkpoints.param_shapes(step_dir)
  return f"checkpoint: {step_dir}: moe-jax, {len(shapes)} parameters"


def check_model_dir(model_dir: str) -> str:
  probe = fs.join(model_dir, f".preflight-{uuid.uuid4().hex[:8]}")
  fs.makedirs(model_dir)
  try:
    fs.write_text(probe, "ok")
  except OSError as e:
    raise OSError(e.errno, f"MODEL_DIR={model_dir} cannot be written ({e.strerror})") from None
  fs.remove(probe)
  return f"MODEL_DIR: {model_dir} is writable"


def main() -> None:
  lines = [check_data(_macro("MIXTURE_OR_TASK_NAME", gin.REQUIRED)), check_vocabulary()]
  initial = _macro("INITIAL_CHECKPOINT_PATH")
  lines.append(check_checkpoint(initial) if initial else "checkpoint: none (INITIAL_CHECKPOINT_PATH unset: a seeded random backbone)")
  model_dir = _macro("MODEL_DIR")
  if isinstance(model_dir, str):
    lines.append(check_model_dir(model_dir))
  for line in lines:
    print(f"preflight: {line}", flush=True)
  print("preflight: every input can be read", flush=True)


if __name__ == "__main__":
  gin_utils.exit_process(gin_utils.run(main))
