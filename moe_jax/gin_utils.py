"""t5x-style command-line configuration: --gin_file (repeatable), --gin.KEY=VALUE,
--gin_search_paths; and the gin-configurable pieces the configs bind."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Optional

from moe_jax.utils import quiet  # noqa: F401  before TensorFlow is imported

import gin

from moe_jax import errors
import moe_jax.evaluation.evaluator  # noqa: F401  registers ZeroShotEvaluator and evaluate with gin
from moe_jax.models.configured import model  # noqa: F401  the run's model, bound by the gin files
from moe_jax.peft import register_with_gin
from moe_jax.training import preemption
import moe_jax.training.trainer  # noqa: F401  registers train with gin
from moe_jax.utils import fs, paths, validation

REPO_GIN_DIR = os.path.join(paths.REPO_ROOT, "gin_configs")


@gin.configurable
def data_dir(path: Optional[str] = None) -> str:
  """DATA_DIR macro -> the data directory every task reads (env var otherwise).
  A local one that does not exist is refused up front: found later, inside a
  tf.data function, it reads as a missing dataset or an unknown task."""
  setting = "DATA_DIR" if path else "MOE_JAX_DATA_DIR"
  if path:
    os.environ["MOE_JAX_DATA_DIR"] = fs.normalize(path)
  chosen = os.environ.get("MOE_JAX_DATA_DIR")
  if chosen and not fs.is_uri(chosen) and not os.path.isdir(chosen):  # buckets are checked when read
    raise FileNotFoundError(f"{setting}={chosen}: no such directory" + (
        "" if not os.path.exists(chosen) else " (it is a file)"))
  return paths.data_dir()


@gin.configurable
def vocabulary(path: Optional[str] = None) -> None:
  """VOCABULARY macro -> the environment every reader sees (as DATA_DIR does);
  nothing is read here: the planner configures runs whose buckets it cannot
  reach (moe_jax/data/vocab.py reads it)."""
  if path:
    os.environ[paths.VOCAB_ENV] = fs.normalize(path)


def _as_binding(flag: str) -> str:
  key, _, value = flag.partition("=")
  if not _:
    raise ValueError(f"--gin.{flag}: expected --gin.KEY=VALUE")
  v = value.strip()
  # Bare paths and words are strings (t5x would need them quoted).
  if v and v[0] not in "\"'[({@%-0123456789" and v not in ("True", "False", "None"):
    v = repr(v)
  return f"{key} = {v}"


def parse_flags(argv):
  parser = argparse.ArgumentParser(allow_abbrev=False)
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--gin_search_paths", default="")
  args, rest = parser.parse_known_args(argv)
  bindings, unknown = [], []
  for a in rest:
    if a.startswith("--gin."):
      bindings.append(_as_binding(a[len("--gin."):]))
    else:
      unknown.append(a)
  if unknown:
    raise ValueError(f"unknown flag(s) {unknown}; use --gin_file, --gin.KEY=VALUE, --gin_search_paths")
  return args.gin_file, bindings, [p for p in args.gin_search_paths.split(",") if p]


def _is_remote_file(path: str) -> bool:
  return fs.is_uri(path) and fs.isfile(path)


def _never_raises(check):
  def safe(path):
    try:
      return check(path)
    except TypeError:
      return False
  return safe


# Gin opens local files itself; gin files and search paths on gs:// (as t5x
# allows) are read through the path layer.
gin.config.register_file_reader(fs.open_file, _is_remote_file)
# Gin's reader of gin files inside Python packages raises TypeError for a
# namespace package such as gin_configs/ (no __init__.py) when the checkout
# is on sys.path but not the working directory: a miss, not an error.
gin.config._FILE_READERS[:] = [  # pylint: disable=protected-access
    (reader, _never_raises(check)) for reader, check in gin.config._FILE_READERS]  # pylint: disable=protected-access


def _located(name: str, search) -> str:
  if os.path.isabs(name) or fs.is_uri(name):
    return name
  return next((fs.join(d, name) if d else name for d in ["", *search] if fs.isfile(fs.join(d, name) if d else name)),
              name)


def _find_gin_file(name: str, search) -> None:
  """A missing --gin_file is named with the places searched (gin would log each miss)."""
  if os.path.isabs(name) or fs.is_uri(name):
    found = fs.isfile(name)
  else:
    found = any(fs.isfile(fs.join(d, name) if d else name) for d in ["", *search])
  if not found:
    raise FileNotFoundError(f"--gin_file={name}: not found (searched {', '.join(['.', *search])})")


def configure(argv) -> None:
  """Parses flags and gin files; raises ValueError naming a bad file, binding or
  unused macro (a macro set on the command line that no configuration reads)."""
  register_with_gin()
  gin.clear_config()
  files, bindings, search = parse_flags(argv)
  search = list(dict.fromkeys(search + [REPO_GIN_DIR, paths.REPO_ROOT, os.getcwd()]))
  for p in search:
    if p not in gin.config._LOCATION_PREFIXES:  # pylint: disable=protected-access
      gin.add_config_file_search_path(p)
  if not files:
    raise ValueError("no --gin_file given")
  for f in files:
    _find_gin_file(f, search)
  paths.GIN_FILES[:] = [_located(f, search) for f in files]
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, KeyError, IOError, SyntaxError) as e:
    raise ValueError(f"gin configuration error: {e}") from None
  validation.check_macros(bindings)
  data_dir()
  vocabulary()


def exit_process(code: int) -> None:
  """Exit without interpreter teardown: tf.data generator threads can deadlock
  while being finalised after an error (checkpoints are already flushed)."""
  sys.stdout.flush()
  sys.stderr.flush()
  if code in (0, preemption.EXIT_CODE):  # every process ends here together
    _leave_distributed()
  os._exit(code)


def _leave_distributed() -> None:
  """Under jax.distributed, wait at the shutdown barrier before exiting: the
  coordination service lives in process 0, and a process still finishing when
  it vanishes is aborted by its error poller (SIGABRT, "Failed to send RPC to
  coordination service"). Not on a failure exit, where the others may never
  arrive."""
  jax = sys.modules.get("jax")
  if jax is not None and jax.distributed.is_initialized():
    jax.distributed.shutdown()


def one_line(message) -> str:
  """A message as one line (gin's errors quote the offending binding on more)."""
  lines = [l.strip() for l in str(message).splitlines() if l.strip()]
  # gin appends where the error was raised ("In call to configurable 'train' (<function ...>)").
  return " | ".join(l for l in lines if not l.startswith("In call to configurable"))


def error_message(e: BaseException) -> str:
  if isinstance(e, KeyError) and e.args:
    return one_line(e.args[0])  # str(KeyError) would add quotes
  if isinstance(e, OSError) and e.filename and e.strerror:
    return f"{e.filename}: {e.strerror}"
  return one_line(e)


# Each gin entry point's run file: where its macros and their defaults live.
RUN_FILES = {"moe_jax.train": "runs/finetune.gin", "moe_jax.plan": "runs/finetune.gin",
             "moe_jax.preflight": "runs/finetune.gin", "moe_jax.eval": "runs/eval.gin",
             "moe_jax.infer": "runs/infer.gin", "moe_jax.export": "runs/export.gin"}


def _entry_name(main_fn) -> str:
  module = sys.modules.get(main_fn.__module__)
  spec = getattr(module, "__spec__", None)  # `python -m` runs the module as __main__
  return spec.name if spec is not None else main_fn.__module__


def macro_table(gin_file: str) -> list[tuple[str, str, str]]:
  """(macro, default, what the comment above it says) for each ALL_CAPS macro
  the run file defines, in its order."""
  out, comment = [], []
  for line in fs.read_text(gin_file).splitlines():
    stripped = line.strip()
    if stripped.startswith("#"):
      comment.append(stripped.lstrip("# ").strip())
      continue
    name, eq, value = stripped.partition("=")
    name = name.strip()
    if eq and name.isupper() and name.replace("_", "").isalnum():
      value, _, trailing = value.partition("  #")
      value = value.strip()
      default = "(required)" if value == "%gin.REQUIRED" else value
      out.append((name, default, " ".join([*comment, trailing.strip()]).strip()))
    comment = [] if not stripped.startswith("#") else comment
  return out


def help_text(main_fn) -> str:
  """An entry point's --help: its usage and example (the module docstring),
  then every macro of its run file with the default and what it does."""
  name = _entry_name(main_fn)
  doc = (sys.modules[main_fn.__module__].__doc__ or "").strip()
  lines = [doc, "", "Flags: --gin_file=FILE (repeatable; searched in gin_configs/, the checkout and the working "
           "directory), --gin.NAME=VALUE (a macro or a configurable's parameter), --gin_search_paths=DIR,DIR."]
  run_file = RUN_FILES.get(name)
  if run_file:
    macros = macro_table(os.path.join(REPO_GIN_DIR, run_file))
    width = max(len(m) for m, _, _ in macros)
    lines += ["", f"Macros (defaults from gin_configs/{run_file}; a config such as gin_configs/demo.gin may set "
              "more of them):"]
    for macro, default, what in macros:
      lines.append(f"  {macro:<{width}}  = {default}" + (f"    # {what}" if what else ""))
  return "\n".join(lines)


def run(main_fn, argv=None) -> int:
  """Runs an entry point; configuration and input errors print one line
  `error: ...` and give status 2, divergence 1, a stop signal (SIGTERM,
  SIGINT) one line and `preemption.EXIT_CODE` (75), anything else a
  traceback and 1."""
  argv = sys.argv[1:] if argv is None else argv
  if "--help" in argv or "-h" in argv:
    print(help_text(main_fn))
    return 0
  quiet.import_tensorflow()
  try:
    with preemption.raising():  # the trainer installs its own, saving handlers
      configure(argv)
      main_fn()
  except preemption.Stopped as e:
    print(one_line(e), file=sys.stderr, flush=True)
    return preemption.EXIT_CODE
  except (errors.MoeJaxError, ValueError, KeyError, OSError) as e:  # one line; the status by kind
    print(f"error: {error_message(e)}", file=sys.stderr)
    return errors.exit_code(e)
  except Exception as e:  # tf.data wraps our DataError in its own exception types
    if "DataError" in str(e):
      msg = next(l for l in str(e).splitlines() if "DataError" in l)
      print(f"error: {msg.split('DataError: ', 1)[-1]}", file=sys.stderr)
      return 2
    traceback.print_exc()
    return 1
  return 0
