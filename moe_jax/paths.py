"""Where moe-jax finds its data: one setting, read everywhere.

`MOE_JAX_DATA_DIR` (a local path or a URL such as gs://bucket/kit) wins; otherwise `../shared/data` next to the repository
(the layout of a development checkout and of CI).
"""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")


def data_dir() -> str:
  return os.environ.get("MOE_JAX_DATA_DIR", DEFAULT_DATA_DIR)


def t5_vocab_path() -> str:
  """The data kit's copy of the vocabulary (see data/vocab.py for the others)."""
  from moe_jax import fs
  return fs.join(data_dir(), "t5_vocab", "spiece.model")
