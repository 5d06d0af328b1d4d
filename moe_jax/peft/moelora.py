"""MOELoRA (Liu et al. 2023): N LoRA experts of rank r/N per site and ONE
task-driven gate for the whole model.

Gate: w = softmax(W_g E[task]) with a task-embedding table E
(num_tasks x d_T) and W_g (d_T x N, no bias); the sparse variant keeps the
top-k weights (renormalised). Site output: h = W x + (alpha / r) *
sum_i w_i B_i A_i x, with r the total rank. `task_id` is a batch feature, so a
batch may mix tasks: [B], or in a packed batch [B, S] with one id per segment
(`sites.ids_by_segment`), where every token takes its segment's task gate.

Because w depends only on the task, W + (alpha/r) sum_i w_i B_i A_i is a plain
weight per task: `merge_task` folds it in for zero-overhead inference. (The
released PyTorch merge is wrong for the shared gate; this one is tested
against the adapted model on every task.)
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import adapters as sites
from moe_jax.data import ids
from moe_jax.models import layer_layout
from moe_jax.peft.lora import ALL_PROJECTIONS, LowRankExperts, torch_linear_init
from moe_jax.peft.routers import select_top_k


GATE_NAMES = ("adapter_model_hook", "model_hook")  # T5 (setup attribute) / decoder-only


GATE_INITS = ("normal:0.02", "torch_linear")


class TaskGate(nn.Module):
  num_tasks: int
  task_dim: int
  num_experts: int
  top_k: Optional[int] = None
  gate_init: str = "normal:0.02"
  task_padding_row: bool = False

  def setup(self):
    if self.gate_init not in GATE_INITS:
      raise ValueError(f"MOELoRA gate_init={self.gate_init!r}; expected one of {GATE_INITS}")
    # The released code's table has num_tasks + 1 rows, row 0 reserved (its
    # task ids start at 1); N(0, 1) as torch's nn.Embedding.
    rows = self.num_tasks + int(self.task_padding_row)
    self.task_embedding = self.param(
        "task_embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("task", "task_embed")),
        (rows, self.task_dim), jnp.float32)
    init = (nn.initializers.normal(0.02) if self.gate_init == "normal:0.02"
            else torch_linear_init(self.task_dim))  # the released gate: a default nn.Linear, no bias
    self.gate = self.param(
        "gate", nn.with_logical_partitioning(init, ("task_embed", "expert")),
        (self.task_dim, self.num_experts), jnp.float32)

  def __call__(self, ctx: sites.AdapterContext) -> jax.Array:
    """[B, N] weights, or [B, S + 1, N] indexed by segment id when the
    task ids are given per packed segment [B, S]."""
    if "task_id" not in ctx.features:
      raise KeyError("MOELoRA needs a 'task_id' batch feature [B] (or [B, segments] when packed)")
    task_id = ctx.features["task_id"]
    if task_id.ndim == 2:
      task_id = sites.ids_by_segment(ctx, "task_id", task_id.shape[1] + 1)
    return self.weights(task_id)

  def weights(self, task_id):
    """[...] task ids -> [..., N] expert weights w = softmax(W_g E[task])."""
    row = task_id + 1 if self.task_padding_row else task_id
    probs = jax.nn.softmax(self.task_embedding[row] @ self.gate, axis=-1)
    return select_top_k(probs, self.top_k, renormalize=True)


class MOELoRASite(nn.Module):
  info: sites.SiteInfo
  num_experts: int
  expert_rank: int
  scale: float
  a_init: str
  dropout_rate: float

  @nn.compact
  def __call__(self, x, y, ctx):
    experts = LowRankExperts(self.info, self.num_experts, self.expert_rank, self.a_init,
                             self.dropout_rate, name="experts")
    w = ctx.model_state  # [B, N] one mixture per row, or [B, S + 1, N] per segment id
    if w.ndim == 3:
      w = sites.per_token(w, self.info, ctx)  # [B, T, N]
    lead = x.ndim - len(self.info.in_shape)  # x's batch (and length) dims
    w = w.reshape(w.shape[:-1] + (1,) * (lead - (w.ndim - 1)) + w.shape[-1:])
    return y + self.scale * experts.mix(x, w, ctx).astype(y.dtype)


@dataclasses.dataclass(frozen=True)
class MOELoRA(sites.Adapters):
  num_experts: int = 8
  rank: int = 16  # total rank r; each expert has r / N
  alpha: float = 32.0
  num_tasks: int = 8
  task_dim: int = 64
  top_k: Optional[int] = None  # None: dense gate
  targets: tuple[str, ...] = ALL_PROJECTIONS
  dropout_rate: float = 0.0
  a_init: str = "kaiming_uniform"
  gate_init: str = "normal:0.02"  # or "torch_linear", the released code's
  task_padding_row: bool = False  # True: num_tasks + 1 rows, row 0 unused, as released

  def __post_init__(self):
    if self.rank % self.num_experts:
      raise ValueError(f"MOELoRA rank={self.rank} must be divisible by num_experts={self.num_experts}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  merges_per_task = True  # task-driven gate: each task's weights fold into the backbone

  def batch_preparer(self):
    """Checks each batch's task ids against the gate's table on the host: an id
    past its end would be clamped to the last row inside jit, silently."""
    def check(batch):
      task_ids = np.asarray(batch.get("task_id", -1))
      if task_ids.size and int(task_ids.max()) >= self.num_tasks:
        worst = int(task_ids.max())
        try:
          name = ids.name_of("task_ids", worst)
        except KeyError:
          name = "?"
        raise ValueError(f"MOELoRA.num_tasks={self.num_tasks}, but the data has task_id {worst} ({name}); "
                         f"set MOELoRA.num_tasks to more than the largest task id (ids.json in MODEL_DIR)")
      return batch
    return check

  def gate(self, name=None) -> TaskGate:
    return TaskGate(self.num_tasks, self.task_dim, self.num_experts, self.top_k, self.gate_init,
                    self.task_padding_row, name=name)

  def model_hook(self, name):
    return self.gate(name)

  def site(self, info, name):
    if info.kind not in self.targets:
      return None
    return MOELoRASite(info, self.num_experts, self.rank // self.num_experts, self.scale, self.a_init,
                       self.dropout_rate, name=name)

  def merge_task(self, params, task_id: int):
    """Backbone params with task `task_id`'s weights folded in (no adapters left)."""
    if layer_layout.is_scanned(params):  # merge layer by layer, then stack back
      return layer_layout.stack_layers(self.merge_task(layer_layout.unstack_layers(params), task_id))
    gate_key = next((k for k in GATE_NAMES if k in params), None)
    if gate_key is None:
      raise KeyError(f"no MOELoRA gate in params (looked for {GATE_NAMES})")
    w = self.gate().apply({"params": params[gate_key]}, jnp.asarray([task_id]), method="weights")[0]
    flat = traverse_util.flatten_dict({k: v for k, v in params.items() if k != gate_key})
    merged = {k: v for k, v in flat.items() if not any(p.endswith("_adapter") for p in k)}
    sites_seen = {k[:k.index(p) + 1] for k in flat for p in k if p.endswith("_adapter")}
    for site_path in sites_seen:
      kind = site_path[-1][: -len("_adapter")]
      kernel_key = site_path[:-1] + (sites.kernel_name(kind), "kernel")
      a = flat[site_path + ("experts", "lora_a")]
      b = flat[site_path + ("experts", "lora_b")]
      n, r = a.shape[0], a.shape[-1]
      delta = jnp.einsum("e,efr,ero->fo", w, a.reshape(n, -1, r), b.reshape(n, r, -1))
      base = merged[kernel_key]
      merged[kernel_key] = (base + self.scale * delta.reshape(base.shape)).astype(base.dtype)
    return traverse_util.unflatten_dict(merged)
