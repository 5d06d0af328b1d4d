"""`python -m moe_jax.infer` (in process) on tiny models and checkpoints saved
the way the trainer saves them: MoA rows decode with their own domain's LoRA,
decoder-only (Llama-family) models decode their prompts as `predict_batch`
does, and bad domains or vocabularies stop with one line."""
import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from moe_jax import gin_utils
from moe_jax.evaluation import inference
from moe_jax.training import checkpoints, trainer
from moe_jax.data import ids, vocab
from moe_jax.peft import moa
from moe_jax.peft.trainable import is_adapter_path
from tests.inprocess import restored_state, run_entry, snapshot
from tests.peft import common

import tasks  # noqa: F401  registers the seqio tasks and the data's domain ids

# Three domains on two projections keep the compiled programs small; the order
# differs from the data's domain ids, so only a mapping by name finds the slices.
T5_MOA = ["--gin_file=gin_configs/models/t5_1_1_tiny.gin", "--gin_file=gin_configs/methods/moa.gin",
          "--gin.MoA.domains=('sentiment', 'summarization', 'QA_closed_book')", "--gin.MoA.targets=('q', 'v')"]
# The real T5 vocabulary (32100 ids) needs a wider embedding than llama_tiny's 512.
LLAMA = ["--gin.model.preset='llama_tiny'", "--gin.model.config_overrides={'vocab_size': 32128}"]
LLAMA_MILORA = [*LLAMA, "--gin_file=gin_configs/methods/milora.gin"]
MAX_DECODE = 5


def _model(flags):
  with restored_state():
    gin_utils.configure(flags)
    return gin_utils.model()


def _save_run(run_dir, model, params) -> str:
  """A full checkpoint (SAVE_FROZEN=True's layout) and run.json, as the trainer writes them."""
  flat = traverse_util.flatten_dict(params)
  trainable = {k: v for k, v in flat.items() if is_adapter_path(k)}
  frozen = {k: v for k, v in flat.items() if k not in trainable}
  ckpts = checkpoints.Checkpoints(str(run_dir / "checkpoints"))
  ckpts.save(3, {"trainable": traverse_util.unflatten_dict(trainable),
                 "frozen": traverse_util.unflatten_dict(frozen), "opt_state": {},
                 "step": np.int64(3), "batches_seen": np.int64(3)}, force=True)
  ckpts.close()
  (run_dir / "run.json").write_text(json.dumps(trainer.describe(model)))
  return str(run_dir / "checkpoints")


def _trained_run(tmp_path_factory, name, flags, seed):
  """(model, init params as infer starts from, the checkpoint's params, its path):
  random adapters and routers, so domains and routing change the tokens."""
  model = _model(flags)
  init = model.init(jax.random.key(0))
  params = common.perturb_adapters(init, seed=seed, scale=1.0)
  return model, init, params, _save_run(tmp_path_factory.mktemp(name), model, params)


@pytest.fixture(scope="module")
def moa_run(tmp_path_factory):
  return _trained_run(tmp_path_factory, "moa", T5_MOA, seed=1)


@pytest.fixture(scope="module")
def milora_run(tmp_path_factory):
  return _trained_run(tmp_path_factory, "milora", LLAMA_MILORA, seed=2)


def _infer(flags, ckpt, inputs, out, *extra) -> int:
  return run_entry("infer", ["--gin_file=gin_configs/runs/infer.gin", *flags, f"--gin.CHECKPOINT_PATH={ckpt}",
                             f"--gin.MODEL_DIR={out}", f"--gin.INFER_INPUTS={inputs}",
                             f"--gin.MAX_DECODE_LENGTH={MAX_DECODE}", *extra])


def _predictions(out):
  return [json.loads(l) for l in open(out / "infer" / "predictions.jsonl")]


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _padded(texts):
  """Prompts tokenised here, independently of inference.py: T5 ids, EOS, right-padded with 0."""
  v = vocab.t5_vocabulary()
  toks = [v.encode(t) + [1] for t in texts]
  width = max(map(len, toks))
  return np.array([t + [0] * (width - len(t)) for t in toks], np.int32), np.array([len(t) for t in toks])


ROWS = [{"inputs": "The film was a delight from start to finish.", "domain": "sentiment"},
        {"inputs": "Who wrote Hamlet?", "domain_id": ids.current()["domain_ids"]["QA_closed_book"]},
        {"inputs": "Summarise: the council met on Monday and voted to close the old bridge.",
         "domain": "summarization"}]


def test_moa_rows_decode_with_their_own_domains(moa_run, tmp_path):
  model, _, params, ckpt = moa_run
  assert _infer(T5_MOA, ckpt, _jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "out") == 0
  preds = _predictions(tmp_path / "out")
  assert [p["domain"] for p in preds] == ["sentiment", "QA_closed_book", "summarization"]
  enc, _ = _padded([r["inputs"] for r in ROWS])
  own = np.array([model.adapters.domains.index(p["domain"]) for p in preds])
  assert own.tolist() == [0, 2, 1]  # MoA.domains' order, not the data's ids
  expected = model.predict_batch(params, {"encoder_input_tokens": enc, "domain_id": own, "task_id": own * 0},
                                 max_decode_length=MAX_DECODE)
  assert [p["prediction_ids"] for p in preds] == np.asarray(expected).tolist()
  first = model.predict_batch(params, {"encoder_input_tokens": enc, "domain_id": own * 0, "task_id": own * 0},
                              max_decode_length=MAX_DECODE)
  assert np.asarray(first).tolist() != np.asarray(expected).tolist()  # so the domains are what is tested


def test_moa_vote_routes_each_row_by_its_routers(moa_run):
  # Through `inference.decode`, not the entry point: a third infer run would
  # compile the model's init once more for no more coverage.
  model, _, params, _ = moa_run
  last = type(model)(model.config, dataclasses.replace(model.adapters, mode="last"))
  rows = [{"inputs": r["inputs"]} for r in ROWS]  # voting needs no domain
  got = inference.predict_rows(last, params, rows, vocab.t5_vocabulary(), max_decode_length=MAX_DECODE)
  enc, _ = _padded([r["inputs"] for r in rows])
  probe = {"encoder_input_tokens": enc, "decoder_input_tokens": np.zeros((3, 1), np.int32)}
  voted = np.asarray(moa.route_by_vote(model, params, probe, "last")["domain_id"])
  assert voted.any()  # some row leaves domain 0, so ignoring the vote would show
  # `given` with the voted domains computes what `last` does after its vote.
  expected = model.predict_batch(params, {"encoder_input_tokens": enc, "domain_id": voted, "task_id": voted * 0},
                                 max_decode_length=MAX_DECODE)
  assert got == np.asarray(expected).tolist()


def test_decoder_only_milora_decodes_as_predict_batch(milora_run, tmp_path):
  model, init, params, ckpt = milora_run
  texts = ["Is the sky blue?", "Paris is the capital of which country, and what river runs through it?",
           "A cat sat."]
  assert _infer(LLAMA_MILORA, ckpt, _jsonl(tmp_path / "in.jsonl", [{"inputs": t} for t in texts]),
                tmp_path / "out") == 0
  preds = _predictions(tmp_path / "out")
  tokens, lengths = _padded(texts)
  batch = {"decoder_input_tokens": tokens,
           "decoder_causal_attention": (np.arange(tokens.shape[1]) < lengths[:, None]).astype(np.int32)}
  expected = np.asarray(model.predict_batch(params, batch, max_decode_length=MAX_DECODE)).tolist()
  assert [p["prediction_ids"] for p in preds] == expected
  v = vocab.t5_vocabulary()
  assert [p["prediction"] for p in preds] == [v.decode([i for i in e if 1 < i < v.vocab_size]) for e in expected]
  untrained = np.asarray(model.predict_batch(init, batch, max_decode_length=MAX_DECODE)).tolist()
  assert untrained != expected  # the checkpoint's adapters change the tokens, so they are what decodes


@pytest.mark.parametrize("flags,rows,message", [
    (T5_MOA, [{"inputs": "a", "domain": "sentiment"}, {"inputs": "b", "domain": "sentimnt"}],
     "error: MoA has no LoRA for domain 'sentimnt' (row 2; MoA.domains: ['sentiment', 'summarization', "
     "'QA_closed_book']); did you mean sentiment?"),
    (T5_MOA, [{"inputs": "a"}], "error: row 1 names no domain, and MoA routes by the given domain"),
    (["--gin.model.preset='llama_tiny'"], [{"inputs": "Is the sky blue?"}],
     "error: row 1: token id 5796 is outside the model's vocabulary of 512 ids; prompts use the T5 vocabulary "
     "(32100 ids)"),
], ids=["unknown domain", "no domain", "vocabulary too small"])
def test_bad_rows_stop_before_the_checkpoint_is_read(tmp_path, capsys, flags, rows, message):
  not_a_checkpoint = tmp_path / "empty"  # never read: the rows are refused first
  not_a_checkpoint.mkdir()
  before = snapshot(tmp_path / "out")
  assert _infer(flags, not_a_checkpoint, _jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(message), err
  assert snapshot(tmp_path / "out") == before
