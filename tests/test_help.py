"""`--help` on every gin entry point: the usage line and an example (the
module's docstring), the flags, and every macro of its run file with the
default and what it does; exit 0 without configuring anything."""
import pytest

from moe_jax import gin_utils
from tests.inprocess import entry_main, restored_state


@pytest.mark.parametrize("entry, macros", [
    ("train", {"MODEL_DIR": "(required)", "TRAIN_STEPS": "(required)", "BATCH_SIZE": "32",
               "MIXTURE_OR_TASK_MODULE": "None", "SCAN_LAYERS": "None"}),
    ("eval", {"CHECKPOINT_PATH": "(required)", "EVAL_SUITE": "'t0_eval'", "EVAL_BATCH_SIZE": "32"}),
    ("infer", {"CHECKPOINT_PATH": "(required)", "INFER_INPUTS": "(required)"}),
    ("export", {"EXPORT_DIR": "(required)", "MERGE_TASKS": "[]"}),
    ("plan", {"MESH_SHAPE": "(-1, 1)", "PARTITIONING_RULES": "'default'"}),
])
def test_help_shows_usage_and_every_macro_with_its_default(entry, macros, capsys):
  main = entry_main(entry)
  with restored_state():
    rc = main(["--help"]) if entry == "plan" else gin_utils.run(main, ["--help"])
  out = capsys.readouterr().out
  assert rc == 0
  assert f"python -m moe_jax.{entry} --gin_file=" in out  # the example command
  assert "--gin.NAME=VALUE" in out
  table = {l.split("=", 1)[0].strip(): l.split("=", 1)[1].split("    #")[0].strip()
           for l in out.splitlines() if l.startswith("  ") and "=" in l and l.strip()[:1].isupper()}
  for macro, default in macros.items():
    assert table.get(macro) == default, (macro, table.get(macro))
  if entry == "train":  # a macro's comment is shown beside it
    assert any("MOA_TRAIN_DOMAIN" in l and "only this domain's slice" in l for l in out.splitlines())


@pytest.mark.parametrize("tool, example, default", [
    ("zero_shot", "python -m moe_jax.zero_shot --suite=t0_eval", "(without --hf_dir) (default: 0)"),
    ("param_count", "python -m moe_jax.param_count --model=t5_1_1_xl", "(default: t5_1_1_xl)"),
    ("data.inspect", "python -m moe_jax.data.inspect --mixture=t0_train", "--mixture MIXTURE"),
    ("decode_demo", "python -m moe_jax.decode_demo --hf_dir=", "new tokens per prompt (default: 16)"),
])
def test_the_argparse_tools_help_says_what_they_do_with_an_example(tool, example, default, capsys):
  import importlib
  main = importlib.import_module(f"moe_jax.{tool}").main
  with pytest.raises(SystemExit) as done:
    main(["--help"])
  out = capsys.readouterr().out
  assert done.value.code == 0 and out.startswith("usage:")
  assert example in out  # the description is the module's docstring, examples included
  # every flag with a default says it
  assert default in " ".join(out.split())
