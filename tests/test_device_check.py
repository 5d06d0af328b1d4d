"""`make device-check` on a CPU-only host: every section present and sane
(on CPU: no memory statistics, a trivial loss comparison, no cuDNN)."""
import json
import math
import os
import subprocess
import sys
import types

import jax
import pytest

from bench import device_check
from moe_jax import paths

# `make device-check` is a benchmark for a GPU host: its CPU sanity run (over a
# minute of compiling) is in `make test-all`, not the default run.
pytestmark = pytest.mark.slow

METHODS = ("ia3", "mov_10", "lora_r4", "molora_10", "full")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(report, markdown) of one `--size=tiny` run, as `make device-check` runs it."""
  out = tmp_path_factory.mktemp("device_check")
  # LLVM's optimisations off: a third less compile time (the run compiles a
  # dozen programs), and nothing here is asserted about speed.
  flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
  proc = subprocess.run([sys.executable, "-m", "bench.device_check", "--size=tiny", f"--out_dir={out}"],
                        cwd=paths.REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  md = (out / "device_check.md").read_text()
  assert md in proc.stdout  # the table is printed as well as written
  return json.loads((out / "device_check.json").read_text()), md


def test_device_and_peak(tiny):
  r, md = tiny
  assert r["problems"] == [] and "Problems: none." in md
  assert r["device"]["platform"] == "cpu" and r["device"]["kind"] and r["device"]["jax"] == jax.__version__
  assert r["settings"]["preset"] == "t5_1_1_tiny" and r["settings"]["activation_dtype"] == "bfloat16"
  # On a CPU the peak is this host's measured matmul rate.
  assert r["peak"]["flops_per_s"] > 1e8 and "measured" in r["peak"]["source"]


def test_memory_compares_the_planner_with_the_step_measured(tiny):
  r, md = tiny
  m = r["memory"]
  plan, compiled = m["planner"], m["compiled"]
  assert "error" not in plan, plan
  assert plan["compiler"] == "xla-cpu-simulated" and "--devices=1" in plan["command"]
  assert plan["command"].startswith("MOE_JAX_HAND_GRADIENTS=on ")  # the CPU's default, as measured
  assert 0 < plan["per_device_temp_gib"] and 0 < plan["per_chip_argument_gib"] < plan["per_chip_total_gib"]
  # Here the device is XLA:CPU too, so the planner's program and the measured
  # one must take the same memory: a mismatched batch, length, layer count or
  # method in the planner's flags would show (its figures are rounded to 1e-4 GiB).
  assert plan["per_chip_argument_gib"] == pytest.approx(compiled["argument_gib"], abs=2e-4)
  assert plan["per_chip_temp_gib"] == pytest.approx(compiled["temp_gib"], abs=2e-4)
  # XLA:CPU keeps no allocator statistics: no peak, and the reason says so.
  assert m["measured"]["peak_gib"] is None and "memory_stats() is None" in m["measured"]["reason"]
  assert m["measured_over_planned"] is None
  assert f"{plan['per_chip_total_gib']:.3f}" in md and "memory_stats() is None" in md


def test_train_steps_of_every_method(tiny):
  r, md = tiny
  train, peak = r["train"], r["peak"]["flops_per_s"]
  assert list(train) == list(METHODS)
  for name, t in train.items():
    assert t["step_ms"] > 0 and t["jaxpr_flops"] > 0 and 0 < t["percent_of_peak"] <= 100, (name, t)
    assert t["percent_of_peak"] == pytest.approx(100 * t["jaxpr_flops"] / (t["step_ms"] / 1e3) / peak)
    # Unscanned layers: the jaxpr count agrees with XLA's cost analysis.
    assert t["jaxpr_flops"] == pytest.approx(t["flops"], rel=0.2)
    assert f"| {t['label']} (`{name}`) |" in md
  # Full fine-tuning adds every weight gradient; MoLoRA-10 ten rank-4 LoRAs per site.
  assert train["full"]["jaxpr_flops"] > 1.5 * train["ia3"]["jaxpr_flops"]
  assert train["molora_10"]["jaxpr_flops"] > train["lora_r4"]["jaxpr_flops"]
  for label in ("IA3", "MoV-10", "LoRA-r4", "MoLoRA-10", "full fine-tuning"):
    assert label in md


def test_decoding(tiny):
  r, md = tiny
  d = r["decode"]["mov_10"]
  assert d["new_tokens"] == 4 and d["batch_size"] == 2 and d["tokens_per_sec"] > 0
  assert d["tokens_per_sec"] == pytest.approx(2 * 4 / (d["decode_ms"] / 1e3))
  assert "## Greedy decoding" in md and "| MoV-10 (`mov_10`) | 2 | 8 / 4 |" in md


def test_loss_on_the_device_and_on_cpu(tiny):
  r, md = tiny
  loss = r["loss"]
  dev, cpu = loss["device_losses"], loss["cpu_losses"]
  assert len(dev) == len(cpu) == loss["steps"] == 3
  assert all(math.isfinite(x) for x in dev + cpu)
  # A random T5 starts near ln(vocabulary), and three steps on one batch lower it.
  assert abs(dev[0] - math.log(32128)) < 1.5 and dev[-1] < dev[0]
  # Both runs are on the CPU here: the same program, the same numbers.
  assert loss["max_rel_diff"] <= 1e-6 and loss["passed"] is True and "trivial" in loss["note"]
  assert loss["tolerance"] == device_check.LOSS_RTOL and "**PASS**" in md


def test_attention_is_skipped_without_a_gpu(tiny):
  r, md = tiny
  assert r["attention"] == {"skipped": "cudnn needs a GPU (this device: cpu)"}
  assert "Skipped: cudnn needs a GPU" in md
  assert set(r["phase_s"]) >= {"train", "decode", "loss", "attention"} and r["total_s"] > 0


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100-PCIE-40GB", 312e12),
    ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12), ("NVIDIA GeForce RTX 4090", None)])
def test_published_peaks_by_device_kind(kind, peak):
  assert device_check.peak_flops(types.SimpleNamespace(platform="gpu", device_kind=kind))["flops_per_s"] == peak


def test_a_failing_planner_is_reported_not_raised():
  planner = device_check.Planner(["--gin_file=no_such_file.gin", "--devices=1"], "gpu")
  r = planner.result(timeout=120)
  assert "no_such_file.gin" in r["error"] and r["error"].startswith("the planner exited 2")
  # planned as a GPU would compile it: without the CPU's hand-written gradients
  assert r["command"].startswith("MOE_JAX_HAND_GRADIENTS=off python -m moe_jax.plan ")
  assert device_check.memory_section(r, {}, {"peak_gib": 3.0})["measured_over_planned"] is None


def test_a_failing_section_is_recorded_and_the_rest_still_renders():
  """On a lent machine one failure must not cost the other sections: the
  error is kept, the report renders, and it counts as a problem (exit 1)."""
  report = {"phase_s": {}}

  def broken():
    raise RuntimeError("RESOURCE_EXHAUSTED: out of memory\nmore detail")
  assert device_check.section(report, "decode", broken) == {"error": "RuntimeError: RESOURCE_EXHAUSTED: out of memory"}
  assert report["phase_s"]["decode"] >= 0
  report.update(size="base", device={"kind": "NVIDIA H100 80GB HBM3", "platform": "gpu", "count": 1, "jax": "x"},
                settings={"preset": "t5_1_1_base", "layers": "12+12 layers", "activation_dtype": "bfloat16",
                          "batch_size": 16, "lengths": [512, 128], "rounds": 5}, total_s=1.0,
                peak={"flops_per_s": 989e12, "source": "datasheet"}, train={"error": "XlaRuntimeError: boom"},
                decode={"error": "RuntimeError: RESOURCE_EXHAUSTED: out of memory"},
                loss={"error": "no device losses (the train step failed)"},
                memory=device_check.memory_section({"command": "python -m moe_jax.plan", "error": "exited 2"}, {},
                                                   {"peak_gib": None, "reason": "the train step failed"}))
  assert device_check.markdown(report).count("\nError: ") == 3 and "1 s so far" in device_check.markdown(report)
  report["problems"] = device_check.problems(report)
  assert [p.split(":")[0] for p in report["problems"]] == ["train", "decode", "loss", "planner"]
  assert "Problems: train: XlaRuntimeError: boom; " in device_check.markdown(report)
