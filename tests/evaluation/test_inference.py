"""Inference inputs and decoding: rows and their domains, MOELoRA merged per
task decodes like the adapted model (the entry point: test_infer_entry.py)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.evaluation import inference
from moe_jax.data import jsonl, vocab
from moe_jax.models import build_model
from moe_jax.peft import MOELoRA, MoA
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


def test_jsonl_rows_name_their_domain_by_name_or_data_id(tmp_path):
  import tasks  # noqa: F401  the data's domain ids
  from moe_jax.data import ids
  sentiment = ids.current()["domain_ids"]["sentiment"]
  good = tmp_path / "in.jsonl"
  good.write_text(f'{{"inputs": "a", "domain": "sentiment"}}\n{{"inputs": "b", "domain_id": {sentiment}}}\n'
                  f'{{"inputs": "c", "domain": "sentiment", "domain_id": {sentiment}}}\n'
                  '{"inputs": "d", "domain": null}\n')
  assert inference.load_rows(str(good), "validation", 5) == [
      {"inputs": "a", "task_id": 0, "domain": "sentiment"}, {"inputs": "b", "task_id": 0, "domain": "sentiment"},
      {"inputs": "c", "task_id": 0, "domain": "sentiment"}, {"inputs": "d", "task_id": 0}]
  for line, message in [
      ('{"inputs": "a", "domain": 3}', "field 'domain' must be a domain name (a non-empty string), got 3"),
      ('{"inputs": "a", "domain_id": 999}', "field 'domain_id' must be a data domain id"),
      ('{"inputs": "a", "domain_id": "sentiment"}', "field 'domain_id' must be a data domain id"),
      (f'{{"inputs": "a", "domain": "summarization", "domain_id": {sentiment}}}',
       f"field 'domain' ('summarization') and 'domain_id' ({sentiment}, which is 'sentiment') name different "
       "domains")]:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line + "\n")
    with pytest.raises(jsonl.DataError) as e:
      inference.load_rows(str(bad), "validation", 5)
    assert str(e.value).startswith(f"{bad}:1: {message}"), e.value


def test_seqio_rows_carry_their_tasks_domain():
  import tasks  # noqa: F401
  rows = inference.load_rows("rotten_tomatoes_Movie_Expressed_Sentiment", "train", 2)
  assert [r["domain"] for r in rows] == ["sentiment", "sentiment"] and all(r["inputs"] for r in rows)
  # A mixture keeps only its output features unless told: its rows need the text and ids passed through.
  rows = inference.load_rows("commonsense_train", "train", 3)
  assert len(rows) == 3 and all(r["inputs"] and r["domain"] in ("commonsense", "QA_multiple_choice", "coreference")
                                for r in rows), rows  # the suite's categories


def test_moa_domains_are_indices_into_moa_domains_by_name():
  given = MoA(domains=("QA_multiple_choice", "sentiment"))
  ids_of = lambda adapters, rows: adapters.row_features(rows)["domain_id"].tolist()  # noqa: E731
  assert ids_of(given, [{"domain": "sentiment"}, {"domain": "QA_multiple_choice"}]) == [1, 0]
  # Routers choose in the other modes: the rows' domains are not read, as in training.
  assert ids_of(MoA(domains=("a", "b"), mode="per_layer"), [{"domain": "x"}]) == [0]
  assert ids_of(MoA(domains=("only",)), [{"inputs": "no domain"}]) == [0]
  assert MOELoRA(num_experts=2, rank=4).row_features([{"domain": "x"}]) == {}  # no per-row features


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
  enc = inference._prompt_batch(config, inference.tokenize(rows, v, 512))["encoder_input_tokens"]
  direct = np.asarray(model.predict_batch(params, {"encoder_input_tokens": jnp.asarray(enc),
                                                   "task_id": jnp.asarray([1, 2, 1])}, max_decode_length=6))
  assert merged == direct.tolist()
  plain = np.asarray(build_model(config).predict_batch(common.backbone_only(params),
                                                       {"encoder_input_tokens": jnp.asarray(enc)},
                                                       max_decode_length=6))
  assert plain.tolist() != merged  # the adapters change the output, so merging is tested
  assert inference.detokenize(v, [v.encode("hello")[0], 1, 0]) == v.decode(v.encode("hello")[:1])
