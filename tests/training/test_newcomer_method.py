"""A newcomer's eighth method, written the way peft/'s are (an `Adapters`
subclass whose site modules hold its parameters) and kept in this file: with
no change anywhere else it trains, checkpoints, resumes, is evaluated and
decodes through the entry points, because every stage talks to methods only
through the contract (`moe_jax/adapters.py`)."""
import dataclasses
import json

import flax.linen as nn
import gin
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from moe_jax.adapters import Adapters, SiteInfo
from tests.inprocess import final_state, run_entry, train_in_process


class _ScaledLoRASite(nn.Module):
  info: SiteInfo
  rank: int
  scale: float

  @nn.compact
  def __call__(self, x, y, ctx):
    del ctx
    a = self.param("lora_a", nn.with_logical_partitioning(nn.initializers.normal(0.02), self.info.in_axes + ("rank",)),
                   self.info.in_shape + (self.rank,), jnp.float32)
    b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, ("rank",) + self.info.out_axes),
                   (self.rank,) + self.info.out_shape, jnp.float32)
    delta = jnp.tensordot(jnp.tensordot(x.astype(jnp.float32), a, axes=len(self.info.in_shape)), b, axes=1)
    return y + (self.scale * delta).astype(y.dtype)


@dataclasses.dataclass(frozen=True)
class ScaledLoRA(Adapters):
  """LoRA on the attention queries and values with a fixed output scale."""
  rank: int = 2
  scale: float = 4.0

  def site(self, info, name):
    return _ScaledLoRASite(info, self.rank, self.scale, name=name) if info.kind in ("q", "v") else None


gin.external_configurable(ScaledLoRA, module="tests")
METHOD = ["--gin.model.adapters=@ScaledLoRA()", "--gin.LEARNING_RATE=0.1", "--gin.CHECKPOINT_PERIOD=1",
          "--gin.TRAIN_STEPS=3"]


def test_an_eighth_method_written_only_as_a_method_runs_through_every_entry_point(tmp_path, capsys):
  run = tmp_path / "run"
  assert train_in_process(run, *METHOD, "--gin.TRAIN_STEPS=2") == 0
  capsys.readouterr()
  assert train_in_process(run, *METHOD) == 0  # resumes from its step 2
  assert f"resuming {run} from step 2" in capsys.readouterr().out
  trained = traverse_util.flatten_dict(final_state(run)["trainable"])
  assert int(final_state(run)["step"]) == 3
  assert trained and all(k[-1] in ("lora_a", "lora_b") for k in trained)  # only its parameters train
  assert all(any(p.endswith("_adapter") for p in k) for k in trained)  # inside its site modules
  assert any(np.abs(np.asarray(v)).max() > 0 for k, v in trained.items() if k[-1] == "lora_b")  # B moved

  model_flags = ["--gin_file=gin_configs/models/t5_1_1_tiny.gin", "--gin_file=gin_configs/methods/mov.gin",
                 *METHOD[:1], f"--gin.CHECKPOINT_PATH={run / 'checkpoints'}"]
  assert run_entry("eval", ["--gin_file=gin_configs/runs/eval.gin", *model_flags, f"--gin.MODEL_DIR={tmp_path / 'ev'}",
                            "--gin.EVAL_DATASETS=['super_glue_cb']", "--gin.EVAL_MAX_EXAMPLES_PER_TEMPLATE=1",
                            "--gin.EVAL_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}"]) == 0
  report = json.load(open(tmp_path / "ev" / "eval" / "zero_shot.json"))
  assert report["step"] == 3 and report["datasets"][0]["dataset"] == "super_glue_cb"
  inputs = tmp_path / "in.jsonl"
  inputs.write_text('{"inputs": "Is this review positive? Great film."}\n')
  assert run_entry("infer", ["--gin_file=gin_configs/runs/infer.gin", *model_flags,
                             f"--gin.MODEL_DIR={tmp_path / 'inf'}", f"--gin.INFER_INPUTS={inputs}",
                             "--gin.MAX_DECODE_LENGTH=2"]) == 0
  (pred,) = [json.loads(l) for l in open(tmp_path / "inf" / "infer" / "predictions.jsonl")]
  assert len(pred["prediction_ids"]) == 2
