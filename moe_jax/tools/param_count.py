"""Trainable-parameter accounting from the real modules' shapes (no memory).

    python -m moe_jax.param_count --model=t5_1_1_xl [--presets=ia3,mov_10]

prints `<preset> <trainable_params> <percent_of_backbone>` per method preset.
Shapes come from `jax.eval_shape` of the adapted model's init, so the counts
are exactly what training would create.
"""
from __future__ import annotations

import sys

from flax import linen as nn

from moe_jax.models import build_model, get_preset
from moe_jax.peft import PRESETS
from moe_jax.peft.trainable import count, trainable_mask
from moe_jax.utils import cli


def _abstract_params(model):
  return nn.unbox(model.abstract_variables()["params"])


def table(model_name: str, presets=None) -> list[tuple[str, int, float]]:
  config = get_preset(model_name)
  backbone = count(_abstract_params(build_model(config)))
  rows = []
  for name in presets or PRESETS:
    if name not in PRESETS:
      raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    params = _abstract_params(build_model(config, PRESETS[name]))
    n = count(params, trainable_mask(params))
    rows.append((name, n, 100.0 * n / backbone))
  return rows


def main(argv=None) -> int:
  parser = cli.parser(__doc__)
  parser.add_argument("--model", default="t5_1_1_xl", help="model preset (moe_jax.models.configs.PRESETS)")
  parser.add_argument("--presets", default=None, help="comma-separated method presets (default: all)")
  args = parser.parse_args(argv)
  try:
    rows = table(args.model, args.presets.split(",") if args.presets else None)
  except (KeyError, ValueError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  for name, n, pct in rows:
    print(f"{name} {n} {pct:.4f}%")
  return 0


if __name__ == "__main__":
  sys.exit(main())
