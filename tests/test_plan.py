"""The planner: compiles the run's train, score and decode steps for a TPU
slice (XLA:TPU from libtpu, no TPU needed) or on simulated CPU devices."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--gin_file=gin_configs/demo.gin", "--gin.BATCH_SIZE=8",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
        "--gin.EVAL_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}"]


def _run(*flags):
  return subprocess.run([sys.executable, "-m", "moe_jax.plan", *flags], cwd=REPO, capture_output=True, text=True,
                        timeout=900, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _plan(*flags):
  out = _run(*flags)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


def test_simulated_devices_follow_the_gin_mesh_and_batch_and_see_rematerialisation():
  tiny = ["--gin_file=gin_configs/demo.gin", "--devices=2", "--gin.MESH_SHAPE=(1, 2)", "--gin.BATCH_SIZE=8",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 64}"]
  plain, text = _plan(*tiny)
  full, _ = _plan(*tiny, "--gin.REMAT_POLICY=full")
  assert set(plain) >= {"params", "trainable", "per_device_argument_gib", "per_device_temp_gib",
                        "per_device_output_gib", "flops_per_device", "compile_s", "steps"}
  assert plain["compiler"] == "xla-cpu-simulated" and plain["topology"] is None
  # MESH_SHAPE=(1, 2), not the default (-1, 1); the batch is BATCH_SIZE's.
  assert plain["devices"] == 2 and plain["mesh"] == {"data": 1, "model": 2}
  assert plain["steps"]["train"]["tokens_per_call"] == 8 * (256 + 64)
  from flax import linen as nn

  from moe_jax.models import build_model, get_preset
  from moe_jax.peft import MoV
  from moe_jax.peft.trainable import count, trainable_mask
  params = nn.unbox(build_model(get_preset("t5_1_1_tiny"), MoV(num_experts=10)).abstract_variables()["params"])
  assert (plain["params"], plain["trainable"]) == (count(params), count(params, trainable_mask(params)))
  assert set(plain["steps"]) == {"train", "score", "decode"} and "decode" in text
  # Recomputing each layer in the backward pass: more FLOPs (the memory saving
  # is within the allocator's rounding at this size on XLA:CPU).
  assert full["flops_per_device"] > 1.1 * plain["flops_per_device"]


def test_tpu_slices_compile_with_xla_tpu_and_scanned_flops_count_every_layer():
  # EVAL_FEATURE_LENGTHS bound to another macro, as finetune.gin binds it.
  eval_flags = ("--gin.EVAL_FEATURE_LENGTHS=%TASK_FEATURE_LENGTHS", "--gin.EVAL_BATCH_SIZE=4")
  unrolled, text = _plan(*TINY, *eval_flags, "--topology=v4-8", "--gin.SCAN_LAYERS=False")
  scanned, _ = _plan(*TINY, *eval_flags, "--topology=v5litepod-4", "--gin.SCAN_LAYERS=True")
  for r, hbm in ((unrolled, 32.0), (scanned, 16.0)):
    assert r["compiler"] == "xla-tpu" and r["chips"] == 4 and r["hbm_per_chip_gib"] == hbm
    assert r["mesh"] == {"data": 4, "model": 1}
    for name in ("train", "score", "decode"):
      s = r["steps"][name]
      assert 0 < s["per_chip_total_gib"] < 1
      assert s["headroom_gib"] == pytest.approx(hbm - s["per_chip_total_gib"], abs=1e-3)
      assert s["roofline_s"] > 0 and s["tokens_per_s"] == pytest.approx(s["tokens_per_call"] / s["roofline_s"],
                                                                          rel=0.01)
    assert r["days_to_train_steps"] == pytest.approx(300 * r["steps"]["train"]["roofline_s"] / 86400, rel=0.01)
  assert (unrolled["libtpu_topology"], scanned["libtpu_topology"]) == ("v4:2x2x1", "v5e:2x2")
  assert unrolled["steps"]["score"]["tokens_per_call"] == 4 * (64 + 16)
  assert unrolled["steps"]["decode"]["tokens_per_call"] == 8 * 64  # infer's batch_size x max_decode_length
  assert "xla-tpu for v4-8" in text and "headroom" in text
  # The same program, scanned or not: the counted FLOPs agree; XLA's own
  # count of the scanned program sees one layer's body.
  for name in ("train", "score"):
    u, s = unrolled["steps"][name], scanned["steps"][name]
    assert s["flops_per_step"] == pytest.approx(u["flops_per_step"], rel=0.02)
    assert s["xla_flops_per_chip"] < 0.9 * u["xla_flops_per_chip"]


def test_a_step_larger_than_the_chip_exits_2_with_one_line_and_prints_no_plan():
  out = _run("--gin_file=gin_configs/demo.gin", "--topology=v5litepod-4", "--gin.BATCH_SIZE=65536",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}")
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stdout == ""
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, lines
  line = lines[0]
  assert line.startswith("error: the train step needs ") and "GiB per chip; v5litepod-4 chips have 15.75 GiB" in line
  for tip in ("REMAT_POLICY='full'", "PARTITIONING_RULES='fsdp'", "a larger slice", "BATCH_SIZE (now 65536)"):
    assert tip in line


def test_unknown_accelerator_types_and_macros_are_refused_by_name():
  out = _run("--gin_file=gin_configs/demo.gin", "--topology=v4-6")
  assert out.returncode == 2 and out.stdout == ""
  assert "--topology=v4-6: unknown accelerator type; known: " in out.stderr
  assert "v4-8" in out.stderr and "v5litepod-16" in out.stderr and "v6e-8" in out.stderr
  # A configuration without the run's macros: the one the planner needs first is named.
  out = _run("--gin_file=gin_configs/models/t5_1_1_tiny.gin", "--devices=1")
  assert out.returncode == 2
  assert "defines no macro MESH_SHAPE" in out.stderr
  # 16 rows over 64 chips' data axis: named before anything compiles.
  out = _run("--gin_file=gin_configs/demo.gin", "--topology=v5litepod-64")
  assert out.returncode == 2 and out.stdout == ""
  assert "BATCH_SIZE=16 does not split over the data axis of the mesh {'data': 64, 'model': 1}" in out.stderr


def test_accelerator_types_map_to_libtpu_topologies():
  from moe_jax import tpu_slices
  for name, topology, chips in (("v4-8", "v4:2x2x1", 4), ("v4-32", "v4:2x2x4", 16), ("v5litepod-64", "v5e:8x8", 64),
                                ("v5p-32", "v5:2x2x4", 16), ("v6e-8", "v6e:2x4", 8)):
    s = tpu_slices.parse(name)
    assert (s.topology, s.chips) == (topology, chips)
  assert tpu_slices.parse("v4-8").chip_config == "megacore" and tpu_slices.parse("v6e-8").chip_config is None
  assert len(tpu_slices.parse("v5litepod-16").devices()) == 16


@pytest.mark.slow
def test_mov_t5_3b_fits_the_pod_targets():
  # README "Sizing a run": 8 simulated devices, mesh (4, 2), the preset as shipped.
  r, _ = _plan("--gin_file=gin_configs/mov_t5_3b.gin", "--devices=8", "--gin.MESH_SHAPE=(4, 2)",
               "--gin.INITIAL_CHECKPOINT_PATH=None")
  assert r["per_device_temp_gib"] <= 8 and r["per_device_argument_gib"] <= 3


@pytest.mark.slow
def test_the_mov_presets_fit_the_slices_in_the_readme(tmp_path):
  # README "Sizing a run on a TPU slice": XL and XXL MoV on v4-32 and v5litepod-64.
  from bench import pod_sizing
  rows = [pod_sizing.plan_one(p, s, REPO) for p in ("mov_t5_3b", "mov_t5_11b") for s in ("v4-32", "v5litepod-64")]
  for r in rows:
    assert "plan" in r, r
    assert r["plan"]["compiler"] == "xla-tpu" and r["plan"]["steps"]["train"]["headroom_gib"] > 0
  xl, xxl = rows[0]["plan"]["steps"]["train"], rows[2]["plan"]["steps"]["train"]
  assert xxl["flops_per_step"] > 3 * xl["flops_per_step"]  # 11B vs 3B parameters
  assert "| mov_t5_11b | v5litepod-64 (32, 2) |" in pod_sizing.markdown(rows, {"libtpu": "x", "host": "h",
                                                                               "date": "d"})


@pytest.mark.parametrize("family, pack", [("t5", False), ("t5", True), ("decoder", False)])
def test_the_planned_batch_is_the_batch_the_trainer_feeds(family, pack):
  """The planner compiles the train step for `abstract_batch`: the same keys,
  shapes and dtypes as a batch the trainer's pipeline yields (encoder-decoder
  unpacked and packed with per-segment ids; decoder-only as a prefix LM)."""
  import tasks  # noqa: F401  registers the seqio tasks
  from moe_jax import plan
  from moe_jax.data import converters, registry
  from moe_jax.models import build_model, get_preset
  model = build_model(get_preset("t5_1_1_tiny" if family == "t5" else "llama_tiny"))
  lengths = {"inputs": 32, "targets": 8}
  ds = registry.get_task_or_mixture("rotten_tomatoes_Movie_Expressed_Sentiment").get_dataset(
      sequence_length=lengths, split="train", shuffle=False, use_cached=False)
  ds = converters.prefix_lm(ds, 40) if family == "decoder" else converters.encdec(ds, lengths, pack=pack)
  real = next(converters.batches(ds, 4, drop_remainder=True))
  abstract = plan.abstract_batch(model, lengths, 4, pack, sharding=lambda ndim: None)
  assert set(abstract) == set(real)
  for k, v in real.items():
    assert (abstract[k].shape, abstract[k].dtype) == (v.shape, v.dtype), k


def test_packing_a_decoder_only_model_is_refused_as_the_trainer_refuses_it():
  from moe_jax import plan
  from moe_jax.models import build_model, get_preset
  with pytest.raises(ValueError, match="PACK=True: decoder-only models train as unpacked prefix-LM rows"):
    plan.abstract_batch(build_model(get_preset("llama_tiny")), {"inputs": 8, "targets": 4}, 2, True,
                        sharding=lambda ndim: None)
