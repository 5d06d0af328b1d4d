"""MoA through the trainer: stage 1 for one domain in place (MOA_TRAIN_DOMAIN),
and a run's checkpoint loaded into an MoA with a domain appended."""
import jax
import numpy as np
import pytest
from flax import traverse_util

from moe_jax import checkpoints, gin_utils, weights
from moe_jax.peft import moa
from tests.inprocess import final_state, restored_state, train_in_process

MOA = ["--gin_file=gin_configs/methods/moa.gin", "--gin.TRAIN_STEPS=2", "--gin.LEARNING_RATE=0.1"]


def _model(*extra):
  with restored_state():
    gin_utils.configure(["--gin_file=gin_configs/demo.gin", *MOA, *extra])
    return gin_utils.model()


def _init(model):
  return jax.jit(lambda r: model.init(r, model._dummy_batch()))(jax.random.key(0))  # as the trainer


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory):
  run = tmp_path_factory.mktemp("moa") / "run"
  assert train_in_process(run, *MOA, "--gin.MOA_TRAIN_DOMAIN='sentiment'") == 0  # rotten_tomatoes
  return run


def test_stage_one_moves_only_that_domains_lora_slices(sentiment_run):
  model = _model()
  d = model.adapters.domains.index("sentiment")
  trained = traverse_util.flatten_dict(final_state(sentiment_run)["trainable"])
  init = traverse_util.flatten_dict(_init(model))
  assert trained and all(moa.is_domain_lora(k) for k in trained)  # routers and backbone stay frozen
  moved = 0
  for k, v in trained.items():
    v, v0 = np.asarray(v), np.asarray(init[k])
    change = np.abs(v - v0).reshape(v.shape[0], -1).max(-1)  # per domain (unrolled: axis 0)
    assert np.all(change[np.arange(len(change)) != d] == 0.0), "/".join(k)
    moved += change[d] > 0
  assert moved >= len(trained) // 2  # B starts at zero, so A moves from the second step on


def test_a_domain_appended_later_keeps_the_trained_slices(sentiment_run):
  grown = _model("--gin.MoA.domains=('QA_multiple_choice', 'QA_closed_book', 'structure_to_text', "
                 "'sentiment', 'summarization', 'topic_classification', 'paraphrase', 'new_domain')")
  init = _init(grown)
  params, _, _ = weights.load_initial(grown, init, str(sentiment_run / "checkpoints"))
  flat, flat_init = traverse_util.flatten_dict(params), traverse_util.flatten_dict(init)
  trained = traverse_util.flatten_dict(final_state(sentiment_run)["trainable"])
  for k, v in trained.items():
    np.testing.assert_array_equal(np.asarray(flat[k])[:7], np.asarray(v), err_msg="/".join(k))
    np.testing.assert_array_equal(np.asarray(flat[k])[7], np.asarray(flat_init[k])[7])
  # Inserted rather than appended: the saved slices would change meaning.
  moved = _model("--gin.MoA.domains=('new_domain', 'QA_multiple_choice', 'QA_closed_book', "
                 "'structure_to_text', 'sentiment', 'summarization', 'topic_classification', 'paraphrase')")
  with pytest.raises(checkpoints.CheckpointError, match="must be the first domains"):
    weights.load_initial(moved, init, str(sentiment_run / "checkpoints"))  # same shapes as `grown`


def test_moa_train_domain_errors(tmp_path, capsys):
  assert train_in_process(tmp_path / "a", *MOA, "--gin.MOA_TRAIN_DOMAIN='sentimnt'") == 2
  err = capsys.readouterr().err
  assert "MOA_TRAIN_DOMAIN='sentimnt' is not one of MoA.domains" in err and "did you mean sentiment?" in err
  assert train_in_process(tmp_path / "b", "--gin.MOA_TRAIN_DOMAIN='sentiment'") == 2  # demo: MoV
  assert "needs the MoA method; this run uses MoV" in capsys.readouterr().err
