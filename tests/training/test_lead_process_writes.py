"""On a pod every host runs the trainer; only the first writes the run's own
files (hosts renaming the same file in a bucket would race), while orbax
writes the checkpoints of all of them."""
import os

from moe_jax import trainer
from tests.inprocess import train_in_process


def test_a_non_lead_process_trains_but_writes_only_through_orbax(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(trainer, "is_lead_process", lambda: False)
  run = tmp_path / "run"
  assert train_in_process(run, "--gin.TRAIN_STEPS=2") == 0
  assert sorted(os.listdir(run)) == ["checkpoints"]  # no run.json, ids.json, metrics, TensorBoard
  assert sorted(os.listdir(run / "checkpoints")) == ["2"]
  assert "step 2/2" not in capsys.readouterr().err  # the progress line is the lead's too
