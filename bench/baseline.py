"""An earlier revision of the package, importable beside the current one.

For before/after tables measured in one process: `load("main")` exports
`moe_jax/` at that git revision into a temporary directory as `moe_jax_base`
(every `moe_jax` name rewritten) and imports it. Benchmark use only.
"""
from __future__ import annotations

import importlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile

NAME = "moe_jax_base"


def load(ref: str, repo: str = "."):
  """The package `moe_jax` as of git revision `ref`, imported as `moe_jax_base`."""
  try:
    tar = subprocess.run(["git", "-C", repo, "archive", ref, "moe_jax"], check=True,
                         capture_output=True).stdout
  except subprocess.CalledProcessError as e:
    raise SystemExit(f"--baseline={ref!r}: git archive failed: {e.stderr.decode().strip()}")
  root = tempfile.mkdtemp(prefix="moe_jax_baseline_")
  with tarfile.open(fileobj=io.BytesIO(tar)) as t:
    t.extractall(root, filter="data")
  os.rename(os.path.join(root, "moe_jax"), os.path.join(root, NAME))
  word = re.compile(r"\bmoe_jax\b")
  for d, _, files in os.walk(os.path.join(root, NAME)):
    for f in files:
      if f.endswith(".py"):
        p = os.path.join(d, f)
        with open(p) as fh:
          text = fh.read()
        with open(p, "w") as fh:
          fh.write(word.sub(NAME, text))
  sys.path.insert(0, root)
  return importlib.import_module(NAME)
