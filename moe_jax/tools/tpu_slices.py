"""Cloud TPU slices by their accelerator type (`v4-32`, `v5litepod-16`, ...):
the topology libtpu compiles for, the chip count, and each chip's published
memory, peak bf16 FLOP/s and HBM bandwidth.

Naming (Cloud TPU docs): v4 and v5p count TensorCores, two per chip, and run
one device per chip ("megacore"); v5e (`v5litepod-N`) and v6e count chips,
one TensorCore each. Chip figures, from the Cloud TPU system-architecture
pages (docs.cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}):
  v4:  275 TFLOP/s bf16, 32 GiB HBM2, 1,200 GB/s
  v5e: 197 TFLOP/s bf16, 16 GB HBM2, 819 GB/s
  v5p: 459 TFLOP/s bf16, 95 GB HBM2e, 2,765 GB/s
  v6e: 918 TFLOP/s bf16, 32 GB HBM, 1,640 GB/s
The pages' "GB" of capacity are the parts' binary sizes; read here as GiB.
"""
from __future__ import annotations
# Imports inside functions: the planner reads this table before it sets XLA_FLAGS, so jax loads
# only when a topology is compiled.

import dataclasses
import re

# generation: (libtpu topology prefix, chip config, TensorCores per chip in the
# type's number, HBM GiB, peak bf16 FLOP/s, HBM bytes/s)
_GENERATIONS = {
    "v4": ("v4", "megacore", 2, 32.0, 275e12, 1200e9),
    "v5litepod": ("v5e", None, 1, 16.0, 197e12, 819e9),
    "v5p": ("v5", "megacore", 2, 95.0, 459e12, 2765e9),
    "v6e": ("v6e", None, 1, 32.0, 918e12, 1640e9),
}
# Chips -> the slice's shape, as Cloud TPU lays slices out (3D tori for v4/v5p,
# 2D for v5e/v6e).
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator_type: str  # as Cloud TPU names it, e.g. "v4-32"
  topology: str  # as libtpu names it, e.g. "v4:2x2x4"
  chip_config: str | None
  chips: int
  hbm_gib: float
  peak_bf16_flops: float  # per chip
  hbm_bytes_per_s: float  # per chip

  def devices(self) -> list:
    """The slice's devices, described by libtpu (no TPU needed): for
    ahead-of-time compilation only; no array can be placed on them."""
    import os

    from jax.experimental import topologies
    # Off a TPU VM libtpu would query the VM's metadata and print a screenful
    # of warnings when none answers, and several processes at once (test
    # workers) would contend for its lock file: tell it what it would ask.
    for k, v in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", self.accelerator_type),
                 ("TPU_WORKER_HOSTNAMES", "localhost"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
      os.environ.setdefault(k, v)
    kwargs = {"chip_config_name": self.chip_config} if self.chip_config else {}
    try:
      topology = topologies.get_topology_desc(topology_name=self.topology, platform="tpu", **kwargs)
    except Exception as e:  # no libtpu: jax cannot describe a TPU slice
      raise ValueError(f"--topology={self.accelerator_type}: libtpu cannot describe {self.topology} ({e}); "
                       "install it with pip install 'jax[tpu]==0.10.2', or plan on simulated CPU devices "
                       "with --devices=N") from None
    return list(topology.devices)


def known() -> list[str]:
  out = []
  for gen, (_, _, cores, *_rest) in _GENERATIONS.items():
    shapes = _SHAPES_3D if cores == 2 else _SHAPES_2D
    out += [f"{gen}-{chips * cores}" for chips in shapes]
  return out


def parse(accelerator_type: str) -> Slice:
  """`v4-32` -> Slice(topology="v4:2x2x4", chips=16, ...); ValueError naming
  the known types otherwise."""
  m = re.fullmatch(r"(v4|v5litepod|v5p|v6e)-(\d+)", accelerator_type or "")
  gen = m and _GENERATIONS[m.group(1)]
  shapes = gen and (_SHAPES_3D if gen[2] == 2 else _SHAPES_2D)
  n = int(m.group(2)) if m else 0
  if not m or n % gen[2] or n // gen[2] not in shapes:
    raise ValueError(f"--topology={accelerator_type}: unknown accelerator type; known: {', '.join(known())}")
  prefix, chip_config, cores, hbm, peak, bw = gen
  chips = n // cores
  return Slice(accelerator_type, f"{prefix}:{shapes[chips]}", chip_config, chips, hbm, peak, bw)
