"""python -m moe_jax.eval --gin_file=gin_configs/runs/eval.gin --gin_file=<model/method .gin> \\
    --gin.CHECKPOINT_PATH=<run>/checkpoints (or an HF directory) --gin.MODEL_DIR=<out>

Zero-shot rank classification on the held-out suite; writes
MODEL_DIR/eval/zero_shot.{json,md} and, for routed methods, expert_probs.png.
"""
import sys

import gin

from moe_jax import gin_utils


@gin.configurable
def evaluate(checkpoint_path: str = gin.REQUIRED, evaluator=gin.REQUIRED):
  from moe_jax import trainer
  import tasks  # noqa: F401
  model = gin_utils.model()
  import jax
  params = model.init(jax.random.key(0))
  params, fresh = trainer._load_initial(model, params, checkpoint_path)
  if fresh:
    print(f"note: {len(fresh)} parameters are not in {checkpoint_path} and keep their initialisation")
  return evaluator(model, params, step=None)


def main() -> None:
  evaluate()


if __name__ == "__main__":
  gin_utils.exit_process(gin_utils.run(main))
