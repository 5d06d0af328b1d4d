"""Where moe-jax finds its data: one setting, read everywhere.

`MOE_JAX_DATA_DIR` (a local path or a URL such as gs://bucket/kit) wins; otherwise `../shared/data` next to the repository
(the layout of a development checkout and of CI).
"""
import os

from moe_jax.utils import fs


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # moe_jax/utils/ -> checkout
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")


def data_dir() -> str:
  return os.environ.get("MOE_JAX_DATA_DIR", DEFAULT_DATA_DIR)


def t5_vocab_path() -> str:
  """The data kit's copy of the vocabulary."""
  return fs.join(data_dir(), "t5_vocab", "spiece.model")


# The --gin_file paths of the last configuration parsed, as found (for messages
# that name the file a setting came from); set by gin_utils.configure.
GIN_FILES: list = []

VOCAB_ENV = "MOE_JAX_VOCABULARY"
# t5.data.DEFAULT_SPM_PATH, the default of t5x and seqio: 32,000 pieces (cc_all.32000).
PUBLIC_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"


def vocabulary_path() -> str:
  """The T5 vocabulary: VOCABULARY / $MOE_JAX_VOCABULARY (a local path or a
  URL) if set, else the kit's copy if present, else the public bucket's."""
  explicit = os.environ.get(VOCAB_ENV)
  if explicit:
    return explicit
  kit = t5_vocab_path()
  return kit if fs.exists(kit) else PUBLIC_VOCABULARY
