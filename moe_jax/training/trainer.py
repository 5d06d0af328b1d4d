"""The training loop: frozen backbone, Adafactor, sharding, checkpoints, logging, eval.

`train(...)` is the gin-configurable entry that `python -m moe_jax.train` runs.
The jitted step (`TrainStep`) differentiates only the trainable parameters,
accumulates gradients over micro-batches, adds the method's auxiliary losses
(they are part of `model.loss_fn`) and applies Adafactor; parameters, optimizer
state and batches are placed by the partitioner's logical-axis rules.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Optional

from flax import traverse_util
import gin
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from moe_jax.data.jsonl import DataError
from moe_jax.errors import TrainingError  # noqa: E402
from moe_jax.models.api import BaseModel
from moe_jax.peft.trainable import trainable_mask
from moe_jax.training import (checkpoints, frozen_source, metrics, optim, partitioning, preemption, routing_embeddings,
                              weights)
from moe_jax.utils import fs, validation


def split_params(params, mask):
  flat, flat_mask = traverse_util.flatten_dict(params), traverse_util.flatten_dict(mask)
  trainable = traverse_util.unflatten_dict({k: v for k, v in flat.items() if flat_mask[k]})
  frozen = traverse_util.unflatten_dict({k: v for k, v in flat.items() if not flat_mask[k]})
  return trainable, frozen


def merge_params(trainable, frozen):
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(frozen),
                                       **traverse_util.flatten_dict(trainable)})


def subtree(tree, like):
  """The leaves of `tree` at the paths present in `like`."""
  flat = traverse_util.flatten_dict(tree)
  return traverse_util.unflatten_dict({k: flat[k] for k in traverse_util.flatten_dict(like)})


class TrainStep:
  """Builds the optimizer and the jitted, sharded train step for a model."""

  def __init__(self, model: BaseModel, partitioner: partitioning.Partitioner, trainable_logical_axes,
               learning_rate: float = 3e-4, decay_rate: float = 0.8, grad_accum_steps: int = 1,
               step_offset: int = 0, update_filter: Optional[optax.GradientTransformation] = None):
    self.model = model
    self.partitioner = partitioner
    self.learning_rate = learning_rate
    self.grad_accum_steps = grad_accum_steps
    self.tx = optim.adafactor(learning_rate, trainable_logical_axes, decay_rate=decay_rate,
                              step_offset=step_offset)
    if update_filter is not None:  # e.g. MoA stage 1: only one domain's slice moves
      self.tx = optax.chain(self.tx, update_filter)
    self._step = None  # jitted on the first call, when the placements are known

  def init_opt_state(self, trainable):
    return jax.jit(self.tx.init)(trainable)

  def _loss_and_grads(self, trainable, frozen, batch, rng, normalizer=None, aux_loss_scale=1.0):
    def loss_of(tp):
      return self.model.loss_fn(merge_params(tp, frozen), batch, rng, normalizer=normalizer,
                                aux_loss_scale=aux_loss_scale)
    (loss, m), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
    return grads, m

  def _train_step(self, trainable, frozen, opt_state, batch, rng):
    k = self.grad_accum_steps
    if k == 1:
      grads, m = self._loss_and_grads(trainable, frozen, batch, rng)
    else:
      grads, m = self._accumulated(trainable, frozen, batch, rng, k)
    updates, opt_state = self.tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    stats = m.pop("router_stats", {})
    m["router_entropy"] = metrics.mean_router_entropy(stats)
    m["grad_norm"] = optax.global_norm(grads)
    # A finite loss can still come with a poisoned update; never checkpoint it.
    m["params_finite"] = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(trainable)]))
    return trainable, opt_state, m

  def _accumulated(self, trainable, frozen, batch, rng, k):
    """Micro-batches in a scan (memory of one micro-batch). Each divides by the
    whole batch's loss divisor and the gradients are summed, so the result is
    the full batch's gradient for every loss normaliser; auxiliary (router)
    losses, being per-call means, are averaged over micro-batches."""
    _, normalizer = self.model.loss_weights_and_normalizer(batch)
    micro = jax.tree_util.tree_map(lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)
    rngs = jax.random.split(rng, k)

    def body(acc, xs):
      g, m = self._loss_and_grads(trainable, frozen, xs[0], xs[1], normalizer, 1.0 / k)
      return jax.tree_util.tree_map(jnp.add, acc, g), m
    zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
    grads, ms = jax.lax.scan(body, zeros, (micro, rngs))
    summed = ("loss", "cross_entropy", "z_loss", "aux_loss", "num_tokens")
    m = {key: jnp.sum(ms[key], 0) for key in summed}
    m["accuracy"] = jnp.sum(ms["accuracy"] * ms["num_tokens"]) / jnp.maximum(m["num_tokens"], 1e-8)
    m["per_example_cross_entropy"] = ms["per_example_cross_entropy"].reshape(-1)
    m["router_stats"] = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), ms["router_stats"])
    return grads, m

  def jitted(self, trainable, opt_state):
    """The jitted step for parameters and optimizer state placed like these
    (arrays, or abstract values carrying shardings)."""
    if self._step is None:
      # Outputs keep the inputs' placements (the logical-axis rules): left to
      # XLA's propagation they drift, and the second step would recompile.
      shardings = [getattr(x, "sharding", None) for x in jax.tree_util.tree_leaves((trainable, opt_state))]
      placed = lambda tree: jax.tree_util.tree_map(lambda x: x.sharding, tree)  # noqa: E731
      out = ((placed(trainable), placed(opt_state), None) if all(s is not None for s in shardings)
             else None)
      self._step = jax.jit(self._train_step, donate_argnums=(0, 2),
                           **({} if out is None else {"out_shardings": out}))
    return self._step

  def __call__(self, trainable, frozen, opt_state, batch, rng):
    return self.jitted(trainable, opt_state)(trainable, frozen, opt_state, batch, rng)


RUN_INFO = "run.json"


def describe(model: BaseModel) -> dict:
  """What a run directory holds: the method and the backbone's shape-defining fields."""
  c = model.config
  fields = ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_kv_heads", "num_layers",
            "num_encoder_layers", "num_decoder_layers", "mlp_variant")
  backbone = type(c).__name__ + "(" + ", ".join(f"{f}={getattr(c, f)}" for f in fields if hasattr(c, f)) + ")"
  out = {"method": type(model.adapters).__name__, "method_config": repr(model.adapters), "backbone": backbone}
  if hasattr(model.adapters, "domains"):  # MoA: which slice of its stacked tensors is which domain
    out["domains"] = list(model.adapters.domains)
  return out


def _check_same_run(model_dir: str, model: BaseModel) -> str:
  """Raises if MODEL_DIR's run.json records another method or backbone (a changed
  hyperparameter of the same method is left to the checkpoint's shape check);
  returns a note on what the directory holds for other messages."""
  path = fs.join(model_dir, RUN_INFO)
  if not fs.exists(path):
    return ""
  try:
    saved = json.loads(fs.read_text(path))
  except ValueError as e:  # written atomically, so only a hand edit gets here; it is rewritten
    print(f"warning: {path}: unreadable ({e}); ignored", file=sys.stderr)
    return ""
  now = describe(model)
  for key, what in (("method", "method"), ("backbone", "model")):
    if saved.get(key) != now[key]:
      held = saved.get("method_config") if key == "method" else saved.get(key)
      mine = now["method_config"] if key == "method" else now[key]
      raise checkpoints.CheckpointError(
          f"{model_dir} holds a run of another {what}: {held}; this configuration is {mine}; "
          "use a new MODEL_DIR or that run's configuration")
  return f"; the directory holds {saved.get('method_config')} over {saved.get('backbone')}"


def _write_json(path: str, obj) -> None:
  fs.write_text(path, json.dumps(obj, indent=1))


@gin.configurable(denylist=["model"])
def train(model: BaseModel, *, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: dict = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, learning_rate: float = 3e-4, decay_rate: float = 0.8,
          trainable_regex: Optional[str] = None, pack: bool = False,
          initial_checkpoint_path: Optional[str] = None, checkpoint_period: int = 1000,
          keep_checkpoints: int = 3, log_period: int = 10, eval_period: Optional[int] = None,
          grad_accum_steps: int = 1, mesh_shape: tuple = (-1, 1), seed: int = 0, shuffle_seed: int = 0,
          adafactor_step_offset: Optional[int] = None, partitioning_rules: str = "default",
          save_frozen: bool = False, moa_train_domain: Optional[str] = None, evaluator=None) -> dict:
  """Trains (or resumes) a run in `model_dir`; returns the last logged metrics.

  `adafactor_step_offset`: the optimizer step this run continues (T5X
  fine-tuning continues the pretrained checkpoint's, e.g. 1,100,000); None
  takes the step the initial checkpoint records, or 0.

  `save_frozen`: False (the default) saves PEFT-only checkpoints: the frozen
  backbone is recorded once as its source and fingerprint
  (`frozen_source.json`) and rebuilt from it on resume, which refuses when it
  changed. True saves it in every checkpoint too.

  `moa_train_domain`: MoA stage 1 for one domain in place: only the sites'
  stacked LoRA tensors train, and only that domain's slice of them moves
  (with an initial checkpoint of an MoA run with fewer domains, the new
  domains are appended and the others stay as trained).

  Nothing is written to `model_dir` until the configuration is checked, the
  checkpoint to resume from is found and the first batch of data has been
  read: a run that fails on bad input leaves the directory as it found it.
  """
  validation.train_args(**locals())
  if pack and model.config.family == "decoder":
    raise ValueError(f"{validation.setting('train', 'pack')}=True: decoder-only models train as unpacked prefix-LM "
                     "rows (packing is implemented for encoder-decoder models); set it to False")
  from moe_jax.data import ids, registry, training_input  # TF-heavy: imported when training
  source = registry.get_task_or_mixture(mixture_or_task_name)
  holds = _check_same_run(model_dir, model)
  if moa_train_domain is not None:
    model.adapters.train_slice(moa_train_domain, {}, trainable_regex)  # checked before anything is built
  partitioner = partitioning.Partitioner(partitioning.make_mesh(*mesh_shape),
                                         partitioning.rules(partitioning_rules))

  # Parameters: fresh init, then the initial checkpoint (backbone), then resume.
  model_dir = fs.normalize(model_dir)
  ckpt_dir = checkpoints.directory_of(model_dir)
  recorded = frozen_source.read(model_dir)
  if (recorded and recorded.get("initial_checkpoint_path") and not initial_checkpoint_path
      and checkpoints.step_numbers(ckpt_dir)):
    initial_checkpoint_path = recorded["initial_checkpoint_path"]  # the backbone this run trains
    print(f"frozen backbone from {initial_checkpoint_path}, as {fs.join(model_dir, frozen_source.FILE)} "
          "records")
  axes = model.param_logical_axes(model.dummy_batch())
  with partitioner.context():  # each device creates only its own shards
    params = frozen_source.init_params(model, seed, partitioner.param_shardings(axes))
  initial_step = None  # the step the initial checkpoint records (T5X: pre-training steps)
  if initial_checkpoint_path:
    params, fresh, initial_step = weights.load_initial(model, params, initial_checkpoint_path)
    print(f"initial weights from {initial_checkpoint_path} (step {initial_step}); "
          f"{len(fresh)} parameters start fresh")
  update_filter = None
  if moa_train_domain is None:
    mask = trainable_mask(params, trainable_regex)
    trainable, frozen = split_params(params, mask)
  else:
    mask, slice_filter = model.adapters.train_slice(moa_train_domain, params, trainable_regex)
    trainable, frozen = split_params(params, mask)
    update_filter = slice_filter(trainable)
  trainable_axes, frozen_axes = subtree(axes, trainable), subtree(axes, frozen)
  step_offset = adafactor_step_offset if adafactor_step_offset is not None else (initial_step or 0)
  print(f"Adafactor step offset {step_offset}: the first update's second-moment decay is "
        f"{optim.decay_rate_at(1, decay_rate, step_offset):.6g}")
  step_fn = TrainStep(model, partitioner, trainable_axes, learning_rate, decay_rate, grad_accum_steps,
                      step_offset, update_filter)
  with partitioner.context():
    trainable = jax.device_put(trainable, partitioner.param_shardings(trainable_axes))
    frozen = jax.device_put(frozen, partitioner.param_shardings(frozen_axes))
    opt_state = step_fn.init_opt_state(trainable)

  # Resume: read only; the newest loadable step wins, damaged newer ones are moved aside below.
  ids_path = fs.join(model_dir, "ids.json")
  resume = checkpoints.find_resumable(ckpt_dir, jax.eval_shape(lambda: {
      "trainable": trainable, "frozen": frozen, "opt_state": opt_state,
      "step": np.int64(0), "batches_seen": np.int64(0)}), holds)
  step, batches_seen = 0, 0
  if resume.step is not None:
    state = resume.state
    trainable, opt_state = state["trainable"], state["opt_state"]
    step, batches_seen = int(state["step"]), int(state["batches_seen"])
    if "frozen" in state:
      frozen = state["frozen"]
    elif recorded is None:
      raise checkpoints.CheckpointError(
          f"{fs.join(ckpt_dir, str(step))} holds no frozen parameters (PEFT-only) and {model_dir} has no "
          f"{frozen_source.FILE} saying where the backbone came from; restore that file or start a new MODEL_DIR")
    else:
      frozen_source.check(recorded, frozen, f"resuming {model_dir} at step {step}")
    if fs.exists(ids_path):
      ids.restore(ids_path)
  frozen_print = frozen_source.fingerprint(frozen)
  metrics_path = fs.join(model_dir, "train_metrics.jsonl")
  logged, dropped = metrics.read_log(metrics_path, step)
  if step >= train_steps:
    print(f"{model_dir} is already at step {step} >= train_steps={train_steps}")
    return {}

  # Per-host input: each host reads only the rows of the global batch its devices hold.
  first_row, host_rows = partitioner.host_batch_rows(batch_size)
  batch_iter = training_input.build(source, task_feature_lengths, first_row=first_row, host_rows=host_rows,
                                    batch_size=batch_size, shuffle_seed=shuffle_seed, pack=pack,
                                    family=model.config.family, process_index=jax.process_index(),
                                    process_count=jax.process_count())
  if resume.step is not None:  # the same data order as the uninterrupted run
    batch_iter.resume(fs.join(ckpt_dir, str(step)), batches_seen, fs.join(model_dir, "damaged_checkpoints"))
  try:
    pending = next(batch_iter)  # bad data fails here, before anything is written
  except StopIteration:
    raise DataError(f"{mixture_or_task_name}: the training data yield no batch of {host_rows} "
                    "examples") from None
  if routing_embeddings.needed(model.adapters) and pack:
    # Packed rows carry template ids per segment, but the embedding router
    # routes a row by one embedding [B, D] (routers.py): not implemented per segment.
    raise ValueError("PACK=True: routing='embedding' routes each row by one instruction embedding, and a "
                     "packed row holds several examples; set PACK=False")

  # From here on the run writes to model_dir: the run's own files from the
  # first process only (hosts renaming the same file on a bucket would race);
  # orbax coordinates the checkpoint writes of all hosts itself.
  lead = is_lead_process()
  if lead:
    fs.makedirs(model_dir)
    for s, why in resume.skipped:
      moved = checkpoints.move_aside(ckpt_dir, s, fs.join(model_dir, "damaged_checkpoints"))
      print(f"warning: checkpoint step {s} is damaged ({why}); moved it to {moved}", file=sys.stderr)
  if resume.skipped and jax.process_count() > 1:
    multihost_utils.sync_global_devices("moe_jax: damaged checkpoints moved aside")
  if resume.step is not None:
    print(f"resuming {model_dir} from step {step}")
  for line_no, why in dropped:
    print(f"warning: {metrics_path}:{line_no}: dropped an unreadable line ({why}; a run killed while "
          "logging leaves a torn last line)", file=sys.stderr)
  if lead:
    ids.save(ids_path)
    _write_json(fs.join(model_dir, RUN_INFO), describe(model))
    frozen_source.record(model_dir, initial_checkpoint_path, seed, frozen_print)
    metrics.write_log(metrics_path, logged)  # rows after the resumed step will be redone
  ckpts = checkpoints.Checkpoints(ckpt_dir, keep_checkpoints)

  routing_table = None
  if routing_embeddings.needed(model.adapters):
    routing_table = routing_embeddings.for_run(model, merge_params(trainable, frozen), model_dir, write=lead)
    print(f"instruction embeddings for {len(routing_table)} templates in {model_dir}")
  logger = metrics.Logger(model_dir, total_steps=train_steps, batch_size=batch_size, start_step=step,
                          kept_lines=logged, write=lead)
  to_model_domains = model.adapters.batch_preparer()  # e.g. MoA: data domain ids -> its domain indices
  rng = jax.random.key(seed + 1)
  last = {}

  def save(step, stopping=False):
    state = {"trainable": trainable, "opt_state": opt_state, "step": np.int64(step),
             "batches_seen": np.int64(batches_seen)}
    stop.saving = stopping  # a second signal now exits at once (orbax's save is atomic)
    ckpts.save(step, {**state, "frozen": frozen} if save_frozen else state, force=True)
    batch_iter.save(fs.join(ckpt_dir, str(step)), batches_seen)  # each process its own

  def stopped(signame, step, saved):
    """Save at `step` (unless just saved), flush, wait for the save, raise Stopped."""
    if not saved:
      print(f"saving checkpoint step {step} before stopping", file=sys.stderr, flush=True)
      save(step, stopping=True)
    logger.close()  # the metrics log and TensorBoard
    ckpts.close()  # returns when the checkpoint is complete
    stop.saving = False
    raise preemption.Stopped(signame, step, step)

  # A stop signal (preemption.py) only sets a flag; after each step all
  # processes agree whether one arrived anywhere, save there and stop.
  with preemption.training() as stop:
    while step < train_steps:
      batch, pending = (pending, None) if pending is not None else (next(batch_iter), None)
      batches_seen += 1
      if routing_table is not None:
        batch = routing_embeddings.attach(batch, routing_table)
      batch = to_model_domains(batch)
      task_ids = batch.get("task_id")
      if task_ids is not None and np.ndim(task_ids) != 1:
        task_ids = None  # packed: ids per segment, but the logged losses are per row
      with partitioner.context():
        trainable, opt_state, m = step_fn(trainable, frozen, opt_state, partitioner.shard_batch(batch, batch_size),
                                          jax.random.fold_in(rng, step))
      step += 1
      _check_finite(m, step, ckpts.latest_step())
      tokens = sum(int(np.sum(batch[k] > 0)) for k in ("encoder_input_tokens", "decoder_target_tokens")
                   if k in batch)
      last = logger.log(step, m, learning_rate, tokens, task_ids,
                        force=step == train_steps or step % log_period == 0)
      signame = stop.agreed()  # the same answer on every process, at this step
      periodic = step % checkpoint_period == 0 or step == train_steps
      if periodic:
        save(step)
      if signame:
        stopped(signame, step, saved=periodic)
      if evaluator is not None and ((eval_period and step % eval_period == 0) or step == train_steps):
        try:
          evaluator(model, merge_params(trainable, frozen), step)
        except preemption.Stopped as e:  # a signal during the evaluation, which polls `agreed`
          stopped(e.signame, step, saved=periodic)
  logger.close()
  ckpts.close()
  return last


def is_lead_process() -> bool:
  """Whether this process writes the run's files (metrics, reports, run.json)."""
  return jax.process_index() == 0


def _check_finite(m, step, last_saved):
  # One device->host transfer for the three scalars the loop must see each step.
  host = jax.device_get({k: m[k] for k in ("loss", "grad_norm")} | {"ok": m.pop("params_finite")})
  loss, gnorm, params_ok = float(host["loss"]), float(host["grad_norm"]), bool(host["ok"])
  if math.isfinite(loss) and math.isfinite(gnorm) and params_ok:
    return
  what = (f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {gnorm}" if not math.isfinite(gnorm)
          else "non-finite parameters after the update")
  raise TrainingError(f"training diverged at step {step}: {what}; nothing was saved for this step "
                      f"(last checkpoint: {last_saved if last_saved is not None else 'none'})")
