"""`python -m moe_jax.preflight` (in process): every input a training run
names is read from where it runs, URLs included, before chips are booked."""
import pytest

from moe_jax import fs, paths
from tests.inprocess import run_entry

RUN = ["--gin_file=gin_configs/demo.gin", "--gin.MIXTURE_OR_TASK_NAME=rotten_tomatoes_Movie_Expressed_Sentiment"]


@pytest.fixture(scope="module")
def bucket():
  """An HF export of the tiny model and the vocabulary on ram://."""
  from moe_jax import frozen_source
  from moe_jax.models import build_model, get_preset, hf
  tiny = build_model(get_preset("t5_1_1_tiny"))
  hf.save_hf_checkpoint(tiny, frozen_source.init_params(tiny, 0), "ram://preflight/ckpt")
  fs.write_bytes("ram://preflight/spiece.model", fs.read_bytes(paths.t5_vocab_path()))
  yield "ram://preflight"
  fs.rmtree("ram://preflight")


def test_every_input_is_read_and_named(bucket, capsys):
  rc = run_entry("preflight", [*RUN, f"--gin.INITIAL_CHECKPOINT_PATH={bucket}/ckpt",
                               f"--gin.VOCABULARY={bucket}/spiece.model", f"--gin.MODEL_DIR={bucket}/run"])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "preflight: data: 1 of 1 datasets of rotten_tomatoes_Movie_Expressed_Sentiment available" in out
  assert f"preflight: vocabulary: {bucket}/spiece.model (32100 ids)" in out
  assert f"preflight: checkpoint: {bucket}/ckpt: Hugging Face t5, d_model 64," in out
  assert f"preflight: MODEL_DIR: {bucket}/run is writable" in out
  assert fs.listdir(f"{bucket}/run") == []  # the probe is gone


@pytest.mark.parametrize("flag, needle", [
    ("--gin.DATA_DIR={tmp}/empty_kit", "data: jsonl (DATA_DIR {tmp}/empty_kit) lacks 1 of 1 datasets of "
                                       "rotten_tomatoes_Movie_Expressed_Sentiment: rotten_tomatoes"),
    ("--gin.VOCABULARY=ram://preflight/absent.model", "VOCABULARY=ram://preflight/absent.model: cannot be read"),
    ("--gin.INITIAL_CHECKPOINT_PATH=ram://preflight/absent", "ram://preflight/absent: does not exist"),
])
def test_the_first_unreadable_input_is_one_error_line(bucket, tmp_path, capsys, flag, needle):
  (tmp_path / "empty_kit").mkdir()
  rc = run_entry("preflight", [*RUN, flag.format(tmp=tmp_path)])
  err = capsys.readouterr().err
  assert rc == 2 and f"error: {needle.format(tmp=tmp_path)}" in err, err
