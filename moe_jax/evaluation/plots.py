"""Mean expert probabilities per task and layer (as the MoV/MOELoRA papers plot)."""
from __future__ import annotations

import io

from flax import traverse_util
import numpy as np

from moe_jax import adapters as sites
from moe_jax.models import layer_layout
from moe_jax.utils import fs


def router_probabilities(model, params, batch) -> dict[str, np.ndarray]:
  """{router path: mean expert probabilities [E]} over the batch's examples."""
  _, stats = model.apply_with_state(params, batch, mutable=(sites.ROUTER_STATS_COLLECTION,))
  flat = traverse_util.flatten_dict(layer_layout.unstack_layers(stats.get(sites.ROUTER_STATS_COLLECTION, {})))
  out = {}
  for path, value in flat.items():
    probs = np.asarray(value[0] if isinstance(value, tuple) else value)
    if probs.ndim == 2:
      out["/".join(p for p in path[:-1] if not p.endswith("router"))] = probs.mean(0)
  return out


_SHORT = (("encoder_decoder_attention", "cross"), ("self_attention", "self"), ("attention", "attn"),
          ("encoder", "enc"), ("decoder", "dec"), ("layers_", ""), ("_adapter", ""), ("/", " "))


def short_name(router_path: str) -> str:
  """'decoder/layers_1/encoder_decoder_attention/k_adapter' -> 'dec 1 cross k'."""
  for long, short in _SHORT:
    router_path = router_path.replace(long, short)
  return router_path


def expert_heatmaps(per_task: dict[str, dict[str, np.ndarray]], path: str, title: str = "") -> str:
  """One panel per task: routers (rows, by layer) x experts (columns). Written atomically."""
  # matplotlib loads only to draw
  import matplotlib
  matplotlib.use("Agg")
  # pyplot after the backend is chosen: no display on a pod or in CI
  import matplotlib.pyplot as plt
  tasks = [t for t, p in per_task.items() if p]
  if not tasks:
    raise ValueError("no router statistics to plot (the method has no routers)")
  routers = list(per_task[tasks[0]])  # model order: encoder, then decoder, by layer
  experts = max(len(v) for v in per_task[tasks[0]].values())
  fig, axes = plt.subplots(1, len(tasks), figsize=(2.0 + 1.4 * len(tasks), 1.2 + 0.16 * len(routers)),
                           squeeze=False, layout="constrained")
  for ax, task in zip(axes[0], tasks):
    grid = np.full((len(routers), experts), np.nan)
    for i, r in enumerate(routers):
      v = per_task[task].get(r)
      if v is not None:
        grid[i, :len(v)] = v
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0)
    ax.set_title(task, fontsize=7)
    ax.set_xlabel("expert", fontsize=6)
    ax.tick_params(labelsize=5)
    ax.set_yticks(range(len(routers)))
    ax.set_yticklabels([short_name(r) for r in routers] if ax is axes[0][0] else [], fontsize=5)
  fig.colorbar(im, ax=axes[0].tolist(), shrink=0.6, pad=0.01)
  fig.suptitle(title or "mean expert probability per task and layer", fontsize=8)

  fs.makedirs(fs.dirname(path))
  buf = io.BytesIO()
  fig.savefig(buf, dpi=150, format="png")
  plt.close(fig)
  fs.write_bytes(path, buf.getvalue())
  return path
