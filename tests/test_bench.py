"""The train-step benchmark runs and reports what it claims (timings are not asserted)."""
import json

from bench import train_step


def test_benchmark_reports_every_method_side_by_side(tmp_path):
  out = tmp_path / "bench.json"
  report = train_step.main(["--preset=t5_1_1_tiny", "--layers=1", "--steps=1", "--lengths=8,4",
                            "--batch_size=2", "--methods=ia3,mov_10,full", f"--out={out}"])
  assert json.load(open(out)) == json.loads(json.dumps(report))
  r = report["results"]
  assert list(r) == ["ia3", "mov_10", "full"] and r["ia3"]["step_time_vs_ia3"] == 1.0
  assert all(v["step_ms"] > 0 and v["tokens_per_sec"] > 0 for v in r.values())
  # MoV-10 trains 10x IA3's vectors plus routers; full fine-tuning trains everything.
  assert r["mov_10"]["trainable_params"] > 10 * r["ia3"]["trainable_params"]
  assert r["full"]["trainable_params"] == r["full"]["total_params"]
