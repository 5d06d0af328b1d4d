"""Where a PEFT-only run's frozen backbone comes from, and a check that it has not changed.

By default a checkpoint stores only what training changes (trainable
parameters, optimizer state, step, data position): the frozen backbone is
the same in every step, and at T5 XL it is ~11 GB per save. The run records
its source once, in `MODEL_DIR/frozen_source.json`:

- `initial_checkpoint_path` (HF, T5X or moe-jax checkpoint, or None) and the
  `seed` of the jitted init that fills whatever that checkpoint lacks;
- a fingerprint: per frozen parameter its name, shape, dtype and sum of |x|
  (in the unrolled `layers_<i>` naming, so a scanned and an unrolled model
  agree), plus a digest of the names, shapes and dtypes.

Resume, evaluation, inference and export rebuild the backbone from that
source and refuse, naming the first difference, when what they rebuilt is not
what the run trained against (another checkpoint, seed, dtype or model).
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from moe_jax import fs
from moe_jax.models.layer_stack import SCANNED_NAME

FILE = "frozen_source.json"
# Relative tolerance on a parameter's sum of |x|: the reduction order may
# differ with the mesh; another checkpoint or seed differs by far more.
L1_RTOL = 1e-4


class FrozenSourceError(ValueError):
  pass


def init_params(model, seed: int, shardings=None):
  """The model's freshly initialised parameters, jitted (each device creates
  only its shards when `shardings` is given). The values do not depend on the
  sharding, so the trainer, eval and export rebuild the same backbone."""
  init_batch = model._dummy_batch()
  kwargs = {} if shardings is None else {"out_shardings": shardings}
  return jax.jit(lambda r: model.init(r, init_batch), **kwargs)(jax.random.key(seed))


def fingerprint(frozen) -> dict:
  """{"digest": sha256 of names/shapes/dtypes, "leaves": {name: [shape, dtype, sum|x|]}}."""
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(frozen).items()}
  scanned = {n for n in flat if SCANNED_NAME in n.split("/")}
  # One jitted reduction for every leaf; per layer along a scanned stack's axis 0.
  l1 = jax.device_get(jax.jit(lambda t: {
      n: jnp.sum(jnp.abs(v.astype(jnp.float32)), axis=tuple(range(1 if n in scanned else 0, v.ndim)))
      for n, v in t.items()})(flat))
  leaves = {}
  for n, v in flat.items():
    dtype = str(jnp.dtype(v.dtype))
    if n in scanned:
      parts = n.split("/")
      i = parts.index(SCANNED_NAME)
      for layer in range(v.shape[0]):
        name = "/".join(parts[:i] + [f"layers_{layer}"] + parts[i + 1:])
        leaves[name] = [list(v.shape[1:]), dtype, float(l1[n][layer])]
    else:
      leaves[n] = [list(v.shape), dtype, float(l1[n])]
  spec = json.dumps(sorted((n, s, d) for n, (s, d, _) in leaves.items()))
  return {"digest": hashlib.sha256(spec.encode()).hexdigest(), "leaves": dict(sorted(leaves.items()))}


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
  """The first way `current`'s fingerprint differs from `recorded`'s, or None."""
  r, c = recorded["leaves"], current["leaves"]
  missing, extra = sorted(set(r) - set(c)), sorted(set(c) - set(r))
  if missing:
    return f"it lacks the frozen parameter {missing[0]} ({len(missing)} in all)"
  if extra:
    return f"it has the frozen parameter {extra[0]} the run did not ({len(extra)} in all)"
  for n in r:
    (rs, rd, rl), (cs, cd, cl) = r[n], c[n]
    if list(rs) != list(cs):
      return f"{n} has shape {tuple(cs)}, the run trained against {tuple(rs)}"
    if rd != cd:
      return f"{n} has dtype {cd}, the run trained against {rd}"
    if not np.isclose(cl, rl, rtol=L1_RTOL, atol=1e-30):
      return f"{n} holds other values (sum |x| {cl:.6g}, the run's was {rl:.6g})"
  return None


def check(recorded: dict, frozen, where: str, ignore=frozenset()) -> None:
  """Raises FrozenSourceError if `frozen` is not the backbone `recorded` describes
  (parameters named in `ignore` aside)."""
  current = fingerprint(frozen)
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


def run_dir_of(checkpoint_path: str) -> Optional[str]:
  """The run directory above a checkpoint path that records the frozen source."""
  d = fs.normalize(checkpoint_path)
  for _ in range(3):  # <run>/checkpoints/<step>
    if fs.exists(fs.join(d, FILE)):
      return d
    d = fs.dirname(d)
  return None
