"""A user's own seqio Task, written the usual way (the worked example of
docs/own_tasks.md). moe-jax imports it through MIXTURE_OR_TASK_MODULE:

  PYTHONPATH=tests/data/user_task python -m moe_jax.train --gin_file=gin_configs/demo.gin \
    --gin.MIXTURE_OR_TASK_MODULE=my_tasks --gin.MIXTURE_OR_TASK_NAME=my_arithmetic \
    --gin.MODEL_DIR=/tmp/my_run
"""

import seqio
import tensorflow as tf

from moe_jax import paths

ROWS = [("two plus two", "four"), ("three plus one", "four"), ("one plus one", "two"),
        ("two plus one", "three"), ("zero plus two", "two"), ("one plus two", "three"),
        ("three plus zero", "three"), ("one plus zero", "one")]


def _rows(split, shuffle_files, seed=None):
  del shuffle_files, seed
  rows = ROWS[:6] if split == "train" else ROWS[6:]
  return tf.data.Dataset.from_tensor_slices({"question": [q for q, _ in rows], "answer": [a for _, a in rows]})


def _to_text(dataset):
  return dataset.map(lambda ex: {"inputs": tf.strings.join(["What is ", ex["question"], "?"]),
                                 "targets": ex["answer"]})


# The T5 SentencePiece model (the data kit's copy here; gs://t5-data/... on a pod).
VOCABULARY = seqio.SentencePieceVocabulary(paths.vocabulary_path(), extra_ids=100)

seqio.TaskRegistry.add(
    "my_arithmetic",
    source=seqio.FunctionDataSource(_rows, splits=["train", "validation"]),
    preprocessors=[_to_text, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    output_features={"inputs": seqio.Feature(VOCABULARY, add_eos=True),
                     "targets": seqio.Feature(VOCABULARY, add_eos=True)})
