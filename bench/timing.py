"""Round-robin timing: every variant runs once per round, medians over rounds.

Interleaving the variants spreads the host's load changes (other processes,
thermal state) over all of them, so their ratios are steadier than their
absolute times.
"""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable


def round_robin(variants: dict[str, Callable[[], None]], rounds: int, repeat: int = 1) -> dict[str, dict]:
  """Each callable runs `repeat` times per round (after one untimed warm-up);
  returns per variant the median seconds per call, all round times and the
  median count of minor page faults per call (memory the allocator handed
  back to the OS and the call touched afresh: see the Makefile's `bench`)."""
  for fn in variants.values():
    fn()
  times = {k: [] for k in variants}
  faults = {k: [] for k in variants}
  for _ in range(rounds):
    for name, fn in variants.items():
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      t0 = time.perf_counter()
      for _ in range(repeat):
        fn()
      times[name].append((time.perf_counter() - t0) / repeat)
      faults[name].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / repeat)
  return {k: {"median_s": statistics.median(v), "rounds_s": v, "page_faults": statistics.median(faults[k])}
          for k, v in times.items()}


def matmul_peak_flops(n: int = 1024, rounds: int = 5) -> float:
  """FLOP/s of one jitted float32 [n, n] x [n, n] matmul on this host, median."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  r = round_robin({"mm": lambda: f(a).block_until_ready()}, rounds, repeat=3)
  return 2.0 * n ** 3 / r["mm"]["median_s"]
