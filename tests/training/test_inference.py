"""Inference inputs and decoding: MOELoRA merged per task decodes like the adapted model."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import inference
from moe_jax.data import jsonl, vocab
from moe_jax.models import build_model
from moe_jax.peft import MOELoRA
from tests.peft import common


def test_jsonl_inputs_and_their_errors(tmp_path):
  good = tmp_path / "in.jsonl"
  good.write_text('{"inputs": "a", "task_id": 2}\n{"inputs": "b"}\n{"inputs": "c"}\n')
  assert inference.load_rows(str(good), "validation", 2) == [{"inputs": "a", "task_id": 2},
                                                             {"inputs": "b", "task_id": 0}]
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"inputs": "a"}\n{"inputs": \n')
  with pytest.raises(jsonl.DataError, match="bad.jsonl:2: invalid JSON"):
    inference.load_rows(str(bad), "validation", 5)
  missing = tmp_path / "missing.jsonl"
  missing.write_text('{"text": "a"}\n')
  with pytest.raises(jsonl.DataError, match="missing.jsonl:1: missing field 'inputs'"):
    inference.load_rows(str(missing), "validation", 5)


def test_moelora_merged_decoding_matches_the_adapted_model():
  # Real T5 vocabulary, so the text -> ids -> text path is the one users run.
  v = vocab.t5_vocabulary()
  config = dataclasses.replace(common.T5_TINY, vocab_size=32128)
  model = build_model(config, MOELoRA(num_experts=2, rank=4, num_tasks=3, task_dim=5))
  params = common.perturb_adapters(model.init(jax.random.key(0)), seed=2, scale=1.0)
  rows = [{"inputs": "Is the sky blue?", "task_id": 1}, {"inputs": "Paris is in", "task_id": 2},
          {"inputs": "A cat sat.", "task_id": 1}]

  class MergedOnly(type(model)):
    """The same MOELoRA model, but decoding it with its adapters is an error:
    unmerged decoding gives the same tokens, so only this shows the merge runs."""
    def predict_batch(self, *args, **kwargs):
      raise AssertionError("MOELoRA inference decoded the unmerged adapted model")

  merged = inference.predict_rows(MergedOnly(config, model.adapters), params, rows, v, max_decode_length=6,
                                  batch_size=2)
  enc = inference._encode(rows, v, 512)
  direct = np.asarray(model.predict_batch(params, {"encoder_input_tokens": jnp.asarray(enc),
                                                   "task_id": jnp.asarray([1, 2, 1])}, max_decode_length=6))
  assert merged == direct.tolist()
  plain = np.asarray(build_model(config).predict_batch(common.backbone_only(params),
                                                       {"encoder_input_tokens": jnp.asarray(enc)},
                                                       max_decode_length=6))
  assert plain.tolist() != merged  # the adapters change the output, so merging is tested
  assert inference.detokenize(v, [v.encode("hello")[0], 1, 0]) == v.decode(v.encode("hello")[:1])
