"""`python -m moe_jax.zero_shot`: a random model evaluated end to end on real data."""
import json
import os
import statistics
import subprocess
import sys

import pytest

from moe_jax import zero_shot


def test_zero_shot_on_two_held_out_datasets(tmp_path, capsys):
  rc = zero_shot.main(["--datasets=super_glue_cb,super_glue_rte", "--max_examples_per_template=3",
                       "--batch_size=16", f"--output_dir={tmp_path}"])
  assert rc == 0
  report = json.load(open(tmp_path / "zero_shot.json"))
  assert [d["dataset"] for d in report["datasets"]] == ["super_glue_cb", "super_glue_rte"]
  medians = []
  for d in report["datasets"]:
    assert d["status"] == "ok" and d["examples_per_template"] == 3
    # Accuracy is over examples (the best-scored of each example's choice rows), not rows:
    # with 3 examples per template every accuracy is k/3.
    accs = [t["accuracy"] for t in d["templates"]]
    assert all(t["examples"] == 3 for t in d["templates"])
    assert all(a * 3 == pytest.approx(round(a * 3), abs=1e-9) and 0 <= round(a * 3) <= 3 for a in accs), accs
    assert d["median_accuracy"] == statistics.median(accs)
    medians.append(d["median_accuracy"])
  assert report["average"] == pytest.approx(sum(medians) / 2, abs=1e-12)
  assert "| super_glue_cb | 15 | 3 |" in capsys.readouterr().out
  assert zero_shot.main(["--datasets=nope", f"--output_dir={tmp_path}"]) == 2


@pytest.mark.slow
def test_full_held_out_suite_from_the_command_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "moe_jax.zero_shot", "--max_examples_per_template=4",
                        f"--output_dir={tmp_path}"], capture_output=True, text=True, check=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert "| story_cloze_2016 | - | - | missing | - |" in out.stdout
  assert "| **average** |" in out.stdout
