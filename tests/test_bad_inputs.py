"""Bad input across the entry points: exit status 2, one line `error: ...` that
names the cause, and the output directory exactly as it was.

Cases run in this process through the same function `python -m` runs
(`gin_utils.run(main)`, or the argparse `main(argv)`), so most cost a gin parse;
a few run as real subprocesses to prove the exit code and the one-line stderr
end to end. Resume, eval, infer and export cases share one small trained run
(`small_run`, conftest)."""
import os
import shutil
import subprocess
import sys

import pytest

from moe_jax import paths
from tests.inprocess import MODEL_FILES, SMALL_TRAIN, entry_main, restored_state, run_entry, snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RT_TRAIN = os.path.join(paths.data_dir(), "rotten_tomatoes", "_", "train.jsonl")
GOOD = [l for l in open(RT_TRAIN, "rb").readlines()[:3]]


class Ctx:
  """Paths a case builds its arguments from; `out` is the directory checked."""

  def __init__(self, tmp_path, small_run):
    self.tmp, self.small_run = tmp_path, small_run
    self.out = tmp_path / "out"  # absent unless a case creates it
    self.ckpt = small_run / "checkpoints"

  def file(self, name, data: bytes):
    p = self.tmp / name
    p.write_bytes(data)
    return p

  def data_dir(self, train_jsonl: bytes = None):
    """A data dir with the vocabulary and (optionally) rotten_tomatoes' train split."""
    d = self.tmp / "data"
    d.mkdir()
    os.symlink(os.path.join(paths.data_dir(), "t5_vocab"), d / "t5_vocab")
    if train_jsonl is not None:
      (d / "rotten_tomatoes" / "_").mkdir(parents=True)
      (d / "rotten_tomatoes" / "_" / "train.jsonl").write_bytes(train_jsonl)
    return d

  def module(self, source: str) -> str:
    """A module of the user's that fails to import, on sys.path; its name."""
    name = f"broken_tasks_{abs(hash(str(self.tmp)))}"
    (self.tmp / f"{name}.py").write_text(source + "\n")
    sys.path.insert(0, str(self.tmp))
    return name

  def run_copy(self):
    shutil.copytree(self.small_run, self.out)
    return self.out

  def empty_out(self):
    self.out.mkdir()
    return self.out


none = lambda c: []  # noqa: E731


def train(extra=none):
  return lambda c: ["train", [*SMALL_TRAIN, f"--gin.MODEL_DIR={c.out}", *extra(c)]]


def train_data(jsonl: bytes, *extra):
  def build(c):
    c.empty_out()  # an existing, empty MODEL_DIR must stay empty
    return ["train", [*SMALL_TRAIN, f"--gin.MODEL_DIR={c.out}", f"--gin.DATA_DIR={c.data_dir(jsonl)}", *extra]]
  return build


def resume(extra=none):
  def build(c):
    c.run_copy()
    return ["train", [*SMALL_TRAIN, f"--gin.MODEL_DIR={c.out}", "--gin.TRAIN_STEPS=6", *extra(c)]]
  return build


def evaluate(extra=none):
  return lambda c: ["eval", ["--gin_file=gin_configs/runs/eval.gin", *MODEL_FILES, f"--gin.MODEL_DIR={c.out}",
                             f"--gin.CHECKPOINT_PATH={c.ckpt}", "--gin.EVAL_DATASETS=['super_glue_cb']",
                             "--gin.EVAL_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
                             "--gin.EVAL_MAX_EXAMPLES_PER_TEMPLATE=1", *extra(c)]]


def infer(inputs, *extra):
  return lambda c: ["infer", ["--gin_file=gin_configs/runs/infer.gin", *MODEL_FILES, f"--gin.MODEL_DIR={c.out}",
                              f"--gin.CHECKPOINT_PATH={c.ckpt}", f"--gin.INFER_INPUTS={inputs(c)}", *extra]]


def export(extra=none):
  return lambda c: ["export", ["--gin_file=gin_configs/runs/export.gin", *MODEL_FILES, f"--gin.EXPORT_DIR={c.out}",
                               f"--gin.CHECKPOINT_PATH={c.ckpt}", *extra(c)]]


def zero_shot(extra=none):
  return lambda c: ["zero_shot", [f"--output_dir={c.out}", "--datasets=super_glue_cb", *extra(c)]]


def param_count(*args):
  return lambda c: ["param_count", list(args)]


def custom_task(binding: str, rows: bytes = b"", members: str = None):
  """A gin-only task (moe_jax.data.custom_tasks) over rotten_tomatoes rows plus
  `rows`, with one `template_task` binding under test; trained as a mixture
  member when `members` is given."""
  def build(c):
    data = c.file("rows.jsonl", b"".join(GOOD[:2]) + rows)
    gin = ["import moe_jax.data.custom_tasks",
           "t/template_task.name = 'my_task'", f"t/template_task.files = {{'train': '{data}'}}",
           "t/template_task.inputs = '{{text}}'", "t/template_task.targets = '{{answer_choices[label]}}'",
           "t/template_task.answer_choices = 'bad ||| good'", f"t/template_task.{binding}",
           "m/mixture.name = 'my_mix'", f"m/mixture.members = {members or {}}",
           "CUSTOM_TASKS = [@t/template_task()" + (", @m/mixture()]" if members else "]")]
    path = c.file("custom.gin", "\n".join(gin).encode())
    return ["train", [*SMALL_TRAIN, f"--gin_file={path}", f"--gin.MODEL_DIR={c.out}",
                      f"--gin.MIXTURE_OR_TASK_NAME={'my_mix' if members else 'my_task'}"]]
  return build


fixed = lambda *a: (lambda c: list(a))  # noqa: E731
jsonl_rows = lambda *rows: b"".join(GOOD[:2]) + b"".join(rows)  # noqa: E731

CASES = {
    # gin flags and files
    "unknown macro": (train(fixed("--gin.LEARNING_RAT=0.1")),
                      "no configuration uses the macro LEARNING_RAT; did you mean LEARNING_RATE"),
    "unknown macro, close to a list macro": (train(fixed("--gin.EVAL_DATASET=['super_glue_cb']")),
                                             "macro EVAL_DATASET; did you mean EVAL_DATASETS"),
    "unknown configurable parameter": (train(fixed("--gin.train.frobnicate=1")),
                                       "Configurable 'train' doesn't have a parameter named 'frobnicate'"),
    "unknown flag": (train(fixed("--model_dir=/tmp/x")), "unknown flag(s) ['--model_dir=/tmp/x']"),
    "missing gin file": (train(fixed("--gin_file=gin_configs/nope.gin")),
                         "--gin_file=gin_configs/nope.gin: not found (searched"),
    "no gin file": (lambda c: ["train", [f"--gin.MODEL_DIR={c.out}"]], "no --gin_file given"),
    # values: types, ranges, divisibility
    "zero train steps": (train(fixed("--gin.TRAIN_STEPS=0")), "TRAIN_STEPS must be a positive integer, got 0"),
    "negative train steps": (train(fixed("--gin.TRAIN_STEPS=-3")), "TRAIN_STEPS must be a positive integer, got -3"),
    "fractional train steps": (train(fixed("--gin.TRAIN_STEPS=2.5")), "TRAIN_STEPS must be a positive integer, got 2.5"),
    "zero batch size": (train(fixed("--gin.BATCH_SIZE=0")), "BATCH_SIZE must be a positive integer, got 0"),
    "grad accumulation not dividing the batch": (train(fixed("--gin.GRAD_ACCUM_STEPS=3")),
                                                 "GRAD_ACCUM_STEPS=3 does not divide BATCH_SIZE=4"),
    "non-numeric learning rate": (train(fixed("--gin.LEARNING_RATE=fast")),
                                  "LEARNING_RATE must be a number, got 'fast'"),
    "negative learning rate": (train(fixed("--gin.LEARNING_RATE=-0.1")), "LEARNING_RATE must be > 0, got -0.1"),
    "zero decay rate": (train(fixed("--gin.DECAY_RATE=0")), "DECAY_RATE must be > 0, got 0"),
    "negative seed": (train(fixed("--gin.train.seed=-1")), "train.seed must be an integer >= 0, got -1"),
    "negative shuffle seed": (train(fixed("--gin.train.shuffle_seed=-2")),
                              "train.shuffle_seed must be an integer >= 0, got -2"),
    "negative Adafactor step offset": (train(fixed("--gin.ADAFACTOR_STEP_OFFSET=-5")),
                                       "ADAFACTOR_STEP_OFFSET must be an integer >= 0, got -5"),
    "zero checkpoint period": (train(fixed("--gin.CHECKPOINT_PERIOD=0")),
                               "CHECKPOINT_PERIOD must be a positive integer, got 0"),
    "zero checkpoints kept": (train(fixed("--gin.KEEP_CHECKPOINTS=0")), "KEEP_CHECKPOINTS must be a positive integer"),
    "negative log period": (train(fixed("--gin.LOG_PERIOD=-1")), "LOG_PERIOD must be a positive integer, got -1"),
    "zero eval period": (train(fixed("--gin.EVAL_PERIOD=0")), "EVAL_PERIOD must be a positive integer or None"),
    "feature lengths lack targets": (train(fixed("--gin.TASK_FEATURE_LENGTHS={'inputs': 32}")),
                                     "TASK_FEATURE_LENGTHS lacks the key 'targets'"),
    "negative input length": (train(fixed("--gin.TASK_FEATURE_LENGTHS={'inputs': -32, 'targets': 8}")),
                              "TASK_FEATURE_LENGTHS['inputs'] must be a positive integer, got -32"),
    "zero target length": (train(fixed("--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 0}")),
                           "TASK_FEATURE_LENGTHS['targets'] must be a positive integer, got 0"),
    "feature lengths not a dict": (train(fixed("--gin.TASK_FEATURE_LENGTHS=32")), "TASK_FEATURE_LENGTHS must be a dict"),
    "bad mesh shape": (train(fixed("--gin.MESH_SHAPE=(0, 1)")), "MESH_SHAPE must be a tuple of positive integers"),
    "packing a decoder-only model": (train(fixed("--gin.PACK=True", "--gin.model.preset='llama_tiny'")),
                                     "PACK=True: decoder-only models train as unpacked prefix-LM rows"),
    "invalid trainable regex": (train(fixed("--gin.TRAINABLE_REGEX='(adapter'")),
                                "TRAINABLE_REGEX='(adapter' is not a valid regular expression"),
    "MODEL_DIR under a regular file": (lambda c: train(fixed(f"--gin.MODEL_DIR={c.file('f', b'x') / 'run'}"))(c),
                                       "lies under the regular file"),
    "MODEL_DIR is a regular file": (lambda c: train(fixed(f"--gin.MODEL_DIR={c.file('f', b'x')}"))(c),
                                    "is a file, not a directory"),
    "unknown mixture (close matches)": (train(fixed("--gin.MIXTURE_OR_TASK_NAME=t0_trian")),
                                        "unknown task or mixture 't0_trian'; close matches: ['t0_train'"),
    "missing initial checkpoint": (train(lambda c: [f"--gin.INITIAL_CHECKPOINT_PATH={c.tmp / 'nope'}"]),
                                   "INITIAL_CHECKPOINT_PATH={tmp}/nope: does not exist"),
    "eval datasets naming no known dataset": (
        train(fixed("--gin.EVALUATOR=@ZeroShotEvaluator()", "--gin.EVAL_DATASETS=['anli_r4']")),
        "EVAL_DATASETS: unknown t0_eval dataset 'anli_r4'; did you mean anli_r3, anli_r2, anli_r1?"),
    "negative eval examples per template": (
        train(fixed("--gin.EVALUATOR=@ZeroShotEvaluator()", "--gin.EVAL_MAX_EXAMPLES_PER_TEMPLATE=-1")),
        "EVAL_MAX_EXAMPLES_PER_TEMPLATE must be a positive integer or None, got -1"),
    # resuming a directory that holds another run
    "resume with another method": (resume(fixed("--gin_file=gin_configs/methods/lora.gin")),
                                   "holds a run of another method: MoV(num_experts=10"),
    "resume with another model": (resume(fixed("--gin_file=gin_configs/models/t5_1_1_small.gin")),
                                  "holds a run of another model: T5Config(vocab_size=32128, d_model=64"),
    "resume with other expert count, no run.json": (
        resume(lambda c: [os.remove(c.out / "run.json"), "--gin.MoV.num_experts=4"][1:]),
        "holds a run of another model or method (checkpoint step 4: trainable parameter "),
    # data rows (file:line and field)
    "data line not JSON": (train_data(jsonl_rows(b'{"text": "cut off\n')), "train.jsonl:3: invalid JSON"),
    "data line not UTF-8": (train_data(jsonl_rows(b'{"text": "caf\xe9", "label": 1}\n')),
                            "train.jsonl:3: not UTF-8 (byte 0xe9"),
    "empty data file": (train_data(b""), "rotten_tomatoes/_/train.jsonl: no rows (the file is empty)"),
    "label out of range": (train_data(jsonl_rows(b'{"text": "fine", "label": 7}\n')),
                           "train.jsonl:3: template 'Movie Expressed Sentiment' failed"),
    "field of the wrong type": (train_data(jsonl_rows(b'{"text": 5, "label": 1}\n')),
                                "train.jsonl:3: field 'text' is a number (5), but a string on line 1"),
    "missing field": (train_data(jsonl_rows(b'{"label": 1}\n')), "train.jsonl:3: missing field 'text' (line 1 has ['label', 'text'])"),
    "extra field": (train_data(jsonl_rows(b'{"text": "fine", "label": 1, "note": "x"}\n')),
                    "train.jsonl:3: unexpected field 'note' (line 1 has ['label', 'text'])"),
    "dataset absent from the data dir": (train_data(None), "rotten_tomatoes: the jsonl source has no"),
    # the first hour with one's own data and tasks (docs/own_tasks.md)
    "DATA_DIR that does not exist": (train(fixed("--gin.DATA_DIR=/no/such/kit")),
                                     "DATA_DIR=/no/such/kit: no such directory"),
    "every row's field of another type than the schema's": (
        train_data(b'{"text": 5, "label": 1}\n{"text": 6, "label": 0}\n'),
        "train.jsonl:1: field 'text' is a number (5), but rotten_tomatoes's schema has a string there"),
    "task module that is not importable": (train(fixed("--gin.MIXTURE_OR_TASK_MODULE=no_such_tasks")),
                                           "MIXTURE_OR_TASK_MODULE: cannot import 'no_such_tasks' (is its directory "
                                           "on PYTHONPATH?): ModuleNotFoundError"),
    "task module that raises": (train(lambda c: [f"--gin.MIXTURE_OR_TASK_MODULE={c.module('raise KeyError(3)')}"]),
                                "cannot import 'broken_tasks_"),
    "custom task: Jinja syntax error": (custom_task("inputs = '{{text'"),
                                        "custom.gin: template_task 'my_task': inputs template: Jinja syntax error "
                                        "on its line 1"),
    "custom task: a field no row has": (custom_task("inputs = 'Review: {{txt}}'"),
                                        "custom.gin: template 'my_task' of task 'my_task' uses field 'txt', which "
                                        "{tmp}/rows.jsonl lacks (fields: ['label', 'text'])"),
    "custom task: an empty rendering": (custom_task("inputs = '{{text}}'", rows=b'{"text": "", "label": 1}\n'),
                                        "rows.jsonl:3: template 'my_task' of task 'my_task' ({tmp}/custom.gin) "
                                        "rendered empty inputs or targets"),
    "custom mixture: unknown member": (custom_task("inputs = '{{text}}'", members="{'my_tsk': 1}"),
                                       "mixture 'my_mix': unknown task or mixture 'my_tsk'; did you mean my_task"),
    # eval
    "eval: missing checkpoint": (evaluate(lambda c: [f"--gin.CHECKPOINT_PATH={c.tmp / 'nope'}"]),
                                 "CHECKPOINT_PATH="),
    "eval: dataset typo": (evaluate(fixed("--gin.EVAL_DATASETS=['super_glue_cbb']")),
                           "unknown t0_eval dataset 'super_glue_cbb'; did you mean super_glue_cb"),
    "eval: only datasets the source lacks": (evaluate(fixed("--gin.EVAL_DATASETS=['story_cloze_2016']")),
                                             "the data source has none of ['story_cloze_2016']"),
    "eval: empty dataset list": (evaluate(fixed("--gin.EVAL_DATASETS=[]")), "EVAL_DATASETS is empty"),
    "eval: zero examples per template": (evaluate(fixed("--gin.EVAL_MAX_EXAMPLES_PER_TEMPLATE=0")),
                                         "EVAL_MAX_EXAMPLES_PER_TEMPLATE must be a positive integer or None, got 0"),
    "eval: unknown suite": (evaluate(fixed("--gin.EVAL_SUITE=t0_evl")),
                            "unknown eval suite 't0_evl'; did you mean t0_eval"),
    "eval: checkpoint of another method": (evaluate(fixed("--gin_file=gin_configs/methods/lora.gin")),
                                           "parameters not in the model"),
    # infer
    "infer: missing inputs file": (infer(lambda c: c.tmp / "in.jsonl"), "INFER_INPUTS={tmp}/in.jsonl: no such file"),
    "infer: non-integer task_id": (infer(lambda c: c.file("in.jsonl", b'{"inputs": "a", "task_id": "x"}\n')),
                                   "in.jsonl:1: field 'task_id' must be an integer >= 0, got 'x'"),
    "infer: fractional task_id": (infer(lambda c: c.file("in.jsonl", b'{"inputs": "a", "task_id": 1.5}\n')),
                                  "in.jsonl:1: field 'task_id' must be an integer >= 0, got 1.5"),
    "infer: inputs not UTF-8": (infer(lambda c: c.file("in.jsonl", b'{"inputs": "\xff"}\n')),
                                "in.jsonl:1: not UTF-8 (byte 0xff"),
    "infer: empty inputs file": (infer(lambda c: c.file("in.jsonl", b"\n")), "in.jsonl: no rows"),
    "infer: zero max examples": (infer(lambda c: c.file("in.jsonl", b'{"inputs": "a"}\n'), "--gin.MAX_EXAMPLES=0"),
                                 "MAX_EXAMPLES must be a positive integer, got 0"),
    "infer: unknown task": (infer(lambda c: "super_glue_rte_GPT_3_styl"),
                            "unknown task or mixture 'super_glue_rte_GPT_3_styl'; close matches: ['super_glue_rte_GPT_3_style'"),
    # export
    "export: MERGE_TASKS without MOELoRA": (export(fixed("--gin.MERGE_TASKS=['super_glue_rte']")),
                                            "MERGE_TASKS needs a MOELoRA model; this one uses MoV"),
    "export: checkpoint folder without steps": (export(lambda c: [f"--gin.CHECKPOINT_PATH={c.tmp}"]),
                                                "no moe-jax checkpoint (no <step> directories)"),
    "export: EXPORT_DIR under a file": (lambda c: export(fixed(f"--gin.EXPORT_DIR={c.file('f', b'x') / 'e'}"))(c),
                                        "lies under the regular file"),
    "export: checkpoint of another method": (export(fixed("--gin_file=gin_configs/methods/lora.gin")),
                                             "parameters not in the model"),
    # zero_shot / param_count (argparse entry points)
    "zero_shot: negative examples per template": (zero_shot(fixed("--max_examples_per_template=-1")),
                                                  "--max_examples_per_template must be a positive integer or None, got -1"),
    "zero_shot: missing hf_dir": (zero_shot(lambda c: [f"--hf_dir={c.tmp / 'nope'}"]), "--hf_dir="),
    "zero_shot: hf_dir without a checkpoint": (zero_shot(lambda c: [f"--hf_dir={c.tmp}"]), "missing config.json"),
    "zero_shot: dataset typo": (lambda c: ["zero_shot", [f"--output_dir={c.out}", "--datasets=super_glue_cbb"]],
                                "did you mean super_glue_cb"),
    "zero_shot: only datasets the source lacks": (
        lambda c: ["zero_shot", [f"--output_dir={c.out}", "--datasets=story_cloze_2016"]],
        "the data source has none of the datasets ['story_cloze_2016']"),
    "zero_shot: zero batch size": (zero_shot(fixed("--batch_size=0")), "--batch_size must be a positive integer"),
    "param_count: unknown model": (param_count("--model=t5_1_1_xxxl"),
                                   "unknown model preset 't5_1_1_xxxl'; close matches: ['t5_1_1_xxl'"),
    "param_count: unknown method preset": (param_count("--model=t5_1_1_small", "--presets=mov_11"),
                                           "unknown preset 'mov_11'"),
}


def _call(entry, argv):
  if entry in ("zero_shot", "param_count"):
    with restored_state():
      return entry_main(entry)(argv)
  return run_entry(entry, argv)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, small_run, tmp_path, capsys):
  build, expected = CASES[name]
  c = Ctx(tmp_path, small_run)
  entry, argv = build(c)
  before, run_before = snapshot(c.out), snapshot(small_run)
  capsys.readouterr()
  rc = _call(entry, [str(a) for a in argv])
  err = capsys.readouterr().err
  errors = [l for l in err.splitlines() if l.startswith("error:")]
  assert rc == 2, err[-3000:]
  assert "Traceback" not in err and len(errors) == 1, err[-3000:]
  assert expected.replace("{tmp}", str(tmp_path)) in errors[0], errors[0]
  assert snapshot(c.out) == before  # MODEL_DIR / EXPORT_DIR / output_dir as found
  assert snapshot(small_run) == run_before


def test_there_are_at_least_40_cases():
  assert len(CASES) >= 40


@pytest.mark.parametrize("path_kind, expected", [
    ("absent", "not a directory"), ("empty", "missing config.json"), ("gpt2", "unsupported architecture")])
def test_load_hf_checkpoint_api_names_the_cause(tmp_path, path_kind, expected):
  import json

  from moe_jax.models import load_hf_checkpoint
  from moe_jax.models.hf import CheckpointError
  path = tmp_path / "ckpt"
  if path_kind != "absent":
    path.mkdir()
  if path_kind == "gpt2":
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(CheckpointError, match=expected) as e:
    load_hf_checkpoint(str(path))
  assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("module, args, expected", [
    ("moe_jax.train", ["--gin_file=gin_configs/demo.gin", "--gin.MODEL_DIR={out}", "--gin.LEARNING_RAT=0.1"],
     "error: --gin.LEARNING_RAT: no configuration uses the macro LEARNING_RAT; did you mean LEARNING_RATE?"),
    ("moe_jax.infer", ["--gin_file=gin_configs/runs/infer.gin", *MODEL_FILES, "--gin.MODEL_DIR={out}",
                       "--gin.CHECKPOINT_PATH={tmp}", "--gin.INFER_INPUTS={tmp}/in.jsonl"],
     "error: INFER_INPUTS={tmp}/in.jsonl: no such file"),
    ("moe_jax.zero_shot", ["--output_dir={out}", "--max_examples_per_template=-1"],
     "error: --max_examples_per_template must be a positive integer or None, got -1"),
])
def test_subprocess_exit_code_and_one_line(tmp_path, module, args, expected):
  fill = lambda s: s.format(out=tmp_path / "out", tmp=tmp_path)  # noqa: E731
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the entry point must quiet TensorFlow itself
  out = subprocess.run([sys.executable, "-m", module, *map(fill, args)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [fill(expected)], out.stderr[-3000:]
  assert not os.path.exists(tmp_path / "out")
