"""Your own tasks (docs/own_tasks.md): a seqio module through
MIXTURE_OR_TASK_MODULE, a gin-only task from a file and a template mixed with
a T0 task and scored by the evaluator, any promptsource dataset, and T0+/T0++.
The worked example's files are in tests/data/user_task/."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from moe_jax import paths
from tests.inprocess import run_entry

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "user_task")
REPO = paths.REPO_ROOT
SHORT = ["--gin_file=gin_configs/demo.gin", "--gin.EVALUATOR=None", "--gin.BATCH_SIZE=4", "--gin.TRAIN_STEPS=3",
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--gin.CHECKPOINT_PERIOD=3", "--gin.LOG_PERIOD=1"]


def _steps(run):
  return [json.loads(l)["step"] for l in open(run / "train_metrics.jsonl")]


@pytest.fixture
def module_dir(tmp_path):
  """The user's module in a directory of its own, outside the repository."""
  d = tmp_path / "mine"
  d.mkdir()
  shutil.copy(os.path.join(HERE, "my_tasks.py"), d / "my_tasks.py")
  return d


def test_a_users_seqio_module_trains_with_moelora_through_python_m(tmp_path, module_dir):
  """The module knows nothing of moe-jax's features: MOELoRA's task_id is
  supplied, one id for the task (ids.json), on every row."""
  env = dict(os.environ, PYTHONPATH=f"{module_dir}{os.pathsep}{REPO}", HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  run = tmp_path / "moelora"
  proc = subprocess.run([sys.executable, "-m", "moe_jax.train", *SHORT, "--gin.MIXTURE_OR_TASK_MODULE=my_tasks",
                         "--gin.MIXTURE_OR_TASK_NAME=my_arithmetic", "--gin_file=gin_configs/methods/moelora.gin",
                         f"--gin.MODEL_DIR={run}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _steps(run) == [1, 2, 3] and (run / "checkpoints" / "3").is_dir()
  task_id = json.load(open(run / "ids.json"))["task_ids"]["my_arithmetic"]
  for line in open(run / "train_metrics.jsonl"):
    assert list(json.loads(line)["task_loss"]) == [str(task_id)]


def test_a_gin_task_and_a_module_task_train_with_mov_mixed_with_t0_and_are_scored(tmp_path, module_dir, capsys):
  """reviews.gin's task and mixture, the module's task added to the mixture,
  MoV (demo.gin), then the evaluator on the suite the gin task joins."""
  run = tmp_path / "run"
  sys.path.insert(0, str(module_dir))  # as PYTHONPATH does for `python -m`
  try:
    assert run_entry("train", [*SHORT, "--gin.BATCH_SIZE=8", "--gin_file=tests/data/user_task/reviews.gin",
                               "--gin.MIXTURE_OR_TASK_MODULE=my_tasks",
                               "--gin.mix/mixture.members={'rotten_tomatoes_Reviewer_Enjoyment': 3, 'my_reviews': 1, "
                               "'my_arithmetic': 1}",
                               "--gin.MIXTURE_OR_TASK_NAME=t0_kit_and_reviews", f"--gin.MODEL_DIR={run}",
                               "--gin.EVALUATOR=@ZeroShotEvaluator()", "--gin.EVAL_SUITE='my_suite'",
                               "--gin.EVAL_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}"]) == 0
  finally:
    sys.path.remove(str(module_dir))
  import seqio
  mix = seqio.get_mixture_or_task("t0_kit_and_reviews")
  assert {t.name: mix.get_rate(t) for t in mix.tasks} == {
      "my_arithmetic": 1.0, "my_reviews": 1.0, "rotten_tomatoes_Reviewer_Enjoyment": 3.0}
  ids = json.load(open(run / "ids.json"))["task_ids"]
  seen = set()
  for line in open(run / "train_metrics.jsonl"):
    seen |= set(json.loads(line)["task_loss"])
  # All three were trained on (3 steps of 8 rows, drawn 3:1:1).
  assert seen == {str(ids[k]) for k in ("my_arithmetic", "my_reviews", "rotten_tomatoes")}
  report = json.load(open(run / "eval" / "zero_shot.json"))
  (scored,) = report["datasets"]
  assert scored["dataset"] == "my_reviews" and scored["templates"][0]["examples"] == 4  # the validation file
  assert report["step"] == 3 and "| my_reviews | 1 | 4 |" in capsys.readouterr().out


def test_the_gin_task_renders_each_row_with_its_template():
  """The registered task's examples are the template applied to the file's rows,
  checked against promptsource's Template on the same rows."""
  from promptsource.templates import Template

  from moe_jax import gin_utils
  from moe_jax.data import p3, user_tasks, vocab
  from tests.inprocess import restored_state
  with restored_state():
    gin_utils.configure([*SHORT, "--gin_file=tests/data/user_task/reviews.gin", "--gin.MODEL_DIR=/tmp/unused"])
    user_tasks.register_tasks()
    spec, template = p3._TEMPLATES["my_reviews"]
    rows = [json.loads(l) for l in open(os.path.join(HERE, "reviews.validation.jsonl"))]
    reference = Template("r", "Review: {{text}} Is this review positive or negative? ||| {{answer_choices[label]}}",
                         "", answer_choices="negative ||| positive")
    got = p3.sample_score_rows("my_reviews_score_eval", "validation", len(rows))
  by_idx = {}
  for r in got:
    by_idx.setdefault(r["idx"], []).append(r)
  assert sorted(by_idx) == list(range(len(rows)))
  v = vocab.t5_vocabulary()
  for i, row in enumerate(rows):
    inputs, target = reference.apply(row)
    assert [v.decode(list(r["inputs"][:-1])) for r in by_idx[i]] == [inputs, inputs]  # one row per choice
    assert [v.decode(list(r["targets"][:-1])) for r in by_idx[i]] == ["negative", "positive"]
    correct = [r["choice_idx"] for r in by_idx[i] if r["is_correct"]]
    assert correct == [row["label"]] and ["negative", "positive"][row["label"]] == target


def test_any_promptsource_dataset_registers_every_template(tmp_path, capsys):
  """super_glue/multirc is in no suite: all of promptsource's templates become
  tasks (P3 names) and a mixture; the first example renders as promptsource does."""
  from promptsource.templates import DatasetTemplates

  from moe_jax.data import custom_tasks, templates
  import seqio
  import tasks  # noqa: F401
  spec = custom_tasks.promptsource_dataset("super_glue/multirc", splits={"train": "train"})
  spec.register()
  names = DatasetTemplates("super_glue", "multirc").all_template_names
  mix = seqio.get_mixture_or_task("super_glue_multirc")
  assert len(names) > 5 and sorted(t.name for t in mix.tasks) == sorted(
      templates.task_name("super_glue", "multirc", n) for n in names)
  first_row = json.loads(open(os.path.join(paths.data_dir(), "super_glue", "multirc", "train.jsonl")).readline())
  name = sorted(names)[0]
  task = seqio.get_mixture_or_task(templates.task_name("super_glue", "multirc", name))
  ex = next(task.get_dataset(split="train", shuffle=False, sequence_length=None).as_numpy_iterator())
  inputs, target = DatasetTemplates("super_glue", "multirc")[name].apply(first_row)
  assert ex["inputs_pretokenized"].decode() == inputs and ex["targets_pretokenized"].decode() == target
  # freebase_qa (in no suite) has 5 templates, 2 of them not for its original
  # task: all 5 are registered unless original_task_only is asked for.
  custom_tasks.promptsource_dataset("freebase_qa").register()
  every = DatasetTemplates("freebase_qa").templates.values()
  assert len(every) == 5 and sum(t.metadata.original_task for t in every) == 3
  assert len(seqio.get_mixture_or_task("freebase_qa").tasks) == 5


@pytest.mark.parametrize("mixture, datasets, absent", [
    ("t0_plus_train", 48, {"trivia_qa_unfiltered", "web_questions", "squad_v2", "race_high", "race_middle",
                           "piqa", "hellaswag"}),
    ("t0_plus_plus_train", 54, {"super_glue_record"}),
])
def test_t0_plus_and_t0_plus_plus_report_what_the_kit_lacks(mixture, datasets, absent, capsys):
  from moe_jax.data import inspect
  assert inspect.main([f"--mixture={mixture}"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["datasets"] == datasets  # T0's 38 plus T0's table's GPT_EVAL (10) and SGLUE (6) rows
  assert absent <= set(summary["missing"])
  assert not {"ai2_arc_ARC-Easy", "openbookqa_main", "super_glue_boolq"} & set(summary["missing"])


def test_moelora_refuses_a_task_id_past_its_gate_table():
  """More tasks (a user's, T0++) than MOELoRA.num_tasks: inside jit the id would
  be clamped to the last row; the trainer's host step refuses it by name."""
  from moe_jax.peft.moelora import MOELoRA
  check = MOELoRA(num_experts=2, rank=4, num_tasks=4).batch_preparer()
  batch = {"task_id": np.array([0, 3, 1])}
  assert check(batch) is batch
  with pytest.raises(ValueError, match=r"MOELoRA.num_tasks=4, but the data has task_id 4 .*set MOELoRA.num_tasks"):
    check({"task_id": np.array([0, 4])})


def test_the_planner_imports_the_task_module_and_resolves_the_task(module_dir, capsys):
  from moe_jax import plan
  from tests.inprocess import restored_state
  base = ["--devices=1", *SHORT, "--gin.MODEL_DIR=/tmp/unused"]
  sys.path.insert(0, str(module_dir))
  try:
    with restored_state():
      assert plan.main([*base, "--gin.MIXTURE_OR_TASK_MODULE=my_tasks", "--gin.MIXTURE_OR_TASK_NAME=my_arithmetc"]) == 2
    assert "close matches: ['my_arithmetic']" in capsys.readouterr().err  # the module's task is known
    with restored_state():
      assert plan.main([*base, "--gin.MIXTURE_OR_TASK_MODULE=my_taks"]) == 2
    assert "MIXTURE_OR_TASK_MODULE: cannot import 'my_taks'" in capsys.readouterr().err
  finally:
    sys.path.remove(str(module_dir))
