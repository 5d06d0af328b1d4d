"""What a trained run is used for: zero-shot scoring of a suite (`evaluator`,
what `python -m moe_jax.eval` and training's periodic evaluation run),
decoding (`inference`, behind `python -m moe_jax.infer`), adapter-only and
MOELoRA per-task merged exports (`adapter_export`, behind `python -m
moe_jax.export`) and the router plots (`plots`).

This package sits above training/ (it restores checkpoints through it) and
below the entry points and gin_utils (which configure it).
`moe_jax.evaluation.evaluate` and friends stay importable from here, as they
were when this was one module.
"""
from moe_jax.evaluation.evaluator import EvalProgress, ZeroShotEvaluator, evaluate  # noqa: F401
