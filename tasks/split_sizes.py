"""Published train split sizes of T0's training datasets (rows of the Hugging
Face `datasets` train split), used for the mixing rates without reading data.

Source: the `train_size` column of T0's dataset table,
github.com/bigscience-workshop/t-zero @ 7a699e3ba15c1aeccf5b99cf2e2df3790f0dffce,
t0/datasets.csv (the same column as the MoV paper's copy,
github.com/for-ai/parameter-efficient-moe @ e2683fe, t0_data/datasets.csv; T0's
own caps are computed from it). These are the split sizes of the HF `datasets`
builders at T0's time (e.g. glue/mrpc 3,668, imdb 25,000, ag_news 120,000:
the sizes in each dataset's card / dataset_infos.json).
"""

TRAIN_SIZES = {
    # paraphrase identification
    ("glue", "mrpc"): 3_668,
    ("glue", "qqp"): 363_846,
    ("paws", "labeled_final"): 49_401,
    # closed-book QA
    ("kilt_tasks", "hotpotqa"): 88_869,
    ("wiki_qa", None): 20_360,
    # extractive QA
    ("adversarial_qa", "dbidaf"): 10_000,
    ("adversarial_qa", "dbert"): 10_000,
    ("adversarial_qa", "droberta"): 10_000,
    ("duorc", "SelfRC"): 60_721,
    ("duorc", "ParaphraseRC"): 69_524,
    ("ropes", None): 10_924,
    ("quoref", None): 19_399,
    # multiple-choice QA
    ("cos_e", "v1.11"): 9_741,
    ("cosmos_qa", None): 25_262,
    ("dream", None): 6_116,
    ("qasc", None): 8_134,
    ("quail", None): 10_246,
    ("quarel", None): 1_941,
    ("quartz", None): 2_696,
    ("sciq", None): 11_679,
    ("social_i_qa", None): 33_410,
    ("wiki_hop", "original"): 43_738,
    ("wiqa", None): 29_808,
    # sentiment
    ("amazon_polarity", None): 3_600_000,
    ("app_reviews", None): 288_065,
    ("imdb", None): 25_000,
    ("rotten_tomatoes", None): 8_530,
    ("yelp_review_full", None): 650_000,
    # structure to text
    ("common_gen", None): 67_389,
    ("wiki_bio", None): 582_659,
    # summarisation
    ("cnn_dailymail", "3.0.0"): 287_113,
    ("gigaword", None): 3_803_957,
    ("multi_news", None): 44_972,
    ("samsum", None): 14_732,
    ("xsum", None): 204_045,
    # topic classification
    ("ag_news", None): 120_000,
    ("dbpedia_14", None): 560_000,
    ("trec", None): 5_452,
}

# The datasets T0+ and T0++ add, from the same table (do_train GPT_EVAL; SGLUE).
EXTRA_TRAIN_SIZES = {
    # T0+ adds (do_train GPT_EVAL)
    ("ai2_arc", "ARC-Challenge"): 1_119,
    ("ai2_arc", "ARC-Easy"): 2_251,
    ("trivia_qa", "unfiltered"): 87_622,
    ("web_questions", None): 3_778,
    ("squad_v2", None): 130_319,
    ("openbookqa", "main"): 4_957,
    ("race", "high"): 62_445,
    ("race", "middle"): 25_421,
    ("piqa", None): 16_113,
    ("hellaswag", None): 39_905,
    # T0++ adds (do_train SGLUE)
    ("super_glue", "record"): 100_730,
    ("super_glue", "boolq"): 9_427,
    ("super_glue", "copa"): 400,
    ("super_glue", "multirc"): 27_243,
    ("super_glue", "wic"): 5_428,
    ("super_glue", "wsc.fixed"): 554,
}


def train_size(dataset: str, subset) -> int:
  try:
    return {**TRAIN_SIZES, **EXTRA_TRAIN_SIZES}[(dataset, subset)]
  except KeyError:
    name = dataset if subset is None else f"{dataset}/{subset}"
    raise KeyError(f"no published train size for {name} in tasks/split_sizes.py") from None
