"""One path layer for everything a run reads or writes: MODEL_DIR, the data
kit, the vocabulary, Hugging Face checkpoint directories, gin files, inputs.

Local paths and URIs (`gs://bucket/run` on a TPU VM) go through
`tf.io.gfile`, so any of them can live in a bucket. Orbax takes the same
path strings and reaches GCS itself. Local paths are made absolute; URIs are
left as they are (`os.path.abspath("gs://b/x")` would turn them into a local
directory named `gs:`).

TensorFlow is imported on first use: `python -m moe_jax.plan` and the model
code never need it.
"""
from __future__ import annotations

import contextlib
import glob as glob_lib
import os
import posixpath
import shutil
from typing import Iterator


def _scheme(path: str) -> str:
  return path.split("://", 1)[0] if is_uri(path) else ""


def is_uri(path) -> bool:
  return "://" in os.fspath(path)


def gfile():
  # TensorFlow loads only when this runs
  import tensorflow as tf
  return tf.io.gfile


def normalize(path: str) -> str:
  """Absolute local path, or the URI unchanged (trailing slash dropped)."""
  path = os.fspath(path)
  return path.rstrip("/") if is_uri(path) else os.path.abspath(path)


def join(path: str, *parts: str) -> str:
  return posixpath.join(path, *parts) if is_uri(path) else os.path.join(path, *parts)


def dirname(path: str) -> str:
  if is_uri(path):
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
  return os.path.dirname(path)


def basename(path: str) -> str:
  return posixpath.basename(path.rstrip("/")) if is_uri(path) else os.path.basename(path)


def exists(path: str) -> bool:
  return gfile().exists(path) if is_uri(path) else os.path.exists(path)


def isfile(path: str) -> bool:
  if is_uri(path):
    return gfile().exists(path) and not gfile().isdir(path)
  return os.path.isfile(path)


def glob(pattern: str) -> list[str]:
  """Sorted matches of a `*` pattern in one directory."""
  if is_uri(pattern):
    return sorted(gfile().glob(pattern))
  return sorted(glob_lib.glob(pattern))


def version(path: str) -> int:
  """A number that changes when the file does (modification time, ns): keys
  per-process caches of parsed files."""
  return gfile().stat(path).mtime_nsec if is_uri(path) else os.stat(path).st_mtime_ns


def isdir(path: str) -> bool:
  return gfile().isdir(path) if is_uri(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
  if is_uri(path):
    return [n.rstrip("/") for n in gfile().listdir(path)]
  return os.listdir(path)


def makedirs(path: str) -> None:
  if is_uri(path):
    gfile().makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


@contextlib.contextmanager
def open_file(path: str, mode: str = "r") -> Iterator:
  """A file object; for a URI, TensorFlow's errors come out as OSError
  (FileNotFoundError for a missing object), as for a local file."""
  if is_uri(path):
    # TensorFlow loads only when this runs
    import tensorflow as tf
    try:
      with gfile().GFile(path, mode) as f:
        yield f
    except tf.errors.NotFoundError as e:
      raise FileNotFoundError(2, e.message, path) from None
    except tf.errors.OpError as e:
      raise OSError(5, e.message, path) from None
  else:
    with open(path, mode) as f:
      yield f


def replace(src: str, dst: str) -> None:
  """Renames `src` to `dst`, replacing it: atomic on POSIX; on object stores
  a copy then a delete, so a reader sees the old or the whole new file."""
  if is_uri(src) or is_uri(dst):
    gfile().rename(src, dst, overwrite=True)
  else:
    os.replace(src, dst)


def move(src: str, dst: str) -> None:
  """Moves a file or a directory tree (not replacing)."""
  if not (is_uri(src) or is_uri(dst)):
    shutil.move(src, dst)
    return
  g = gfile()
  if not g.isdir(src):
    if _scheme(src) == _scheme(dst):
      g.rename(src, dst)
    else:  # TensorFlow renames only within one filesystem
      g.copy(src, dst)
      g.remove(src)
    return
  for root, _, files in g.walk(src):
    rel = posixpath.relpath(root, src) if root != src else ""
    g.makedirs(join(dst, rel) if rel else dst)
    for name in files:
      g.copy(join(root, name), join(dst, rel, name) if rel else join(dst, name))
  g.rmtree(src)


def remove(path: str) -> None:
  """Deletes one file."""
  if is_uri(path):
    gfile().remove(path)
  else:
    os.remove(path)


def rmtree(path: str) -> None:
  if is_uri(path):
    if gfile().exists(path):
      gfile().rmtree(path)
  else:
    shutil.rmtree(path, ignore_errors=True)


def write_text(path: str, text: str) -> None:
  """Writes `path` whole: via a temporary sibling then a rename; interrupted
  (a stop signal, an error), it leaves the old file and no temporary one."""
  _write_whole(path, text, "w")


def write_bytes(path: str, data: bytes) -> None:
  _write_whole(path, data, "wb")


def _write_whole(path: str, data, mode: str) -> None:
  tmp = path + ".tmp"
  try:
    with open_file(tmp, mode) as f:
      f.write(data)
    replace(tmp, path)
  except BaseException:
    if exists(tmp):
      remove(tmp)
    raise


def read_text(path: str) -> str:
  with open_file(path, "r") as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()
