"""Logical-axis rules -> mesh shardings (the 8-device run is tests/test_multidevice.py)."""
import jax
import pytest
from jax.sharding import PartitionSpec as P

from moe_jax import partitioning


def test_rules_map_logical_axes_and_drop_missing_mesh_axes():
  part = partitioning.Partitioner(partitioning.make_mesh(-1, 1))
  assert part.mesh.axis_names == ("data", "model")
  assert part.sharding(P("embed", "mlp")).spec == P(None, "model")
  assert part.sharding(P("vocab", "embed")).spec == P("model", None)
  # No `expert` mesh axis here: expert parameters are replicated, not an error.
  assert part.sharding(P("expert", "embed", "mlp")).spec == P(None, None, "model")
  assert part.batch_sharding(2).spec == P("data", None)


def test_mesh_shape_errors_name_the_device_count():
  n = len(jax.devices())
  with pytest.raises(ValueError, match=f"{n} devices"):
    partitioning.make_mesh(n + 1, 1)
  with pytest.raises(ValueError, match=f"{n} devices do not split"):
    partitioning.make_mesh(-1, n + 1)
