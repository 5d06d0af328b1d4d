"""PEFT-only checkpoints: what a step holds, the recorded frozen source, and
resume / evaluation rebuilding (or refusing) the backbone."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util

from moe_jax import checkpoints, frozen_source, weights
from tests.inprocess import final_state, snapshot, train_in_process
from tests.models.t5x import common

T5X_DIMS = "--gin.model.config_overrides={'d_model': 8, 'd_kv': 3, 'num_heads': 4, 'd_ff': 16}"


def _dir_bytes(path) -> int:
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def test_a_step_holds_the_trained_parameters_only(small_run):
  # MoV on t5_1_1_tiny (the target: <= 2 MB per step).
  for step in ("2", "4"):
    size = _dir_bytes(small_run / "checkpoints" / step)
    assert size <= 2_000_000, size
  state = final_state(small_run)
  assert "frozen" not in state and set(state) == {"trainable", "opt_state", "step", "batches_seen"}
  trained = traverse_util.flatten_dict(state["trainable"])
  assert trained and all(any(p.endswith("_adapter") for p in k) for k in trained)
  recorded = json.loads((small_run / frozen_source.FILE).read_text())
  assert recorded["initial_checkpoint_path"] is None and recorded["seed"] == 0
  # The fingerprint lists every frozen parameter (and no trained one).
  names = set(recorded["leaves"])
  assert not names & {"/".join(k) for k in trained}
  assert "token_embedder/embedding" in names and any("layers_1/" in n for n in names)
  assert recorded["kind"] == frozen_source.KIND
  shape, dtype, probe, l2 = recorded["leaves"]["token_embedder/embedding"]
  assert dtype == "float32" and l2 > 0 and probe != 0 and len(shape) == 2


def test_evaluation_rebuilds_the_backbone_and_refuses_another(small_run, tmp_path):
  from moe_jax import gin_utils
  from tests.inprocess import restored_state
  with restored_state():
    gin_utils.configure(["--gin_file=gin_configs/demo.gin"])
    model = gin_utils.model()
  init = jax.jit(lambda r: model.init(r, model._dummy_batch()))
  params, fresh, step = weights.load_initial(model, init(jax.random.key(7)), str(small_run / "checkpoints"))
  assert step == 4 and fresh == []
  flat, expected = traverse_util.flatten_dict(params), traverse_util.flatten_dict(init(jax.random.key(0)))
  trained = traverse_util.flatten_dict(final_state(small_run)["trainable"])
  for k, v in flat.items():  # the run's seed-0 backbone (not the key-7 init passed in), its trained adapters
    np.testing.assert_array_equal(np.asarray(v), np.asarray(trained[k] if k in trained else expected[k]),
                                  err_msg="/".join(k))
  # The recorded source no longer gives the backbone the run trained against.
  run = tmp_path / "run"
  shutil.copytree(small_run, run)
  rec = json.loads((run / frozen_source.FILE).read_text())
  (run / frozen_source.FILE).write_text(json.dumps(dict(rec, seed=1)))
  with pytest.raises(frozen_source.FrozenSourceError, match="holds other values"):
    weights.load_initial(model, init(jax.random.key(0)), str(run / "checkpoints"))
  os.remove(run / frozen_source.FILE)
  with pytest.raises(checkpoints.CheckpointError, match="no frozen_source.json"):
    weights.load_initial(model, init(jax.random.key(0)), str(run / "checkpoints" / "4"))


@pytest.mark.parametrize("change, why", [
    ("--gin.train.seed=1", "/kernel holds other values (L2 norm"),
    ("--gin.PARAM_DTYPE='bfloat16'", "has dtype bfloat16, the run trained against float32"),
])
def test_resume_refuses_a_changed_backbone(small_run, tmp_path, capsys, change, why):
  run = tmp_path / "run"
  shutil.copytree(small_run, run)
  shutil.rmtree(run / "checkpoints" / "4")
  before = snapshot(run)
  capsys.readouterr()
  assert train_in_process(run, change) == 2
  err = capsys.readouterr().err
  assert "the frozen backbone changed since the run was trained" in err and why in err, err[-2000:]
  assert snapshot(run) == before  # refused before anything was written


def test_resume_reloads_the_recorded_t5x_backbone_bit_exactly(tmp_path, capsys):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  args = [T5X_DIMS, f"--gin.INITIAL_CHECKPOINT_PATH={common.TINY_T5}", "--gin.TRAIN_STEPS=2",
          "--gin.CHECKPOINT_PERIOD=1"]
  assert train_in_process(straight, *args) == 0
  assert json.loads((straight / frozen_source.FILE).read_text())["initial_checkpoint_path"] == common.TINY_T5
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / "2")
  capsys.readouterr()
  # Resumed without INITIAL_CHECKPOINT_PATH: the recorded one is reloaded.
  assert train_in_process(resumed, *[a for a in args if "INITIAL" not in a]) == 0
  out = capsys.readouterr().out
  assert f"frozen backbone from {common.TINY_T5}" in out and "resuming" in out
  (la, ta), (lb, tb) = (jax.tree_util.tree_flatten(final_state(r)) for r in (straight, resumed))
  assert ta == tb and len(la) > 50
  for x, y in zip(la, lb):  # trained parameters, optimizer state, counters
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Another T5X checkpoint of the same shapes is another backbone: refused.
  target = common.raw_target()
  target["decoder/logits_dense/kernel"] = target["decoder/logits_dense/kernel"] * 2
  other = common.write_checkpoint(tmp_path / "other", target, step=0)
  shutil.rmtree(resumed / "checkpoints" / "2")
  assert train_in_process(resumed, *[a for a in args if "INITIAL" not in a],
                          f"--gin.INITIAL_CHECKPOINT_PATH={other}") == 2
  assert "decoder/logits_dense/kernel holds other values" in capsys.readouterr().err
  # The same values with two rows of one kernel swapped (sum |x| unchanged): refused too.
  target = common.raw_target()
  kernel = np.array(target["decoder/logits_dense/kernel"])
  target["decoder/logits_dense/kernel"] = kernel[[1, 0] + list(range(2, len(kernel)))]
  assert np.sum(np.abs(target["decoder/logits_dense/kernel"])) == np.sum(np.abs(kernel))
  swapped = common.write_checkpoint(tmp_path / "swapped", target, step=0)
  assert train_in_process(resumed, *[a for a in args if "INITIAL" not in a],
                          f"--gin.INITIAL_CHECKPOINT_PATH={swapped}") == 2
  assert ("decoder/logits_dense/kernel holds other values or the same ones in another order"
          in capsys.readouterr().err)


def test_resume_of_a_run_with_the_old_fingerprint_warns_and_records_the_new_one(small_run, tmp_path, capsys):
  from tests.inprocess import FINAL_PARAMS
  run = tmp_path / "run"
  shutil.copytree(small_run, run)
  shutil.rmtree(run / "checkpoints" / "4")
  new = json.loads((run / frozen_source.FILE).read_text())
  # The file as moe-jax wrote it before the probe: no "kind", sum |x| per parameter.
  backbone = {"/".join(k): v for k, v in traverse_util.flatten_dict(FINAL_PARAMS[str(small_run)][1]).items()}
  old = {"initial_checkpoint_path": None, "seed": 0, "digest": new["digest"],
         "leaves": {n: [shape, dtype, float(np.sum(np.abs(np.asarray(backbone[n], np.float64))))]
                    for n, (shape, dtype, *_) in new["leaves"].items()}}
  (run / frozen_source.FILE).write_text(json.dumps(old))
  capsys.readouterr()
  assert train_in_process(run) == 0
  err = capsys.readouterr().err
  assert err.count(f"{frozen_source.FILE} holds the old sum-|x| fingerprint") == 1, err[-2000:]
  assert json.loads((run / frozen_source.FILE).read_text()) == new  # rewritten: the probe, as a new run's


def test_the_paper_path_scanned_rematerialised_peft_only_through_every_entry_point(tmp_path, capsys):
  """The XL presets' layout at tiny size: scanned layers, remat, PEFT-only
  checkpoints, a T5X initial checkpoint. One run serves every check:
  loading its checkpoint as eval and infer do rebuilds the backbone (seeded
  init, then the T5X weights, stacked per layer and checked against the
  fingerprint recorded per unrolled layer name) and gives back every
  parameter the run ended with; stopped after step 2 and resumed, it ends
  bit-identical; eval, infer and export run on it through their entry points."""
  from moe_jax import gin_utils
  from moe_jax.evaluation import adapter_export
  from tests.inprocess import FINAL_PARAMS, restored_state, run_entry
  run = tmp_path / "scanned"
  layout = ["--gin.SCAN_LAYERS=True", "--gin.REMAT_POLICY='minimal'", T5X_DIMS]
  train = [*layout, f"--gin.INITIAL_CHECKPOINT_PATH={common.TINY_T5}", "--gin.TRAIN_STEPS=4"]
  assert train_in_process(run, *train, capture=True) == 0
  step, final = FINAL_PARAMS.pop(str(run))
  assert "frozen" not in final_state(run) and step == 4
  with restored_state():
    gin_utils.configure(["--gin_file=gin_configs/demo.gin", *layout])
    model = gin_utils.model()
  assert model.config.scan_layers
  params, fresh, loaded_step = weights.load_initial(model, frozen_source.init_params(model, 5),
                                                    str(run / "checkpoints"))
  assert loaded_step == 4 and fresh == []
  got, want = traverse_util.flatten_dict(params), traverse_util.flatten_dict(final)
  assert set(got) == set(want) and any("layers" in k for k in got)
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg="/".join(k))

  stopped = tmp_path / "stopped"  # as a run stopped after step 2 leaves it
  shutil.copytree(run, stopped)
  shutil.rmtree(stopped / "checkpoints" / "4")
  log = stopped / "train_metrics.jsonl"
  log.write_text("".join(open(log).readlines()[:2]))
  capsys.readouterr()
  assert train_in_process(stopped, *train, capture=True) == 0
  assert "input position: restored after 2 batches" in capsys.readouterr().err
  _, resumed = FINAL_PARAMS.pop(str(stopped))
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed, final)
  assert [json.loads(l)["loss"] for l in open(log)] == [json.loads(l)["loss"] for l in open(run / "train_metrics.jsonl")]

  model_flags = ["--gin_file=gin_configs/models/t5_1_1_tiny.gin", "--gin_file=gin_configs/methods/mov.gin",
                 "--gin.model.scan_layers=True", T5X_DIMS, f"--gin.CHECKPOINT_PATH={run / 'checkpoints'}"]
  assert run_entry("eval", ["--gin_file=gin_configs/runs/eval.gin", *model_flags, f"--gin.MODEL_DIR={tmp_path / 'ev'}",
                            "--gin.EVAL_DATASETS=['super_glue_cb']", "--gin.EVAL_MAX_EXAMPLES_PER_TEMPLATE=2",
                            "--gin.EVAL_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}"]) == 0
  report = json.load(open(tmp_path / "ev" / "eval" / "zero_shot.json"))
  assert [d["dataset"] for d in report["datasets"]] == ["super_glue_cb"]
  assert all(t["examples"] == 2 for t in report["datasets"][0]["templates"])
  out = capsys.readouterr().out
  assert "| super_glue_cb | 15 | 2 |" in out  # the report table, all 15 templates
  assert "zero-shot evaluation at step 4:" in out and report["step"] == 4  # the step it loaded
  inputs = tmp_path / "in.jsonl"
  inputs.write_text('{"inputs": "Is this review positive? Great film."}\n{"inputs": "Summarise: a b c"}\n')
  assert run_entry("infer", ["--gin_file=gin_configs/runs/infer.gin", *model_flags,
                             f"--gin.MODEL_DIR={tmp_path / 'inf'}", f"--gin.INFER_INPUTS={inputs}",
                             "--gin.MAX_DECODE_LENGTH=3"]) == 0
  preds = [json.loads(l) for l in open(tmp_path / "inf" / "infer" / "predictions.jsonl")]
  assert [p["inputs"] for p in preds] == ["Is this review positive? Great film.", "Summarise: a b c"]
  assert all(len(p["prediction_ids"]) == 3 and isinstance(p["prediction"], str) for p in preds)
  assert run_entry("export", ["--gin_file=gin_configs/runs/export.gin", *model_flags,
                              f"--gin.EXPORT_DIR={tmp_path / 'exp'}"]) == 0
  exported = traverse_util.flatten_dict(adapter_export.load_adapters(str(tmp_path / "exp" / "adapters.safetensors")))
  trained = traverse_util.flatten_dict(final_state(run)["trainable"])  # the scanned vectors and routers
  assert set(exported) == set(trained) and any("layers" in "/".join(k) for k in trained)
  for k in trained:
    np.testing.assert_array_equal(exported[k], np.asarray(trained[k]), err_msg="/".join(k))
