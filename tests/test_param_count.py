"""Parameter accounting against closed-form counts."""
import os
import re
import subprocess
import sys

from moe_jax import param_count

XL = dict(d_model=2048, d_kv=64, heads=32, d_ff=5120, layers=24)


def test_xl_counts_equal_closed_forms():
  rows = {name: (n, pct) for name, n, pct in param_count.table("t5_1_1_xl", ["ia3", "mov_10", "molora_10"])}
  inner = XL["heads"] * XL["d_kv"]
  attentions = 3 * XL["layers"]  # encoder self, decoder self and cross
  ffns = 2 * XL["layers"]
  ia3 = attentions * 2 * inner + ffns * XL["d_ff"]
  assert rows["ia3"][0] == ia3 == 540_672
  # MoV-10: ten vectors per site, routers (d_kv x E) on k/v and (d_ff x E) on the FFN.
  assert rows["mov_10"][0] == 10 * ia3 + attentions * 2 * XL["d_kv"] * 10 + ffns * XL["d_ff"] * 10
  # MoLoRA-10, rank 4 on q,k,v,o, wi_0, wo; routers read each site's input.
  d, f, r, e = XL["d_model"], XL["d_ff"], 4, 10
  per_attention = 4 * e * (d + inner) * r + 4 * d * e
  per_ffn = e * (d + f) * r * 2 + (d + f) * e
  assert rows["molora_10"][0] == attentions * per_attention + ffns * per_ffn
  assert 0.018 < rows["ia3"][1] < 0.02  # percent of the ~2.85B backbone


def test_llama_lora_count():
  (name, n, _), = param_count.table("llama2_7b", ["lora_r4"])
  d, f = 4096, 11008
  assert n == 32 * (4 * (d + d) * 4 + 2 * (d + f) * 4)


def test_cli_prints_one_line_per_preset_and_rejects_unknown_names():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "moe_jax.param_count", "--model=t5_1_1_small",
                        "--presets=ia3,lora_r4"], capture_output=True, text=True, env=env, check=True)
  lines = out.stdout.strip().splitlines()
  assert [l.split()[0] for l in lines] == ["ia3", "lora_r4"]
  assert all(re.fullmatch(r"\S+ \d+ \d+\.\d+%", l) for l in lines)
  bad = subprocess.run([sys.executable, "-m", "moe_jax.param_count", "--model=t5_1_1_xl", "--presets=mov_11"],
                       capture_output=True, text=True, env=env)
  assert bad.returncode != 0 and "mov_11" in bad.stderr
