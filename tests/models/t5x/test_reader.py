"""Reading T5X checkpoint files: inline and TensorStore leaves, relative and gs:// paths."""
import os
import shutil

import numpy as np
import pytest
import tensorstore as ts

from moe_jax.models import CheckpointError, T5XCheckpoint, load_t5x_checkpoint
from moe_jax.models.t5x import is_t5x_checkpoint, reader
from tests.models.t5x import common


def test_tensorstore_leaves_written_by_t5x_keep_dtypes_and_shapes():
  ckpt = T5XCheckpoint(common.TS_TOY)  # the directory; the file itself works too
  assert T5XCheckpoint(os.path.join(common.TS_TOY, "checkpoint")).file == ckpt.file
  assert ckpt.step == 1 and ckpt.version == 3 and ckpt.target == {}
  got = {name: leaf.read() for name, leaf in ckpt.state.items()}
  assert {k: (v.dtype, v.shape) for k, v in got.items()} == {
      "param_states/bias": (np.float32, (5,)), "param_states/kernel": (np.float64, (10, 5)),
      "param_states/step": (np.int32, ()), "step": (np.int32, ())}
  assert ckpt.state["param_states/kernel"].spec is not None  # really read through TensorStore
  np.testing.assert_array_equal(got["param_states/bias"], np.ones(5, np.float32))
  assert int(got["param_states/step"]) == 1
  k = got["param_states/kernel"]
  assert np.all((k > 0) & (k < 1)) and len(np.unique(k)) == 50  # data, not the zero fill value


def test_missing_array_directory_is_named(tmp_path):
  copy = tmp_path / "ckpt"
  shutil.copytree(common.TS_TOY, copy)
  shutil.rmtree(copy / "state.param_states.kernel")
  ckpt = T5XCheckpoint(str(copy))
  with pytest.raises(CheckpointError, match=r"state/param_states/kernel: array directory .*"
                                            r"state\.param_states\.kernel/ is missing"):
    ckpt.state["param_states/kernel"].read()


def test_tensorstore_copy_of_the_tiny_t5_loads_like_the_inline_one(tmp_path):
  """Every array as a zarr leaf beside `checkpoint` (relative paths, gzip), in both
  spec formats t5x has written: metadata only in the spec (`kvstore.path`), and
  `.zarray` files with the path at the spec's top level (tensorstore < 0.1.14)."""
  target = common.raw_target()
  specs = {}
  for i, (name, arr) in enumerate(sorted(target.items())):
    rel = "target." + name.replace("/", ".")
    meta = {"chunks": list(arr.shape), "compressor": {"id": "gzip", "level": 1}, "shape": list(arr.shape)}
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "ckpt" / rel)},
                     "dtype": arr.dtype.name, "metadata": meta}, create=True).result()
    store.write(arr).result()
    if i % 2:
      os.remove(tmp_path / "ckpt" / rel / ".zarray")
      specs[name] = {"driver": "zarr", "dtype": arr.dtype.name, "metadata": meta,
                     "kvstore": {"driver": "gfile", "path": rel}}
    else:
      specs[name] = {"driver": "zarr", "path": rel, "metadata": meta,
                     "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket"}}
  path = common.write_checkpoint(tmp_path / "ckpt", {}, step=1100000, arrays=specs)
  ckpt = T5XCheckpoint(path)
  assert ckpt.step == 1100000 and all(leaf.spec is not None for leaf in ckpt.target.values())
  _, from_ts = load_t5x_checkpoint(ckpt)
  _, inline = load_t5x_checkpoint(common.TINY_T5)
  import jax
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_ts, inline)


def test_relative_specs_resolve_against_gcs_and_local_directories():
  gs = "gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_xl/checkpoint_1100000"
  new = {"driver": "zarr", "kvstore": {"driver": "file", "path": "target.encoder.encoder_norm.scale"},
         "metadata": {"shape": [2048]}}
  old = {"driver": "zarr", "path": "target.encoder.encoder_norm.scale",
         "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket"}, "metadata": {"shape": [2048]}}
  for spec in (new, old):
    got = reader.resolve_ts_spec(spec, gs)
    assert got["kvstore"] == {"driver": "gcs", "bucket": "t5-data", "path":
                              "pretrained_models/t5x/t5_1_1_lm100k_xl/checkpoint_1100000/"
                              "target.encoder.encoder_norm.scale/"}
    assert "path" not in got and got["metadata"] == {"shape": [2048]}
    assert reader.resolve_ts_spec(spec, "/ckpt/c_1")["kvstore"] == {
        "driver": "file", "path": "/ckpt/c_1/target.encoder.encoder_norm.scale/"}
  assert new["kvstore"]["driver"] == "file"  # the checkpoint's own dicts are not modified
  assert reader.find_checkpoint_file(gs + "/") == gs + "/checkpoint"
  assert is_t5x_checkpoint(gs)


def test_what_is_not_a_t5x_checkpoint(tmp_path):
  assert not is_t5x_checkpoint(str(tmp_path)) and not is_t5x_checkpoint(str(tmp_path / "nope"))
  with pytest.raises(CheckpointError, match=f"{tmp_path}: not a T5X checkpoint"):
    T5XCheckpoint(str(tmp_path))
  with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope'}: does not exist"):
    T5XCheckpoint(str(tmp_path / "nope"))
  (tmp_path / "checkpoint").write_bytes(b"\xc1garbage")
  assert is_t5x_checkpoint(str(tmp_path))
  with pytest.raises(CheckpointError, match=f"{tmp_path / 'checkpoint'}: not a msgpack T5X checkpoint"):
    T5XCheckpoint(str(tmp_path))
  from flax import serialization
  (tmp_path / "checkpoint").write_bytes(serialization.msgpack_serialize({"version": 3, "optimizer": {}}))
  with pytest.raises(CheckpointError, match="no parameters .'optimizer/target' or 'target'."):
    T5XCheckpoint(str(tmp_path))


def test_chunked_inline_arrays_are_reassembled(tmp_path, monkeypatch):
  # flax splits inline arrays above MAX_CHUNK_SIZE bytes (2**30) into chunks; force it small.
  from flax import serialization
  monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 4096)
  target = common.raw_target()
  path = common.write_checkpoint(tmp_path / "ckpt", target)
  assert b"__msgpack_chunked_array__" in (tmp_path / "ckpt" / "checkpoint").read_bytes()
  leaf = T5XCheckpoint(path).target["token_embedder/embedding"]
  np.testing.assert_array_equal(leaf.read(), target["token_embedder/embedding"])


def test_a_version_0_checkpoint_without_the_optimizer_level(tmp_path):
  """Early T5X (version 0 or no version) kept `target` and `state` at the top
  level: the same parameters and step as the tiny fixture's."""
  from flax import serialization, traverse_util
  target = common.raw_target()
  tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in target.items()})
  for name, contents in (("v0", {"version": 0, "target": tree, "state": {"step": np.int32(7)}}),
                         ("unversioned", {"target": tree, "state": {"step": np.int32(7)}})):
    (tmp_path / name).mkdir()
    (tmp_path / name / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))
    ckpt = T5XCheckpoint(str(tmp_path / name))
    assert ckpt.version == 0 and ckpt.step == 7 and set(ckpt.target) == set(target)
    for k, v in target.items():
      np.testing.assert_array_equal(ckpt.target[k].read(), v)


def test_the_checkpoint_file_under_state(tmp_path):
  """Some T5X exports keep the msgpack file in `<dir>/state/checkpoint`."""
  (tmp_path / "state").mkdir()
  shutil.copy(common.TINY_T5, tmp_path / "state" / "checkpoint")
  assert is_t5x_checkpoint(str(tmp_path))
  ckpt = T5XCheckpoint(str(tmp_path))
  assert ckpt.file == str(tmp_path / "state" / "checkpoint") and set(ckpt.target) == set(common.raw_target())


def test_an_array_whose_shape_differs_from_its_spec_is_named(tmp_path):
  arr = np.arange(6, dtype=np.float32).reshape(2, 3)
  rel = "target.w"
  store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / rel)},
                   "dtype": "float32", "metadata": {"chunks": [2, 3], "shape": [2, 3]}}, create=True).result()
  store.write(arr).result()
  spec = {"driver": "zarr", "dtype": "float32", "kvstore": {"driver": "gfile", "path": rel},
          "metadata": {"chunks": [2, 3], "shape": [3, 2]}}  # the spec says another shape
  ckpt = T5XCheckpoint(common.write_checkpoint(tmp_path, {}, arrays={"w": spec}))
  assert ckpt.target["w"].shape == (3, 2)
  # TensorStore compares the spec with the array's .zarray first; the error
  # names the leaf, its directory and both shapes.
  with pytest.raises(CheckpointError, match=r'target/w: cannot read .*target.w.*"shape" of \[3,2\] but received: \[2,3\]'):
    ckpt.target["w"].read()
