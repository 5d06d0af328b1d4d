"""python -m moe_jax.eval --gin_file=gin_configs/runs/eval.gin --gin_file=<model/method .gin> \\
    --gin.CHECKPOINT_PATH=<run>/checkpoints (or an HF directory) --gin.MODEL_DIR=<out>

Zero-shot rank classification on the held-out suite; writes
MODEL_DIR/eval/zero_shot.{json,md} and, for routed methods, expert_probs.png.
The configurable pieces live in moe_jax/evaluation/evaluator.py.
"""
from moe_jax import evaluation, gin_utils
from moe_jax.data import user_tasks


def main() -> None:
  user_tasks.register_tasks()  # before the evaluator is built: the user's tasks may add a suite
  evaluation.evaluate()


if __name__ == "__main__":
  gin_utils.exit_process(gin_utils.run(main))
