"""The front door cannot rot: README.md stays short, every relative link in
README.md and docs/ resolves, and every command the README and
docs/own_tasks.md show is checked against the code.

A fenced block after `<!-- docs-commands: parse -->` holds commands that need
a pod, a bucket, a GPU or real weights: each is parsed, not run. `python -m
moe_jax.X` must name a module that exists; for the gin entry points (train,
eval, infer, export, plan) the flags are configured as the entry point would
(every --gin_file found, every --gin.MACRO read by some configuration);
`launch/*.sh` must exist and its train flags (after `--`) configure the same
way; `make T` must be a Makefile target. Commands run at tiny size are in the
tests that own them (tests/data/test_user_tasks.py runs docs/own_tasks.md's
worked example).
"""
import importlib.util
import os
import re
import shlex

import pytest

from moe_jax import gin_utils, paths, validation
from tests.inprocess import restored_state

REPO = paths.REPO_ROOT
PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs"))
                               if f.endswith(".md"))
GIN_ENTRIES = ("train", "eval", "infer", "export", "plan")


def _text(page):
  return open(os.path.join(REPO, page)).read()


def _commands(page):
  """(marker, command line) for every line of every bash block, continuations joined."""
  marker = None
  out = []
  for block in re.finditer(r"(?:<!-- docs-commands: (\w+) -->\n)?```(?:bash|sh)\n(.*?)```", _text(page), re.S):
    marker = block.group(1)
    joined = re.sub(r"\\\n\s*", " ", block.group(2))
    for line in joined.splitlines():
      line = line.split("  #")[0].strip()
      if line and not line.startswith("#"):
        out.append((marker, line))
  return out


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


@pytest.mark.parametrize("page", ["README.md", os.path.join("docs", "own_tasks.md")])
def test_every_command_names_what_exists(page, monkeypatch):
  commands = _commands(page)
  assert commands
  for _, line in commands:
    if line.startswith("PYTHONPATH="):  # a user's module directory, then the command
      env, rest = line.split(" ", 1)
      monkeypatch.syspath_prepend(os.path.join(REPO, env.split("=", 1)[1]))
      line = rest
    check_command(line)
