"""Decoding throughput: greedy tokens/s for the backbone and the methods'
inference paths (MOELoRA merged into the weights or not, MiLoRA routing once
per prompt, MoA with a given domain)."""
from __future__ import annotations

import dataclasses
import importlib
import time

import jax
import jax.numpy as jnp
import numpy as np

VARIANTS = ("base", "moelora_merged", "moelora_unmerged", "milora", "moa_4")


def prepare(pkg, config, variant: str, batch_size: int, input_len: int, new_tokens: int):
  """(run one greedy decode of `new_tokens` tokens, facts) for `variant` on `pkg`."""
  models = importlib.import_module(pkg.__name__ + ".models")
  peft = importlib.import_module(pkg.__name__ + ".peft")
  # No token is EOS, so every run decodes exactly `new_tokens` tokens (random weights
  # would otherwise stop at a random step).
  config = dataclasses.replace(config, eos_id=-1)
  r = np.random.RandomState(0)
  batch = {"encoder_input_tokens": jnp.asarray(r.randint(2, config.vocab_size, (batch_size, input_len)), jnp.int32),
           "task_id": jnp.arange(batch_size, dtype=jnp.int32) % 4,
           "domain_id": jnp.arange(batch_size, dtype=jnp.int32) % 4}
  if variant == "base":
    model = models.build_model(config)
    params = model.init(jax.random.key(0))
  elif variant.startswith("moelora"):
    moelora = peft.PRESETS["moelora"]
    model = models.build_model(config, moelora)
    params = model.init(jax.random.key(0))
    if variant == "moelora_merged":  # zero overhead: task 0 folded into plain weights
      params = moelora.merge_task(params, 0)
      model = models.build_model(config)
  elif variant in peft.PRESETS:  # the method's own inference path (MiLoRA, MoA, MoV, ...)
    model = models.build_model(config, peft.PRESETS[variant])
    params = model.init(jax.random.key(0))
  else:
    raise SystemExit(f"unknown decode variant {variant!r}; choose from {VARIANTS} or a method preset "
                     f"{sorted(peft.PRESETS)}")
  t0 = time.perf_counter()
  out = model.predict_batch(params, batch, max_decode_length=new_tokens)
  jax.block_until_ready(out)
  facts = {"compile_and_first_decode_s": time.perf_counter() - t0, "batch_size": batch_size,
           "input_len": input_len, "new_tokens": new_tokens,
           # what decodes: the merged MOELoRA variant has exactly the backbone's parameters
           "parameters": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))}

  def run():
    jax.block_until_ready(model.predict_batch(params, batch, max_decode_length=new_tokens))

  return run, facts


def summarise(timed: dict, facts: dict) -> dict:
  out = {}
  for name, f in facts.items():
    s = timed[name]["median_s"]
    out[name] = dict(f, decode_ms=1e3 * s, tokens_per_sec=f["batch_size"] * f["new_tokens"] / s,
                     rounds_ms=[1e3 * t for t in timed[name]["rounds_s"]])
  for name, r in out.items():
    prefix = name[:-len(name.split(":")[-1])]
    if prefix + "base" in out:
      r["speed_vs_base"] = r["tokens_per_sec"] / out[prefix + "base"]["tokens_per_sec"]
  return out
