"""Where a PEFT-only run's frozen backbone comes from, and a check that it has not changed.

By default a checkpoint stores only what training changes (trainable
parameters, optimizer state, step, data position): the frozen backbone is
the same in every step, and at T5 XL it is ~11 GB per save. The run records
its source once, in `MODEL_DIR/frozen_source.json`:

- `initial_checkpoint_path` (HF, T5X or moe-jax checkpoint, or None) and the
  `seed` of the jitted init that fills whatever that checkpoint lacks;
- a fingerprint (`"kind": "probe64"`): per frozen parameter its name, shape,
  dtype, L2 norm and its inner product with a fixed pseudo-random probe
  tensor, both in float64 (in the unrolled `layers_<i>` naming, so a scanned
  and an unrolled model agree), plus a digest of the names, shapes and dtypes.
  The probe weighs every position differently, so rows or heads in another
  order change it; the result does not depend on the mesh or the number of
  hosts.

Resume, evaluation, inference and export rebuild the backbone from that
source and refuse, naming the first difference, when what they rebuilt is not
what the run trained against (another checkpoint, seed, dtype or model).
Files written before the probe (no "kind") hold a sum of |x| per parameter,
which a permutation keeps: they are still checked with it, with a warning.
"""
from __future__ import annotations

import hashlib
import json
import sys
from typing import Optional

from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from moe_jax.errors import CheckpointError
from moe_jax.models.layer_stack import SCANNED_NAME
from moe_jax.utils import fs


FILE = "frozen_source.json"
KIND = "probe64"  # what `fingerprint` computes and `record` writes
OLD_KIND = "l1"  # files without "kind": sum of |x| per parameter (float32)
# Tolerance of the probe and the norm, relative to the parameter's L2 norm.
# Same values summed in another grouping (mesh, hosts) differ by ~1e-15 in
# float64, a float32 rounding difference in every value by <= 1.2e-7; two rows
# of an R-row kernel swapped move the probe by ~2 / sqrt(R) (1e-2 at R = 32128),
# so a swap passes with probability ~1e-4 at most.
PROBE_RTOL = 1e-6
# The old kind's relative tolerance on sum |x| (float32: the reduction order
# may differ with the mesh; another checkpoint or seed differs by far more).
L1_RTOL = 1e-4
CHUNK = 1 << 20  # elements converted to float64 at a time (8 MB; bounds the host memory used)


class FrozenSourceError(CheckpointError):
  """The backbone a PEFT-only run recorded cannot be rebuilt as it was."""


def init_params(model, seed: int, shardings=None):
  """The model's freshly initialised parameters, jitted (each device creates
  only its shards when `shardings` is given). The values do not depend on the
  sharding, so the trainer, eval and export rebuild the same backbone."""
  init_batch = model.dummy_batch()
  kwargs = {} if shardings is None else {"out_shardings": shardings}
  return jax.jit(lambda r: model.init(r, init_batch), **kwargs)(jax.random.key(seed))


def _unrolled(frozen):
  """(flat name, value, unrolled names): a scanned leaf's axis 0 is its layers,
  each named as the unrolled model names it (`layers_<i>`)."""
  for k, v in traverse_util.flatten_dict(frozen).items():
    if SCANNED_NAME in k:
      i = k.index(SCANNED_NAME)
      yield "/".join(k), v, ["/".join(k[:i] + (f"layers_{layer}",) + k[i + 1:]) for layer in range(v.shape[0])]
    else:
      yield "/".join(k), v, None


def shapes(frozen) -> dict:
  """{unrolled name: shape} of the leaves `fingerprint` lists (nothing computed)."""
  out = {}
  for n, v, layers in _unrolled(frozen):
    for name in layers or [n]:
      out[name] = list(v.shape[1:] if layers else v.shape)
  return out


def _probe(name: str, axis: int, size: int) -> np.ndarray:
  """The probe's factor along one axis of the parameter `name`: `size` values of
  mean 0 and variance 1, the same on every machine (splitmix64 of a counter
  seeded by sha256 of the name; Steele et al. 2014), not a library's RNG stream."""
  seed = np.uint64(int.from_bytes(hashlib.sha256(f"{name}#{axis}".encode()).digest()[:8], "little"))
  with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as splitmix64 intends
    z = seed + np.arange(1, size + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
  u = (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # uniform in [0, 1)
  return np.sqrt(3.0) * (2.0 * u - 1.0)


def _blocks(v):
  """(per-axis (start, stop), host block) pairs holding each element of `v`
  once: a jax array's addressable shards of replica 0 (the ones on other hosts
  are summed in by `fingerprint`), or the whole of a host array."""
  if not isinstance(v, jax.Array):
    v = np.asarray(v)
    yield [(0, d) for d in v.shape], v
    return
  for shard in v.addressable_shards:
    if shard.replica_id == 0:
      yield [sl.indices(d)[:2] for sl, d in zip(shard.index, v.shape)], np.asarray(shard.data)


def _probe_and_squares(block: np.ndarray, probes) -> tuple[float, float]:
  """sum(block * outer product of `probes`) and sum(block ** 2), in float64,
  CHUNK elements at a time."""
  if block.ndim == 0:
    x = float(np.asarray(block, np.float64))
    return x, x * x
  rows = max(1, CHUNK // max(1, int(np.prod(block.shape[1:]))))
  dot = sq = 0.0
  for i in range(0, block.shape[0], rows):
    c = np.ascontiguousarray(block[i:i + rows], dtype=np.float64)
    sq += float(np.vdot(c, c))
    for p in reversed(probes[1:]):  # contract the last axis with its probe factor
      c = c @ p
    dot += float(c @ probes[0][i:i + rows])
  return dot, sq


def fingerprint(frozen) -> dict:
  """{"kind": KIND, "digest": sha256 of names/shapes/dtypes,
  "leaves": {name: [shape, dtype, probe, l2]}} (see the module docstring).

  Computed on the host in float64 from each process's own shards: an array
  split over several hosts gets its partial sums added up across processes
  (every process must call this), so the result is the same for any mesh."""
  meta, sums, spread = {}, {}, set()
  for n, v, layers in _unrolled(frozen):
    dtype = str(jnp.dtype(v.dtype))
    if isinstance(v, jax.Array) and not v.is_fully_addressable:
      spread.update(layers or [n])  # partial sums here, the other hosts hold the rest
    for name in layers or [n]:
      meta[name] = (list(v.shape[1:] if layers else v.shape), dtype)
      sums.setdefault(name, [0.0, 0.0])
    probes = {}
    for bounds, block in _blocks(v):
      parts = ([(layers[layer], block[layer - bounds[0][0]], bounds[1:])
                for layer in range(*bounds[0])] if layers else [(n, block, bounds)])
      for name, x, bnds in parts:
        shape = meta[name][0]
        for axis, size in enumerate(shape):
          if (name, axis) not in probes:
            probes[name, axis] = _probe(name, axis, size)
        dot, sq = _probe_and_squares(x, [probes[name, a][lo:hi] for a, (lo, hi) in enumerate(bnds)])
        sums[name][0] += dot
        sums[name][1] += sq
  if spread and jax.process_count() > 1:
    names = sorted(spread)  # the same tree, so the same order, on every process
    # As uint32 bits: without jax_enable_x64 a float64 array would travel as float32.
    bits = np.ascontiguousarray([sums[n] for n in names], np.float64).view(np.uint32)
    gathered = np.asarray(multihost_utils.process_allgather(bits), np.uint32)
    total = np.sum(np.ascontiguousarray(gathered).view(np.float64), axis=0)
    for name, (dot, sq) in zip(names, total):
      sums[name] = [float(dot), float(sq)]
  leaves = {name: [shape, dtype, sums[name][0], float(np.sqrt(sums[name][1]))]
            for name, (shape, dtype) in meta.items()}
  return {"kind": KIND, "digest": _digest(leaves), "leaves": dict(sorted(leaves.items()))}


def _digest(leaves: dict) -> str:
  spec = json.dumps(sorted((n, s, d) for n, (s, d, *_) in leaves.items()))
  return hashlib.sha256(spec.encode()).hexdigest()


def _l1_fingerprint(frozen) -> dict:
  """The old kind (files without "kind"): sum of |x| per parameter, float32 on
  the devices; kept to check runs that recorded it."""
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(frozen).items()}
  scanned = {n for n in flat if SCANNED_NAME in n.split("/")}
  # One jitted reduction for every leaf; per layer along a scanned stack's axis 0.
  l1 = jax.device_get(jax.jit(lambda t: {
      n: jnp.sum(jnp.abs(v.astype(jnp.float32)), axis=tuple(range(1 if n in scanned else 0, v.ndim)))
      for n, v in t.items()})(flat))
  leaves = {}
  for n, v, layers in _unrolled(frozen):
    dtype = str(jnp.dtype(v.dtype))
    for layer, name in enumerate(layers or [n]):
      leaves[name] = ([list(v.shape[1:]), dtype, float(l1[n][layer])] if layers
                      else [list(v.shape), dtype, float(l1[n])])
  return {"digest": _digest(leaves), "leaves": dict(sorted(leaves.items()))}


def describe_source(initial_checkpoint_path: Optional[str], seed: int) -> str:
  return (f"INITIAL_CHECKPOINT_PATH={initial_checkpoint_path} (seed {seed} for what it lacks)"
          if initial_checkpoint_path else f"the seed-{seed} random initialisation (no INITIAL_CHECKPOINT_PATH)")


def record(model_dir: str, initial_checkpoint_path: Optional[str], seed: int, print_: dict) -> None:
  """Writes MODEL_DIR/frozen_source.json (atomically)."""
  fs.write_text(fs.join(model_dir, FILE), json.dumps({
      "initial_checkpoint_path": initial_checkpoint_path, "seed": seed, **print_}, indent=1))


def read(run_dir: str) -> Optional[dict]:
  path = fs.join(run_dir, FILE)
  if not fs.exists(path):
    return None
  try:
    return json.loads(fs.read_text(path))
  except ValueError as e:
    raise FrozenSourceError(f"{path}: unreadable ({e})") from None


def difference(recorded: dict, current: dict) -> Optional[str]:
  """The first way `current`'s fingerprint differs from `recorded`'s (of the same kind), or None."""
  r, c = recorded["leaves"], current["leaves"]
  missing, extra = sorted(set(r) - set(c)), sorted(set(c) - set(r))
  if missing:
    return f"it lacks the frozen parameter {missing[0]} ({len(missing)} in all)"
  if extra:
    return f"it has the frozen parameter {extra[0]} the run did not ({len(extra)} in all)"
  old = recorded.get("kind", OLD_KIND) == OLD_KIND
  for n in r:
    (rs, rd, *rv), (cs, cd, *cv) = r[n], c[n]
    if list(rs) != list(cs):
      return f"{n} has shape {tuple(cs)}, the run trained against {tuple(rs)}"
    if rd != cd:
      return f"{n} has dtype {cd}, the run trained against {rd}"
    if old:
      if not np.isclose(cv[0], rv[0], rtol=L1_RTOL, atol=1e-30):
        return f"{n} holds other values (sum |x| {cv[0]:.6g}, the run's was {rv[0]:.6g})"
      continue
    (r_probe, r_l2), (c_probe, c_l2) = rv, cv
    tol = PROBE_RTOL * max(r_l2, c_l2)
    if abs(c_l2 - r_l2) > tol:
      return f"{n} holds other values (L2 norm {c_l2:.9g}, the run's was {r_l2:.9g})"
    if abs(c_probe - r_probe) > tol:
      return (f"{n} holds other values or the same ones in another order (probe {c_probe:.9g}, the "
              f"run's was {r_probe:.9g}, L2 norm {r_l2:.9g} in both)")
  return None


def check(recorded: dict, frozen, where: str, ignore=frozenset()) -> None:
  """Raises FrozenSourceError if `frozen` is not the backbone `recorded` describes
  (parameters named in `ignore` aside). A record of the old kind is checked
  with sum |x|, with a warning that this cannot see a permutation."""
  kind = recorded.get("kind", OLD_KIND)
  if kind == KIND:
    current = fingerprint(frozen)
  elif kind == OLD_KIND:
    current = _l1_fingerprint(frozen)
  else:
    raise FrozenSourceError(f"{where}: {FILE} holds a fingerprint of unknown kind {kind!r} (this moe-jax "
                            f"reads {KIND!r} and the older {OLD_KIND!r}); was it written by a newer version?")
  if ignore:
    recorded = dict(recorded, leaves={n: v for n, v in recorded["leaves"].items() if n not in ignore})
    current = dict(current, leaves={n: v for n, v in current["leaves"].items() if n not in ignore})
  differs = difference(recorded, current)
  if differs:
    raise FrozenSourceError(
        f"{where}: the frozen backbone changed since the run was trained: {differs}. The run's "
        f"checkpoints hold only the trained parameters; it trained against "
        f"{describe_source(recorded.get('initial_checkpoint_path'), recorded.get('seed'))}. Restore that "
        "source (the same checkpoint, train.seed and PARAM_DTYPE) or start a new MODEL_DIR")
  if kind == OLD_KIND:
    print(f"warning: {where}: {FILE} holds the old sum-|x| fingerprint, which rows or heads in another order "
          "would also pass; checked with it (the run's next training start records the position-dependent one)",
          file=sys.stderr)


def run_dir_of(checkpoint_path: str) -> Optional[str]:
  """The run directory above a checkpoint path that records the frozen source."""
  d = fs.normalize(checkpoint_path)
  for _ in range(3):  # <run>/checkpoints/<step>
    if fs.exists(fs.join(d, FILE)):
      return d
    d = fs.dirname(d)
  return None
