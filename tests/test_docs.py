"""The front door cannot rot: README.md stays short, every relative link in
README.md and docs/ resolves, and every shell command they show is checked
against the code, and run where a CPU can run it.

Every ```bash block carries a marker on the line above it:

  <!-- docs-commands: run [ENTRY: FLAGS | ENTRY: FLAGS ...] -->
      Runs on a CPU: this test runs each command at tiny size, in order, in one
      temporary working directory per page (so a later block finds the run an
      earlier one wrote), and adds the marker's FLAGS to the command whose
      entry point is ENTRY (`make demo`, `train`, `eval`, `zero_shot`, ...).
      `python -m moe_jax.X` runs in this process with the same argv; `make T`
      runs in the repository with its run directory (DEMO_DIR) moved into the
      temporary directory. Each must exit 0, and every output directory it names
      (MODEL_DIR, EXPORT_DIR, --output_dir) must then hold files.
  <!-- docs-commands: run-slow ... -->  the same, in `make test-all` only.
  <!-- docs-commands: parse -->
      Needs a pod, a bucket, a GPU or real weights (or is `make test` itself):
      parsed, not run. `python -m moe_jax.X` must name a module that exists; for
      the gin entry points every --gin_file is found and every --gin.MACRO is
      read by some configuration; `launch/*.sh` must exist and its train flags
      (after `--`) configure the same way; `make T` must be a Makefile target.
  <!-- docs-commands: tested-by PATH -->
      Run at tiny size by the test file PATH (docs/own_tasks.md's worked
      example: tests/data/test_user_tasks.py); parsed here as well.
  <!-- docs-commands: synopsis -->
      A usage summary with placeholders (`...`, `[--flag]`): the module and the
      gin files it names must exist.
  <!-- docs-commands: external -->
      Other tools, or the network (`gsutil`, `huggingface-cli`, HF downloads):
      shown for the reader, checked by nobody here.
"""
import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys

import pytest

from moe_jax import gin_utils, paths, validation
from tests.inprocess import restored_state

REPO = paths.REPO_ROOT
PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs"))
                               if f.endswith(".md"))
GIN_ENTRIES = ("train", "eval", "infer", "export", "plan")


def _text(page):
  return open(os.path.join(REPO, page)).read()


KINDS = ("run", "run-slow", "parse", "tested-by", "synopsis", "external")


def _blocks(page):
  """(kind, argument, [command lines]) for every bash block, continuations joined;
  kind is None for a block without a marker."""
  out = []
  for block in re.finditer(r"(?:<!-- docs-commands: ([\w-]+) ?([^\n]*?)-->\n)?```(?:bash|sh)\n(.*?)```", _text(page),
                           re.S):
    joined = re.sub(r"\\\n\s*", " ", block.group(3))
    lines = [line.split("  #")[0].strip() for line in joined.splitlines()]
    out.append((block.group(1), (block.group(2) or "").strip(), [l for l in lines if l and not l.startswith("#")]))
  return out


def _commands(page):
  """(kind, command line) for every line of every bash block."""
  return [(kind, line) for kind, _, lines in _blocks(page) for line in lines]


def test_the_readme_is_short():
  assert len(_text("README.md").splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
  base = os.path.dirname(os.path.join(REPO, page))
  broken = [target for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _text(page))
            if not re.match(r"[a-z]+://", target) and not os.path.exists(os.path.join(base, target))]
  assert not broken, broken


def _check_gin(args):
  with restored_state():
    files, bindings, _ = gin_utils.parse_flags(args)
    gin_utils.configure(args)  # every --gin_file found, bindings parse
    validation.check_macros(bindings)  # every --gin.MACRO read by some configuration
    return files


def check_command(line: str) -> None:
  words = shlex.split(line)
  if words[0] == "make":
    targets = re.findall(r"^([\w-]+):", _text("Makefile"), re.M)
    assert words[1] in targets, f"no Makefile target {words[1]!r}"
    return
  if words[0].startswith("launch/"):
    assert os.path.exists(os.path.join(REPO, words[0])), words[0]
    _check_gin(words[words.index("--") + 1:])
    return
  if words[0].endswith("python") and words[1] == "-m":
    module = words[2]
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    entry = module.rsplit(".", 1)[-1]
    if module.startswith("moe_jax.") and entry in GIN_ENTRIES:
      args = [w for w in words[3:] if not w.startswith(("--topology=", "--devices="))]
      if not any(a.startswith("--gin_file") for a in args):
        pytest.fail(f"{line}: no --gin_file")
      _check_gin(args)
    return
  if words[0].startswith(("PYTHONPATH=", "tensorboard", "pip", "git", "cd", "export")):
    return
  pytest.fail(f"unchecked command kind: {line}")


@pytest.mark.parametrize("page", PAGES)
def test_every_shell_block_says_how_it_is_checked(page):
  for kind, arg, lines in _blocks(page):
    assert kind in KINDS, f"{page}: a bash block without <!-- docs-commands: {'|'.join(KINDS)} -->: {lines[:1]}"
    if kind == "tested-by":
      assert os.path.isfile(os.path.join(REPO, arg)), f"{page}: tested-by {arg}: no such test file"


def _strip_env(line, monkeypatch):
  if line.startswith("PYTHONPATH="):  # a user's module directory, then the command
    env, rest = line.split(" ", 1)
    monkeypatch.syspath_prepend(os.path.join(REPO, env.split("=", 1)[1]))
    return rest
  return line


def check_synopsis(line: str) -> None:
  words = shlex.split(line.replace("[", " ").replace("]", " "))
  if words[0].endswith("python") and words[1] == "-m":
    assert importlib.util.find_spec(words[2]) is not None, f"no module {words[2]}"
  for w in words:
    if w.startswith("--gin_file=") and "..." not in w:
      assert os.path.isfile(os.path.join(REPO, w.split("=", 1)[1])), w


@pytest.mark.parametrize("page", PAGES)
def test_every_command_names_what_exists(page, monkeypatch):
  for kind, line in _commands(page):
    if kind == "external":
      continue
    line = _strip_env(line, monkeypatch)
    if kind == "synopsis":
      check_synopsis(line)
    elif not line.startswith("make test"):  # the suite running this
      check_command(line)


# --- Running the `run` blocks -------------------------------------------------

def _overrides(arg: str) -> dict:
  """`ENTRY: FLAGS | ENTRY: FLAGS` -> {ENTRY: [flags]}."""
  out = {}
  for part in filter(None, (p.strip() for p in arg.split(" | "))):
    entry, flags = part.split(": ", 1)
    out[entry.strip()] = shlex.split(flags)
  return out


def _entry(words):
  if words[0] == "make":
    return f"make {words[1]}"
  return words[2].rsplit(".", 1)[-1]


def _outputs(words, cwd):
  """The directories a command says it writes."""
  out = []
  for w in words:
    for flag in ("--gin.MODEL_DIR=", "--gin.EXPORT_DIR=", "--output_dir="):
      if w.startswith(flag):
        out.append(os.path.join(cwd, w[len(flag):]))
  return out


def run_command(line: str, extra, cwd) -> None:
  words = shlex.split(line) + list(extra)
  if words[0] == "make":
    # In the repository, with the run directory in the temporary one and the
    # installed environment taken as it is (no reinstall inside a test).
    out = subprocess.run(["make", "-C", REPO, "-o", ".venv/.installed-runtime", "-o", ".venv/.installed-test",
                          f"PY={sys.executable}", f"DEMO_DIR={os.path.join(cwd, 'runs', 'demo')}", *words[1:]],
                         cwd=cwd, capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, f"{line}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    outputs = [os.path.join(cwd, "runs", "demo")]
  else:
    assert words[0].endswith("python") and words[1] == "-m", f"{line}: not a command this test runs"
    module, argv = words[2], words[3:]
    with restored_state():
      os.chdir(cwd)
      main = importlib.import_module(module).main
      # train/eval/infer/export: main() under gin_utils.run, as `python -m` runs
      # them; the planner and the argparse tools take argv themselves.
      code = main(argv) if inspect.signature(main).parameters else gin_utils.run(main, argv)
    assert code == 0, f"{line} {' '.join(extra)}: exit {code}"
    outputs = _outputs(words, cwd)
  for d in outputs:
    assert os.path.isdir(d) and os.listdir(d), f"{line}: wrote nothing to {d}"


def _run_page(page, kinds, tmp_path):
  ran = 0
  for kind, arg, lines in _blocks(page):
    if kind in kinds:
      extra = _overrides(arg)
      for line in lines:
        run_command(line, extra.get(_entry(shlex.split(line)), []), str(tmp_path))
        ran += 1
  return ran


def test_the_readme_commands_run_at_tiny_size(tmp_path):
  """`make demo`, then the README's evaluation and export of that run."""
  assert _run_page("README.md", ("run",), tmp_path) >= 3
  assert os.path.isfile(tmp_path / "runs" / "demo_eval" / "eval" / "zero_shot.json")
  assert os.path.isfile(tmp_path / "runs" / "demo_export" / "adapters.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_the_docs_pages_commands_run_at_tiny_size(page, tmp_path):
  """The docs pages' `run` blocks, and every page's `run-slow` ones (the planner
  compiling for a TPU slice)."""
  _run_page(page, ("run-slow",) if page == "README.md" else ("run", "run-slow"), tmp_path)


def test_the_benchmark_figures_are_what_the_record_gives():
  """docs/benchmark.md's tables and the README's step-cost figure are generated
  from docs/bench/bench.json by `python -m bench.publish`, never typed."""
  from bench import publish
  assert os.path.isfile(os.path.join(REPO, publish.RECORD))
  assert publish.main(["--check"]) == 0
