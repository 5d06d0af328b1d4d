"""MoA through the trainer: stage 1 for one domain in place (MOA_TRAIN_DOMAIN),
and a run's checkpoint loaded into an MoA with a domain appended, with unrolled
layers and with scanned ones (where the domain axis comes after the layer axis)."""
import jax
import numpy as np
import pytest
from flax import traverse_util

from moe_jax import checkpoints, gin_utils, weights
from moe_jax.peft import moa
from tests.inprocess import final_state, restored_state, train_in_process

MOA = ["--gin_file=gin_configs/methods/moa.gin", "--gin.TRAIN_STEPS=2", "--gin.LEARNING_RATE=0.1"]


LAYOUTS = {"unrolled": [], "scanned": ["--gin.SCAN_LAYERS=True"]}


def _model(layout, *extra):
  with restored_state():
    gin_utils.configure(["--gin_file=gin_configs/demo.gin", *MOA, *LAYOUTS[layout], *extra])
    return gin_utils.model()


def _init(model):
  return jax.jit(lambda r: model.init(r, model._dummy_batch()))(jax.random.key(0))  # as the trainer


@pytest.fixture(scope="module", params=list(LAYOUTS))
def sentiment_run(request, tmp_path_factory):
  run = tmp_path_factory.mktemp("moa") / "run"
  assert train_in_process(run, *MOA, *LAYOUTS[request.param], "--gin.MOA_TRAIN_DOMAIN='sentiment'") == 0
  # The domain axis of every stacked LoRA tensor: first, or after the scanned layer axis.
  return run, request.param, {"unrolled": 0, "scanned": 1}[request.param]


def _trained(run):
  trained = traverse_util.flatten_dict(final_state(run)["trainable"])
  assert trained and all(moa.is_domain_lora(k) for k in trained)  # routers and backbone stay frozen
  return trained


def test_stage_one_moves_only_that_domains_lora_slices(sentiment_run):
  run, layout, axis = sentiment_run
  model = _model(layout)
  d = model.adapters.domains.index("sentiment")
  trained, init = _trained(run), traverse_util.flatten_dict(_init(model))
  if layout == "scanned":  # stacked layers, each with its own slice
    assert all(v.shape[0] == 2 and v.shape[1] == len(model.adapters.domains) for v in trained.values())
  moved = 0
  for k, v in trained.items():
    v, v0 = np.asarray(v), np.asarray(init[k])
    change = np.moveaxis(np.abs(v - v0), axis, 0).reshape(v.shape[axis], -1).max(-1)  # per domain
    assert np.all(change[np.arange(len(change)) != d] == 0.0), "/".join(k)
    moved += change[d] > 0
  assert moved >= len(trained) // 2  # B starts at zero, so A moves from the second step on


def test_a_domain_appended_later_keeps_the_trained_slices(sentiment_run):
  run, layout, axis = sentiment_run
  grown = _model(layout, "--gin.MoA.domains=('QA_multiple_choice', 'QA_closed_book', 'structure_to_text', "
                 "'sentiment', 'summarization', 'topic_classification', 'paraphrase', 'new_domain')")
  # The run is PEFT-only: loading rebuilds the seeded init, so any values do here.
  shapes = jax.eval_shape(lambda r: grown.init(r, grown._dummy_batch()), jax.random.key(0))
  rng = np.random.default_rng(0)
  init = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
  params, _, _ = weights.load_initial(grown, init, str(run / "checkpoints"))
  flat = traverse_util.flatten_dict(params)
  for k, v in _trained(run).items():
    got, saved = np.moveaxis(np.asarray(flat[k]), axis, 0), np.moveaxis(np.asarray(v), axis, 0)
    assert got.shape[0] == 8, "/".join(k)
    np.testing.assert_array_equal(got[:7], saved, err_msg="/".join(k))
    # The new domain's slice is a fresh init (B zero, A random), not a saved one.
    if k[-1] == "lora_b":
      assert not got[7].any(), "/".join(k)
    else:
      assert got[7].std() > 0 and not any(np.array_equal(got[7], s) for s in saved), "/".join(k)
  # Inserted rather than appended: the saved slices would change meaning.
  moved = _model(layout, "--gin.MoA.domains=('new_domain', 'QA_multiple_choice', 'QA_closed_book', "
                 "'structure_to_text', 'sentiment', 'summarization', 'topic_classification', 'paraphrase')")
  with pytest.raises(checkpoints.CheckpointError, match="must be the first domains"):
    weights.load_initial(moved, init, str(run / "checkpoints"))  # same shapes as `grown`


def test_moa_train_domain_errors(tmp_path, capsys):
  assert train_in_process(tmp_path / "a", *MOA, "--gin.MOA_TRAIN_DOMAIN='sentimnt'") == 2
  err = capsys.readouterr().err
  assert "MOA_TRAIN_DOMAIN='sentimnt' is not one of MoA.domains" in err and "did you mean sentiment?" in err
  assert train_in_process(tmp_path / "b", "--gin.MOA_TRAIN_DOMAIN='sentiment'") == 2  # demo: MoV
  assert "needs the MoA method; this run uses MoV" in capsys.readouterr().err
