"""python -m moe_jax.export --gin_file=gin_configs/runs/export.gin --gin_file=<model/method .gin> \\
    --gin.CHECKPOINT_PATH=<run>/checkpoints --gin.EXPORT_DIR=<out> [--gin.MERGE_TASKS="['super_glue_rte']"]

Writes EXPORT_DIR/adapters.safetensors: only the trained (adapter and router)
parameters of a run, a few MB even for a 3B backbone, keyed by their
"/"-joined parameter paths. For MOELoRA runs, MERGE_TASKS lists dataset keys
(as in the run's ids.json) whose task weights are folded into the backbone
and written as Hugging Face checkpoints EXPORT_DIR/merged/<key>/ (zero
inference overhead; transformers loads them). Every output appears whole or
not at all.
"""
from moe_jax import gin_utils
from moe_jax.evaluation import adapter_export


def main() -> None:
  adapter_export.export()


if __name__ == "__main__":
  gin_utils.exit_process(gin_utils.run(main))
