"""Dataset specs of the T0 training mixture, the held-out zero-shot suite and
the commonsense suite (which split backs which seqio split, the P3 name suffix,
the category used as MoA domain, the kit's stand-in splits)."""
from moe_jax.data.p3 import DatasetSpec


def _spec(dataset, subset, splits, category, key=None, suffix="", kit=()):
  key = key or (dataset if subset is None else f"{dataset}_{subset}")
  return DatasetSpec(dataset, subset, tuple(splits), key, category, suffix, tuple(kit))


_TRAIN = [("train", "train")]
# T0's training mixture: the 38 datasets with do_train == BASE in T0's dataset
# table (bigscience-workshop/t-zero, t0/datasets.csv), with its categories
# (task_by_convention, our MoA domains), every split the HF train split.
# `kit`: the JSONL kit lacks the train split of QuAIL, Cosmos QA (dev stands
# in), SAMSum and AG News (test stands in); only the jsonl source uses these.
T0_TRAIN = [
    _spec("glue", "mrpc", _TRAIN, "paraphrase"),
    _spec("glue", "qqp", _TRAIN, "paraphrase"),
    _spec("paws", "labeled_final", _TRAIN, "paraphrase"),
    _spec("kilt_tasks", "hotpotqa", _TRAIN, "QA_closed_book"),
    _spec("wiki_qa", None, _TRAIN, "QA_closed_book"),
    _spec("adversarial_qa", "dbidaf", _TRAIN, "QA_extractive"),
    _spec("adversarial_qa", "dbert", _TRAIN, "QA_extractive"),
    _spec("adversarial_qa", "droberta", _TRAIN, "QA_extractive"),
    _spec("duorc", "SelfRC", _TRAIN, "QA_extractive"),
    _spec("duorc", "ParaphraseRC", _TRAIN, "QA_extractive"),
    _spec("ropes", None, _TRAIN, "QA_extractive"),
    _spec("quoref", None, _TRAIN, "QA_extractive"),
    _spec("cos_e", "v1.11", _TRAIN, "QA_multiple_choice"),
    _spec("cosmos_qa", None, _TRAIN, "QA_multiple_choice", kit=[("train", "validation")]),
    _spec("dream", None, _TRAIN, "QA_multiple_choice"),
    _spec("qasc", None, _TRAIN, "QA_multiple_choice"),
    _spec("quail", None, _TRAIN, "QA_multiple_choice", kit=[("train", "validation")]),
    _spec("quarel", None, _TRAIN, "QA_multiple_choice"),
    _spec("quartz", None, _TRAIN, "QA_multiple_choice"),
    _spec("sciq", None, _TRAIN, "QA_multiple_choice"),
    _spec("social_i_qa", None, [("train", "train"), ("validation", "validation")], "QA_multiple_choice"),
    _spec("wiki_hop", "original", _TRAIN, "QA_multiple_choice"),
    _spec("wiqa", None, _TRAIN, "QA_multiple_choice"),
    _spec("amazon_polarity", None, _TRAIN, "sentiment"),
    _spec("app_reviews", None, _TRAIN, "sentiment"),
    _spec("imdb", None, _TRAIN, "sentiment"),
    _spec("rotten_tomatoes", None, _TRAIN, "sentiment"),
    _spec("yelp_review_full", None, _TRAIN, "sentiment"),
    _spec("common_gen", None, _TRAIN, "structure_to_text"),
    _spec("wiki_bio", None, _TRAIN, "structure_to_text"),
    _spec("cnn_dailymail", "3.0.0", _TRAIN, "summarization"),
    _spec("gigaword", None, _TRAIN, "summarization"),
    _spec("multi_news", None, _TRAIN, "summarization"),
    _spec("samsum", None, _TRAIN, "summarization", kit=[("train", "test")]),
    _spec("xsum", None, _TRAIN, "summarization"),
    _spec("ag_news", None, _TRAIN, "topic_classification", kit=[("train", "test")]),
    _spec("dbpedia_14", None, _TRAIN, "topic_classification"),
    _spec("trec", None, _TRAIN, "topic_classification"),
]

# The held-out suite of T0 and the MoV paper: validation splits (ANLI: dev).
HELD_OUT = [
    _spec("anli", None, [("validation", "dev_r1")], "NLI", key="anli_r1", suffix="_r1"),
    _spec("anli", None, [("validation", "dev_r2")], "NLI", key="anli_r2", suffix="_r2"),
    _spec("anli", None, [("validation", "dev_r3")], "NLI", key="anli_r3", suffix="_r3"),
    _spec("hellaswag", None, [("validation", "validation")], "story_completion"),
    _spec("winogrande", "winogrande_xl", [("validation", "validation")], "coreference"),
    _spec("super_glue", "cb", [("validation", "validation")], "NLI"),
    _spec("super_glue", "rte", [("validation", "validation")], "NLI"),
    _spec("super_glue", "copa", [("validation", "validation")], "QA_multiple_choice"),
    _spec("super_glue", "wic", [("validation", "validation")], "word_sense_disambiguation"),
    _spec("super_glue", "wsc.fixed", [("validation", "validation")], "coreference"),
    _spec("story_cloze", "2016", [("validation", "validation")], "story_completion"),
]

# MiLoRA's commonsense suite; eval splits as the LLM-Adapters release (ARC and
# OBQA: test; the others: validation).
COMMONSENSE = [
    _spec("ai2_arc", "ARC-Easy", [("train", "train"), ("test", "test")], "commonsense"),
    _spec("ai2_arc", "ARC-Challenge", [("train", "train"), ("test", "test")], "commonsense"),
    _spec("openbookqa", "main", [("train", "train"), ("test", "test")], "commonsense"),
    _spec("piqa", None, [("validation", "validation")], "commonsense"),
    _spec("super_glue", "boolq", [("train", "train"), ("validation", "validation")], "commonsense"),
    _spec("social_i_qa", None, [("train", "train"), ("validation", "validation")], "QA_multiple_choice"),
    _spec("winogrande", "winogrande_xl", [("validation", "validation")], "coreference"),
]
COMMONSENSE_EVAL_SPLIT = {"ai2_arc_ARC-Easy": "test", "ai2_arc_ARC-Challenge": "test",
                          "openbookqa_main": "test"}

# T0+ and T0++ (Sanh et al. 2022): T0's mixture plus the datasets T0's table
# marks do_train GPT_EVAL (T0+) and also SGLUE (T0++), with its categories.
# Splits: train, plus the split the other suites score on, since these
# specs replace theirs when registered (see tasks/registration.py).
_EVAL_TOO = [("train", "train"), ("validation", "validation")]
_TEST_TOO = [("train", "train"), ("test", "test")]
T0_PLUS_EXTRA = [
    _spec("ai2_arc", "ARC-Challenge", _TEST_TOO, "QA_closed_book"),
    _spec("ai2_arc", "ARC-Easy", _TEST_TOO, "QA_closed_book"),
    _spec("trivia_qa", "unfiltered", _TRAIN, "QA_closed_book"),
    _spec("web_questions", None, _TRAIN, "QA_closed_book"),
    _spec("squad_v2", None, _TRAIN, "QA_extractive"),
    _spec("openbookqa", "main", _TEST_TOO, "QA_multiple_choice"),
    _spec("race", "high", _TRAIN, "QA_multiple_choice"),
    _spec("race", "middle", _TRAIN, "QA_multiple_choice"),
    _spec("piqa", None, _EVAL_TOO, "QA_multiple_choice"),
    _spec("hellaswag", None, _EVAL_TOO, "story_completion"),
]
T0_PLUS_PLUS_EXTRA = [
    _spec("super_glue", "record", _TRAIN, "QA_extractive"),
    _spec("super_glue", "boolq", _EVAL_TOO, "QA_multiple_choice"),
    _spec("super_glue", "copa", _EVAL_TOO, "QA_multiple_choice"),
    _spec("super_glue", "multirc", _TRAIN, "QA_multiple_choice"),
    _spec("super_glue", "wic", _EVAL_TOO, "word_sense_disambiguation"),
    _spec("super_glue", "wsc.fixed", _EVAL_TOO, "coreference"),
]
