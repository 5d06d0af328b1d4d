"""The benchmark runs and reports what it claims (timings are not asserted)."""
import importlib.util
import json

import pytest

from bench import data_pipeline, run, train_step


def test_train_step_benchmark_reports_every_method_side_by_side(tmp_path):
  out = tmp_path / "bench.json"
  report = train_step.main(["--preset=t5_1_1_tiny", "--layers=1", "--rounds=1", "--lengths=8,4",
                            "--batch_size=2", "--methods=ia3,mov_10,full", f"--out={out}"])
  assert json.load(open(out)) == json.loads(json.dumps(report))
  r = report["results"]
  assert list(r) == ["ia3", "mov_10", "full"] and r["ia3"]["step_vs_ia3"] == 1.0
  assert all(v["step_ms"] > 0 and v["tokens_per_sec"] > 0 and v["flops"] > 0 for v in r.values())
  # MoV-10 trains 10x IA3's vectors plus routers; full fine-tuning trains everything.
  assert r["mov_10"]["trainable_params"] > 10 * r["ia3"]["trainable_params"]
  assert r["full"]["trainable_params"] == r["full"]["total_params"]
  # full fine-tuning computes weight gradients: more FLOPs than IA3
  assert r["full"]["flops_vs_ia3"] > 1.0


def test_make_bench_writes_json_and_markdown_with_decoding_and_the_torch_step(tmp_path):
  report = run.main(["--preset=t5_1_1_tiny", "--layers=1", "--rounds=1", "--lengths=8,4", "--batch_size=2",
                     "--methods=ia3,lora_r4,lora_r40", "--decode=2,6,3", "--decode_variants=base,moelora_merged",
                     f"--out_dir={tmp_path}"])
  assert json.load(open(tmp_path / "bench.json")) == json.loads(json.dumps(report))
  md = (tmp_path / "bench.md").read_text()
  train, dec = report["train"], report["decode"]
  assert train["lora_r4"]["step_vs_ia3"] > 0 and train["lora_r4"]["step_vs_lora_r4"] == 1.0
  assert 0 < train["ia3"]["percent_of_matmul_peak"] and report["matmul_peak_gflops"] > 0
  assert dec["base"]["speed_vs_base"] == 1.0 and dec["moelora_merged"]["tokens_per_sec"] > 0
  assert dec["moelora_merged"]["parameters"] == dec["base"]["parameters"]  # merged: no adapter left
  has_torch = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "peft"))
  assert (run.TORCH in train) == bool(has_torch)
  for name in list(train) + list(dec):
    assert f"| {name} |" in md
  assert train["ia3"]["page_faults_per_step"] >= 0 and "page faults / step" in md
  assert report["allocator"].startswith("glibc malloc") and report["allocator"] in md
  # the routing control: LoRA-r4's preset at rank 40, ten times the trainable parameters
  assert train["lora_r40"]["trainable_params"] == 10 * train["lora_r4"]["trainable_params"]
  pair = report["paired_ratios"]["lora_r40 / lora_r4"]
  assert pair["median"] == train["lora_r40"]["rounds_ms"][0] / train["lora_r4"]["rounds_ms"][0]
  assert f"lora_r40 / lora_r4 {pair['median']:.3f}" in md


def test_round_robin_counts_the_page_faults_each_call_makes():
  """Page faults are what an allocator that hands memory back to the OS costs
  per step (see the Makefile's bench): a call touching 16 MiB of fresh
  anonymous memory makes ~4096 of them, a call touching nothing makes none."""
  import mmap
  from bench import timing
  size = 16 * 2 ** 20

  def touch():
    m = mmap.mmap(-1, size)
    for i in range(0, size, mmap.PAGESIZE):
      m[i] = 1
    m.close()

  r = timing.round_robin({"touch": touch, "nothing": lambda: None}, rounds=3)
  assert size // mmap.PAGESIZE <= r["touch"]["page_faults"] < 2 * size // mmap.PAGESIZE
  assert r["nothing"]["page_faults"] < 64


def test_paired_ratios_pair_rounds_within_one_package():
  train = {"ia3": {"rounds_ms": [100.0, 200.0, 400.0]}, "mov_10": {"rounds_ms": [110.0, 240.0, 400.0]},
           "before:ia3": {"rounds_ms": [100.0, 100.0, 100.0]}, "before:mov_10": {"rounds_ms": [150.0, 130.0, 120.0]},
           "lora_r4": {"rounds_ms": [1.0, 1.0, 1.0]}, "before:molora_10": {"rounds_ms": [5.0, 5.0, 5.0]}}
  r = train_step.paired_ratios(train)
  # molora_10 and lora_r40 absent, and before:molora_10 has no before:lora_r4
  # (lora_r4 belongs to the other package): only MoV-10 / IA3, once per package
  assert set(r) == {"mov_10 / ia3", "before:mov_10 / ia3"}
  assert r["mov_10 / ia3"] == {"median": 1.1, "min": 1.0, "max": 1.2}
  assert r["before:mov_10 / ia3"] == {"median": 1.3, "min": 1.2, "max": 1.5}


def test_round_robin_reports_seconds_per_call_not_per_round():
  """repeat=4 calls of a 20 ms function: the median is one call's time."""
  import time
  from bench import timing
  r = timing.round_robin({"sleep": lambda: time.sleep(0.02)}, rounds=3, repeat=4)
  assert 0.019 <= r["sleep"]["median_s"] <= 0.03, r["sleep"]


def test_matmul_peak_agrees_with_a_separately_timed_matmul():
  """The benchmark's peak (FLOP/s) against the same matmul timed call by call
  here: within a factor of two (both on this host, moments apart)."""
  import statistics
  import time
  import jax
  import jax.numpy as jnp
  from bench import timing
  n = 512
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(15):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  separate = 2.0 * n ** 3 / statistics.median(times)
  peak = timing.matmul_peak_flops(n=n, rounds=5)
  assert 0.5 <= peak / separate <= 2.0, (peak, separate)


@pytest.mark.slow
def test_bench_data_reports_start_up_steady_rates_and_resume_times(tmp_path):
  """`make bench-data` on small settings: every figure present and positive;
  the restored positions were really saved at both steps."""
  data_pipeline.main(["--sources=jsonl", "--rows=20", "--resume_steps=1,3", "--resume_batch=2",
                      f"--out_dir={tmp_path}"])
  report = json.load(open(tmp_path / "bench_data.json"))
  assert [(r["source"], r["pack"]) for r in report["pipelines"]] == [("jsonl", False), ("jsonl", True)]
  for r in report["pipelines"]:
    assert 0 < r["first_row_s"] <= r["row_100_s"] <= r["row_500_s"] and r["steady_rows_per_s"] > 0
  packed = report["pipelines"][1]
  assert packed["steady_examples_per_s"] > packed["steady_rows_per_s"]  # several examples per packed row
  res = report["resume"]
  assert res["restored_step_1"]["restored"] and res["restored_step_3"]["restored"]
  assert res["replayed_step_1"]["restored"] is False
  assert res["restored_step_1"]["first_batch_s"] > 0 and res["restored_step_3"]["first_batch_s"] > 0
  assert sorted(p.name for p in (tmp_path / "positions").iterdir()) == ["1", "3"]
  assert "| jsonl | True |" in (tmp_path / "bench_data.md").read_text()
