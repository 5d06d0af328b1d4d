"""One initialisation whatever the caller. Eager `model.init` and a jitted
init round the initialisers' scalings differently in the last bit (XLA folds
normal's sqrt(2) and the stddev into one multiply), so the trainer, the weight
loader and every entry point build parameters with one jitted program,
`frozen_source.init_params`."""
import os
import re

import jax
import numpy as np

from moe_jax import frozen_source, partitioning
from moe_jax.models import build_model, get_preset
from moe_jax.peft import PRESETS

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "moe_jax")


def test_no_product_code_initialises_eagerly():
  # Every place that makes parameters goes through frozen_source.init_params
  # (the model API defines init; frozen_source jits it).
  eager = []
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      path = os.path.join(root, f)
      if not f.endswith(".py") or path.endswith(("models/api.py", "frozen_source.py")):
        continue
      for no, line in enumerate(open(path, encoding="utf-8"), 1):
        if re.search(r"\.init\(\s*jax\.random\.key", line):
          eager.append(f"{os.path.relpath(path, PACKAGE)}:{no}: {line.strip()}")
  assert not eager, eager


def test_the_jitted_init_is_one_program_with_or_without_shardings():
  # MiLoRA on the Llama backbone: where eager and jitted init were seen to differ.
  model = build_model(get_preset("llama_tiny"), PRESETS["milora"])
  plain = frozen_source.init_params(model, 3)
  mesh = partitioning.Partitioner(partitioning.make_mesh(1, 1, devices=jax.devices()[:1]))
  with mesh.context():
    placed = frozen_source.init_params(model, 3, mesh.param_shardings(model.param_logical_axes()))
  for a, b, c in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(placed),
                     jax.tree_util.tree_leaves(jax.jit(model.init)(jax.random.key(3)))):
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(a), np.asarray(c))
