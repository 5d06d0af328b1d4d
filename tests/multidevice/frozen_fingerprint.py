"""The frozen-source fingerprint of one small parameter tree on other meshes.

    python frozen_fingerprint.py mesh              # one process, 4 simulated CPU devices
    python frozen_fingerprint.py PORT PROCESS_ID   # run twice (ids 0, 1): 2 processes x 2 devices

`mesh`: the host tree's fingerprint, and `frozen_source.check` of that record
against the tree placed on 1 device and on 2- and 4-device meshes (with two
rows of one kernel swapped too). Two processes: the fingerprint of the tree
split over all 4 devices of both hosts (no process holds a whole leaf).
Writes JSON to $FINGERPRINT_OUT.<mode or process id>.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + ("4" if sys.argv[1] == "mesh" else "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

if sys.argv[1] != "mesh":
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from moe_jax import frozen_source  # noqa: E402


def tree():
  """A scanned 2-layer stack, an embedding, a bf16 vector, a scalar: the same on every process."""
  rng = np.random.default_rng(0)
  return {"encoder": {"layers": {"attention": {"query": {"kernel": rng.standard_normal((2, 8, 4, 6), np.float32)}}},
                      "scale": np.float32(0.5),
                      "bias": rng.standard_normal(8).astype(jax.numpy.bfloat16)},
          "token_embedder": {"embedding": rng.standard_normal((16, 8), np.float32)}}


def placed(t, mesh, specs):
  return jax.tree_util.tree_map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), t, specs)


def specs(a, b):
  """Row/column splits of every leaf over the mesh axes `a`, `b` (heads of the scanned kernel over `b`)."""
  return {"encoder": {"layers": {"attention": {"query": {"kernel": P(a, None, b)}}}, "scale": P(), "bias": P(b)},
          "token_embedder": {"embedding": P(a, b)}}


out = {}
t = tree()
if sys.argv[1] == "mesh":
  recorded = frozen_source.fingerprint(t)
  out["recorded"] = recorded
  devices = np.array(jax.devices())
  meshes = {"1 device": Mesh(devices[:1].reshape(1, 1), ("a", "b")),
            "2 devices": Mesh(devices[:2].reshape(2, 1), ("a", "b")),
            "4 devices (2 x 2)": Mesh(devices.reshape(2, 2), ("a", "b"))}
  swapped = jax.tree_util.tree_map(lambda x: x, t)
  swapped["token_embedder"]["embedding"] = t["token_embedder"]["embedding"][[3, 1, 2, 0] + list(range(4, 16))]
  out["checks"] = {}
  for name, mesh in meshes.items():
    for what, params in (("same", t), ("rows 0 and 3 of token_embedder/embedding swapped", swapped)):
      p = placed(params, mesh, specs("a", "b"))
      try:
        frozen_source.check(recorded, p, name)
        out["checks"][f"{name}, {what}"] = "accepted"
      except frozen_source.FrozenSourceError as e:
        out["checks"][f"{name}, {what}"] = str(e)
else:
  mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("a", "b"))  # 'a' spans the two processes
  p = placed(t, mesh, specs("a", "b"))
  out["fully_addressable"] = [x.is_fully_addressable for x in jax.tree_util.tree_leaves(p)]
  out["fingerprint"] = frozen_source.fingerprint(p)
  out["process"] = jax.process_index()
with open(os.environ["FINGERPRINT_OUT"] + "." + (sys.argv[1] if sys.argv[1] == "mesh" else sys.argv[2]), "w") as f:
  json.dump(out, f)
if jax.process_count() > 1:  # leave together: a peer that exits first aborts the other's disconnect
  from jax.experimental import multihost_utils
  multihost_utils.sync_global_devices("done")
  jax.distributed.shutdown()
