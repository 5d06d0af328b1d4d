"""Running the gin entry points in the test process (no interpreter start-up,
no TF/JAX import per case) with the process state they touch restored after."""
import contextlib
import os

import gin

from moe_jax import gin_utils

# A 4-step MoV run on one small task: batch 4, lengths 32/8, checkpoints at 2 and 4.
SMALL_TRAIN = ["--gin_file=gin_configs/demo.gin",
               "--gin.MIXTURE_OR_TASK_NAME=rotten_tomatoes_Movie_Expressed_Sentiment",
               "--gin.EVALUATOR=None", "--gin.BATCH_SIZE=4",
               "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
               "--gin.CHECKPOINT_PERIOD=2", "--gin.LOG_PERIOD=1", "--gin.TRAIN_STEPS=4"]
MODEL_FILES = ["--gin_file=gin_configs/models/t5_1_1_tiny.gin", "--gin_file=gin_configs/methods/mov.gin"]


@contextlib.contextmanager
def restored_state():
  """gin bindings and the environment (DATA_DIR etc. are set through it) as before."""
  env = dict(os.environ)
  cwd = os.getcwd()
  try:
    yield
  finally:
    gin.clear_config()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)


def entry_main(name: str):
  import importlib
  return importlib.import_module(f"moe_jax.{name}").main


def run_entry(name: str, argv) -> int:
  """`python -m moe_jax.<name> argv` in this process: its exit status."""
  with restored_state():
    return gin_utils.run(entry_main(name), [str(a) for a in argv])


# model_dir -> (step, parameters) the trainer handed its evaluator after the last step.
FINAL_PARAMS = {}


@gin.configurable
def capture_final_params(model, params, step, *, run=gin.REQUIRED):
  """An evaluator that keeps the run's full parameters (trainable and frozen) as the
  trainer ends with them, whatever its checkpoints store."""
  del model
  import jax
  FINAL_PARAMS[run] = (step, jax.device_get(params))


def train_in_process(model_dir, *extra, capture: bool = False) -> int:
  """The small run in `model_dir`; `capture`: its final parameters into FINAL_PARAMS."""
  if capture:
    extra = ("--gin.EVALUATOR=@capture_final_params", f"--gin.capture_final_params.run='{model_dir}'",
             *extra)
  return run_entry("train", [*SMALL_TRAIN, f"--gin.MODEL_DIR={model_dir}", *extra])


def snapshot(path):
  """Everything under `path` (names, sizes, modification times); None if absent."""
  path = str(path)
  if not os.path.exists(path):
    return None
  if not os.path.isdir(path):
    st = os.stat(path)
    return ("file", st.st_size, st.st_mtime_ns)
  out = []
  for root, dirs, files in os.walk(path):
    for name in sorted(dirs + files):
      p = os.path.join(root, name)
      st = os.lstat(p)
      out.append((os.path.relpath(p, path), st.st_size if name in files else None, st.st_mtime_ns))
  return sorted(out)


def final_state(run_dir):
  """The newest checkpoint's full state (parameters, optimizer state, counters)."""
  from moe_jax import checkpoints
  return checkpoints.load_state(os.path.join(str(run_dir), "checkpoints"))
