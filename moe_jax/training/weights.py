"""Loading weights into a model: initial checkpoints (HF, T5X, moe-jax) and a
run's own checkpoints, full or PEFT-only.

A PEFT-only checkpoint (the default; see `moe_jax/training/frozen_source.py`) holds
the trained parameters; the frozen backbone is rebuilt from the source the
run recorded and checked against its fingerprint, so evaluation, inference
and export read both kinds the same way.
"""
from __future__ import annotations

from flax import traverse_util
import jax

from moe_jax.models import hf, layer_layout, t5x
from moe_jax.models.layer_stack import SCANNED_NAME
from moe_jax.training import checkpoints, frozen_source
from moe_jax.utils import fs


def load_initial(model, params, path: str):
  """(params, parameters left fresh, the step the checkpoint records or None).

  `params` (the model's initialised, possibly sharded, parameters) receives
  every parameter `path` holds: an HF directory, a T5X checkpoint (directory
  with a msgpack `checkpoint` file, that file, or gs://...) or a moe-jax
  checkpoint (a run's `checkpoints/` folder or one step of it)."""
  step = None
  if fs.exists(fs.join(path, "config.json")):
    source = hf.read_hf_params(path)  # read tensor by tensor, straight into the shards
  elif t5x.is_t5x_checkpoint(path):
    ckpt = t5x.T5XCheckpoint(path)
    _, source = t5x.load_t5x_checkpoint(ckpt, config=model.config, dtype=model.config.param_dtype,
                                        lazy=True)  # one parameter at a time, into the shards
    step = ckpt.step
  else:
    return load_run_checkpoint(model, params, path)
  source = layer_layout.match_layout(source, params)  # e.g. an unrolled HF/T5X backbone, scanned model
  params, fresh = checkpoints.partial_restore(params, source, path)
  return params, fresh, step


def load_run_checkpoint(model, params, path: str):
  """A moe-jax checkpoint into `params`: (params, fresh, step).

  Full checkpoints (SAVE_FROZEN=True) replace every parameter they hold. A
  PEFT-only one needs its run's `frozen_source.json`: the backbone is rebuilt
  from that source (seeded init, then its initial checkpoint), checked, and
  the trained parameters are laid over it."""
  model.adapters.check_restore(checkpoints.step_dir_of(path))  # before anything is read
  sharded = checkpoints.restore_params_like(path, params)  # same layout: straight into the shards
  step_dir, state = sharded if sharded else checkpoints.load_state_at(path)
  step = int(state["step"])
  if "frozen" in state:
    source = model.adapters.adapt_restored(layer_layout.match_layout(checkpoints.params_of(state), params),
                                           params, step_dir)
    params, fresh = checkpoints.partial_restore(params, source, step_dir)
    return params, fresh, step
  run_dir = frozen_source.run_dir_of(step_dir)
  recorded = frozen_source.read(run_dir) if run_dir else None
  if recorded is None:
    raise checkpoints.CheckpointError(
        f"{step_dir}: a PEFT-only checkpoint (no frozen parameters) and no {frozen_source.FILE} in its run "
        "directory to rebuild the backbone from; copy the whole run directory, not only checkpoints/")
  params = rebuild_backbone(model, params, recorded, step_dir)
  trained = model.adapters.adapt_restored(layer_layout.match_layout(state["trainable"], params), params, step_dir)
  params, fresh = checkpoints.partial_restore(params, trained, step_dir)
  rebuilt = {"/".join(k) for k in traverse_util.flatten_dict(_frozen_part(params, set(recorded["leaves"])))}
  return params, [p for p in fresh if p not in rebuilt], step


def rebuild_backbone(model, params, recorded: dict, where: str):
  """The frozen backbone a run recorded: seeded init (with `params`'s shardings),
  then its initial checkpoint; raises if it no longer matches the fingerprint."""
  shardings = jax_shardings(params)
  base = frozen_source.init_params(model, int(recorded["seed"]), shardings)
  source = recorded.get("initial_checkpoint_path")
  if source:
    if not source.startswith("gs://") and not fs.exists(source):
      raise frozen_source.FrozenSourceError(
          f"{where}: the run's frozen backbone comes from INITIAL_CHECKPOINT_PATH={source}, which no longer "
          f"exists (recorded in {frozen_source.FILE})")
    base, _, _ = load_initial(model, base, source)
  names = set(recorded["leaves"])
  frozen = _frozen_part(base, names)
  recorded_shapes = {name: leaf[0] for name, leaf in recorded["leaves"].items()}  # either kind of fingerprint
  regrown = model.adapters.regrown_frozen(recorded_shapes, frozen_source.shapes(frozen))
  frozen_source.check(recorded, frozen, where, ignore=regrown)
  return base


def _frozen_part(params, names: set):
  """The leaves of `params` whose (unrolled) names the fingerprint lists."""
  keep = {}
  for k, v in traverse_util.flatten_dict(params).items():
    if SCANNED_NAME in k:
      i = k.index(SCANNED_NAME)
      probe = "/".join(k[:i] + ("layers_0",) + k[i + 1:])
    else:
      probe = "/".join(k)
    if probe in names:
      keep[k] = v
  return traverse_util.unflatten_dict(keep)


def jax_shardings(params):
  """The shardings of `params`' leaves when all are jax arrays, else None."""
  leaves = jax.tree_util.tree_leaves(params)
  if leaves and all(isinstance(x, jax.Array) for x in leaves):
    return jax.tree_util.tree_map(lambda x: x.sharding, params)
  return None
