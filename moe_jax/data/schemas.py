"""The Hugging Face `datasets` schema of the data kit's datasets (field -> JSON
kind), so a JSONL file whose field has another type is refused even when every
row agrees (a column of numbers where the templates expect text renders
without complaint, and trains on nonsense).

Source: the features of each dataset's HF builder, as ../shared/data/README.md
("Field schema") lists them for the kit; `str` is a JSON string, `int` a
number, `list[...]` a list, `{...}` an object. Only fields listed are checked.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

S, N, L, O = "a string", "a number", "a list", "an object"
_NLI = {"premise": S, "hypothesis": S, "idx": N, "label": N}
_ARC = {"id": S, "question": S, "choices": O, "answerKey": S}

SCHEMAS: dict[tuple[str, Optional[str]], dict[str, str]] = {
    ("super_glue", "cb"): _NLI,
    ("super_glue", "rte"): _NLI,
    ("super_glue", "copa"): {"premise": S, "choice1": S, "choice2": S, "question": S, "idx": N, "label": N},
    ("super_glue", "wic"): {"word": S, "sentence1": S, "sentence2": S, "start1": N, "start2": N, "end1": N,
                            "end2": N, "idx": N, "label": N},
    ("super_glue", "wsc.fixed"): {"text": S, "span1_index": N, "span2_index": N, "span1_text": S,
                                  "span2_text": S, "idx": N, "label": N},
    ("super_glue", "boolq"): {"question": S, "passage": S, "idx": N, "label": N},
    ("super_glue", "multirc"): {"paragraph": S, "question": S, "answer": S, "idx": O, "label": N},
    ("anli", None): {"uid": S, "premise": S, "hypothesis": S, "label": N, "reason": S},
    ("hellaswag", None): {"ind": N, "activity_label": S, "ctx_a": S, "ctx_b": S, "ctx": S, "endings": L,
                          "source_id": S, "split": S, "split_type": S, "label": S},
    ("winogrande", "winogrande_xl"): {"sentence": S, "option1": S, "option2": S, "answer": S},
    ("commonsense_qa", None): {"id": S, "question": S, "question_concept": S, "choices": O, "answerKey": S},
    ("dream", None): {"id": N, "dialogue_id": S, "dialogue": L, "question": S, "choice": L, "answer": S},
    ("quail", None): {"id": S, "context_id": S, "question_id": S, "domain": S, "metadata": O, "context": S,
                      "question": S, "question_type": S, "answers": L, "correct_answer_id": N},
    ("social_i_qa", None): {"context": S, "question": S, "answerA": S, "answerB": S, "answerC": S, "label": S},
    ("cosmos_qa", None): {"id": S, "context": S, "question": S, "answer0": S, "answer1": S, "answer2": S,
                          "answer3": S, "label": N},
    ("trec", None): {"text": S, "label_coarse": N, "label_fine": N},
    ("rotten_tomatoes", None): {"text": S, "label": N},
    ("ag_news", None): {"text": S, "label": N},
    ("glue", "mrpc"): {"sentence1": S, "sentence2": S, "label": N, "idx": N},
    ("common_gen", None): {"concept_set_idx": N, "concepts": L, "target": S},
    ("samsum", None): {"id": S, "dialogue": S, "summary": S},
    ("wiki_qa", None): {"question_id": S, "question": S, "document_title": S, "answer": S, "label": N},
    ("piqa", None): {"goal": S, "sol1": S, "sol2": S, "label": N},
    ("ai2_arc", "ARC-Challenge"): _ARC,
    ("ai2_arc", "ARC-Easy"): _ARC,
    ("openbookqa", "main"): {"id": S, "question_stem": S, "choices": O, "answerKey": S},
}


def kind(value) -> Optional[str]:
  if value is None:
    return None
  if isinstance(value, bool):
    return "a boolean"
  if isinstance(value, (int, float)):
    return N
  return {str: S, list: L, dict: O}.get(type(value), type(value).__name__)


def check(rows: Sequence[dict], where: str, dataset: str, subset: Optional[str]) -> None:
  """Raises ValueError naming the file, row and field whose type is not the
  schema's. The reader has already made each field's type agree across rows,
  so the first non-null value of a field speaks for all of them."""
  schema = SCHEMAS.get((dataset, subset))
  if not schema:
    return
  pending = dict(schema)
  for i, row in enumerate(rows):
    for field in list(pending):
      got = kind(row.get(field))
      if got is None:
        continue
      if got != pending[field]:
        hf = dataset if subset is None else f"{dataset}/{subset}"
        raise ValueError(f"{where}:{i + 1}: field {field!r} is {got} ({json.dumps(row[field])[:40]}), but "
                         f"{hf}'s schema has {pending[field]} there (every row of the file has {got})")
      del pending[field]
    if not pending:
      return
