"""python -m moe_jax.train --gin_file=gin_configs/demo.gin --gin.MODEL_DIR=/tmp/run [--gin.KEY=VALUE ...]

Trains (or resumes) the configured run; see gin_configs/runs/finetune.gin.
"""

import os

import jax

from moe_jax import gin_utils
from moe_jax.data import user_tasks
from moe_jax.training import trainer


def main() -> None:
  if os.environ.get("MOE_JAX_DISTRIBUTED"):  # set by launch/*.sh on every host
    jax.distributed.initialize()  # TPU slices and SLURM are auto-detected
  user_tasks.register_tasks()  # moe-jax's tasks, then MIXTURE_OR_TASK_MODULE and CUSTOM_TASKS
  trainer.train(model=gin_utils.model())


if __name__ == "__main__":
  gin_utils.exit_process(gin_utils.run(main))
