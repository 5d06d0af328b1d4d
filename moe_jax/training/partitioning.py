"""Mesh, logical-axis rules and shardings: one code path from 1 CPU to a pod.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, ...); the rules
below map them to mesh axes (`data`, `model`, optional `expert`), t5x style.
Batches are split over `data`. Nothing else in moe-jax names a device.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# t5x's standard rules (model parallelism over heads / mlp / vocab), plus the
# adapter axes: experts over `expert` when the mesh has it, ranks replicated.
DEFAULT_RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("layers", None),
    ("expert", "expert"),
    ("rank", None),
    ("router_in", None),
    ("task", None),
    ("task_embed", None),
)


# FSDP-style: large weights are also split over `data` along `embed`, so each
# device holds 1/(data x model) of every matrix; XLA all-gathers a layer's
# weights where they are used. For backbones that do not fit model-parallel alone.
FSDP_RULES = tuple(("embed", "data") if k == "embed" else (k, v) for k, v in DEFAULT_RULES)
RULE_SETS = {"default": DEFAULT_RULES, "fsdp": FSDP_RULES}


def rules(name: str):
  if name not in RULE_SETS:
    raise ValueError(f"partitioning rules {name!r}; expected one of {sorted(RULE_SETS)}")
  return RULE_SETS[name]


def make_mesh(data: int = -1, model: int = 1, expert: int = 1, devices: Optional[Sequence] = None) -> Mesh:
  """A (data, model[, expert]) mesh; data=-1 takes the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  if data == -1:
    if len(devices) % (model * expert):
      raise ValueError(f"{len(devices)} devices do not split into model={model} x expert={expert}")
    data = len(devices) // (model * expert)
  if data * model * expert != len(devices):
    raise ValueError(f"mesh data={data} x model={model} x expert={expert} != {len(devices)} devices")
  shape, names = (data, model), ("data", "model")
  if expert > 1:
    shape, names = (data, model, expert), ("data", "model", "expert")
  return Mesh(np.asarray(devices).reshape(shape), names,
              axis_types=(jax.sharding.AxisType.Auto,) * len(names))


class Partitioner:
  def __init__(self, mesh: Mesh, rules: Sequence[tuple[str, Optional[str]]] = DEFAULT_RULES):
    self.mesh = mesh
    # Rules naming a mesh axis this mesh lacks fall back to replication.
    self.rules = tuple((k, v if v in mesh.axis_names else None) for k, v in rules)

  def sharding(self, logical: P) -> NamedSharding:
    return NamedSharding(self.mesh, nn.logical_to_mesh_axes(logical, self.rules))

  def param_shardings(self, logical_axes):
    return jax.tree_util.tree_map(self.sharding, logical_axes, is_leaf=lambda x: isinstance(x, P))

  def batch_sharding(self, ndim: int) -> NamedSharding:
    return NamedSharding(self.mesh, P("data", *([None] * (ndim - 1))))

  def host_batch_rows(self, global_batch_size: int) -> tuple[int, int]:
    """(first row, number of rows) of the global batch that this process's
    devices hold: what this host must read. Every row on one host when
    there is one process; 1/data of them per host when the data axis spans
    the hosts; all of them when only the model axis does."""
    index = self.batch_sharding(1).addressable_devices_indices_map((global_batch_size,))
    rows = sorted({sl[0].indices(global_batch_size)[:2] for sl in index.values()})
    first, covered = rows[0][0], rows[0][0]
    for start, stop in rows:
      if start > covered:
        raise ValueError("this process's batch rows are not contiguous; order the mesh's devices by process")
      covered = max(covered, stop)
    return first, covered - first

  def shard_batch(self, batch: dict, global_batch_size: Optional[int] = None) -> dict:
    """This host's rows of the global batch (numpy) -> global arrays split over
    `data`. With one process the batch is the global batch."""
    out = {}
    for k, v in batch.items():
      sharding = self.batch_sharding(np.ndim(v))
      if jax.process_count() == 1:
        out[k] = jax.device_put(v, sharding)
      else:  # each host feeds only its own rows (host_batch_rows)
        shape = (global_batch_size or np.shape(v)[0],) + np.shape(v)[1:]
        out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v), shape)
    return out

  def context(self):
    """Makes the mesh current (for jit and logical-axis resolution)."""
    return jax.set_mesh(self.mesh)

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())
