"""train_metrics.jsonl / TensorBoard logging, router entropy and the expert plot."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.evaluation import plots
from moe_jax.training import metrics
from moe_jax.peft import MoV
from tests.peft import common


def test_router_entropy_of_uniform_and_one_hot():
  uniform, one_hot = jnp.full((5, 4), 0.25), jax.nn.one_hot(jnp.arange(5) % 4, 4)
  np.testing.assert_allclose(metrics.mean_router_entropy({"a": uniform}), np.log(4), rtol=1e-6)
  np.testing.assert_allclose(metrics.mean_router_entropy({"a": uniform, "b": one_hot}), np.log(4) / 2, rtol=1e-5)
  assert float(metrics.mean_router_entropy({})) == 0.0


def test_logger_writes_jsonl_tensorboard_and_per_task_loss(tmp_path, capsys):
  logger = metrics.Logger(str(tmp_path), total_steps=4, batch_size=2, start_step=0)
  m = {"loss": 2.0, "cross_entropy": 1.9, "router_entropy": 0.5,
       "per_example_cross_entropy": np.array([1.0, 3.0])}
  assert logger.log(1, m, 1e-3, 10, np.array([0, 1])) == {}  # not a logging step
  row = logger.log(2, dict(m, per_example_cross_entropy=np.array([5.0, 7.0])), 1e-3, 10, np.array([0, 0]),
                   force=True)
  logger.close()
  rows = [json.loads(l) for l in open(tmp_path / "train_metrics.jsonl")]
  assert rows == [row] and row["step"] == 2 and row["learning_rate"] == 1e-3
  assert row["tokens_per_sec"] > 0 and row["router_entropy"] == 0.5
  # Per-task loss averages every example seen since the last logged step.
  assert row["task_loss"] == {"0": pytest.approx((1.0 + 5.0 + 7.0) / 3), "1": pytest.approx(3.0)}
  # TensorBoard holds the same scalars, at the logged step only.
  import glob
  import tensorflow as tf
  scalars = {}
  for f in glob.glob(str(tmp_path / "tensorboard" / "train" / "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(f):
      for v in event.summary.value:
        scalars[(event.step, v.tag)] = float(tf.make_ndarray(v.tensor))
  assert {s for s, _ in scalars} == {2}
  assert scalars[(2, "loss")] == 2.0 and scalars[(2, "cross_entropy")] == pytest.approx(1.9)
  assert scalars[(2, "router_entropy")] == 0.5 and scalars[(2, "learning_rate")] == pytest.approx(1e-3)
  assert scalars[(2, "task_loss/task_0")] == pytest.approx(13.0 / 3)
  assert scalars[(2, "task_loss/task_1")] == pytest.approx(3.0)
  assert "step 2/4 | loss 2.0000" in capsys.readouterr().err


def test_expert_plot_from_router_probabilities(tmp_path):
  model, params = common.make("t5", MoV(num_experts=3))
  probs = plots.router_probabilities(model, params, common.batch("t5"))
  assert probs and all(v.shape == (3,) for v in probs.values())
  np.testing.assert_allclose([v.sum() for v in probs.values()], 1.0, rtol=1e-5)
  names = list(probs)
  assert names[0].startswith("encoder/layers_0") and names[-1].startswith("decoder/layers_1")  # model order
  path = plots.expert_heatmaps({"rte": probs, "cb": probs}, str(tmp_path / "p.png"))
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert not [f for f in os.listdir(tmp_path) if "tmp" in f]
  assert plots.short_name("decoder/layers_1/encoder_decoder_attention/k_adapter") == "dec 1 cross k"
  with pytest.raises(ValueError, match="no router statistics"):
    plots.expert_heatmaps({"rte": {}}, str(tmp_path / "q.png"))


def test_read_log_drops_a_torn_line_and_later_steps(tmp_path):
  path = tmp_path / "train_metrics.jsonl"
  path.write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n\n{"step": 3, "loss": 1.2}\n{"step": 4, "lo')
  keep, dropped = metrics.read_log(str(path), up_to_step=2)
  assert [json.loads(l)["step"] for l in keep] == [1, 2]
  assert [n for n, _ in dropped] == [5] and "JSONDecodeError" in dropped[0][1]
  assert path.read_bytes().endswith(b'"lo')  # reading changes nothing
  metrics.write_log(str(path), keep)
  assert [json.loads(l)["step"] for l in open(path)] == [1, 2]
  assert metrics.read_log(str(tmp_path / "absent.jsonl"), 5) == ([], [])


def test_eval_progress_counts_datasets_templates_and_eta():
  import io

  from moe_jax.data.rank_eval import EvalDataset
  from moe_jax.evaluation import EvalProgress
  suite = [EvalDataset("a", ["a1", "a2"], True), EvalDataset("gone", ["g1"], False),
           EvalDataset("b", ["b1", "b2"], True)]
  now = [0.0]
  out = io.StringIO()
  p = EvalProgress(suite, every=10.0, out=out, clock=lambda: now[0])
  for t, name in ((0.0, "a1"), (2.0, "a2"), (4.0, "b1"), (20.0, "b2")):
    now[0] = t
    p(name)
  now[0] = 30.0
  p.finish()
  lines = out.getvalue().splitlines()
  assert lines == [
      "eval: 0/2 datasets, 0/4 templates done | 0s | ETA - | scoring a",
      # a dataset starts: 2 of 4 templates in 4 s -> 4 s to go
      "eval: 1/2 datasets, 2/4 templates done | 4s | ETA 4s | scoring b",
      # 10 s since the last line within b
      "eval: 1/2 datasets, 3/4 templates done | 20s | ETA 7s | scoring b",
      "eval: 2/2 datasets, 4/4 templates done in 30s"]
