"""python -m moe_jax.infer --gin_file=gin_configs/runs/infer.gin --gin_file=<model/method .gin> \\
    --gin.CHECKPOINT_PATH=... --gin.MODEL_DIR=<out> --gin.INFER_INPUTS=<file.jsonl or seqio task>

Decodes with `predict_batch` (greedy or beam), T5 and Llama-family models
alike: prompts are tokenised as training tokenises them (T5 vocabulary, EOS
appended); a decoder-only model continues them as a prefix LM. Inputs: a
JSONL file whose lines have "inputs" (and optionally "task_id", and the MoA
domain as "domain", a name, or "domain_id", the data's id), or a seqio task's
or mixture's split. MOELoRA runs are merged per task first (zero-overhead
inference: a plain backbone per task); MoA routes each row by its own domain
(`given`) or by its routers' vote; MiLoRA and MoA route once per prompt (the
decision is cached with the KV cache at prefill). Writes
MODEL_DIR/infer/predictions.jsonl atomically. The configurable pieces live in
moe_jax/evaluation/inference.py.
"""
from moe_jax import gin_utils
from moe_jax.evaluation import inference


def main() -> None:
  inference.infer()


if __name__ == "__main__":
  gin_utils.exit_process(gin_utils.run(main))
