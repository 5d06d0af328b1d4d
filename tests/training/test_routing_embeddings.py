"""Instruction-embedding routing: template ids in the data, a frozen-encoder table, training."""
import os

import jax
import numpy as np
import pytest
import seqio
from flax import traverse_util

import tasks  # noqa: F401  registers the seqio tasks
from moe_jax import routing_embeddings, trainer
from moe_jax.data import ids, p3
from moe_jax.models import build_model, get_preset
from moe_jax.peft import MoV

TEMPLATES = ("rotten_tomatoes_Movie_Expressed_Sentiment", "rotten_tomatoes_Reviewer_Opinion_bad_good_choices")


def test_instruction_text_keeps_the_prompt_and_drops_the_example():
  texts = [p3.instruction_text(t) for t in TEMPLATES]
  assert texts[0] != texts[1] and all(texts)
  for t in texts:
    assert "{{" not in t and "{%" not in t and "text" not in t.split()  # the review field is not rendered


def test_the_table_is_the_frozen_encoder_mean_and_ignores_adapters():
  config = get_preset("t5_1_1_tiny")
  model = build_model(config, MoV(num_experts=2, routing="embedding"))
  params = model.init(jax.random.key(0))
  flat = traverse_util.flatten_dict(params)
  perturbed = traverse_util.unflatten_dict(  # trained-looking adapters must not change the table
      {k: v * 3.0 + 0.5 if any(p.endswith("_adapter") for p in k) else v for k, v in flat.items()})
  names, table = routing_embeddings.build_table(model, params)
  _, table2 = routing_embeddings.build_table(model, perturbed)
  np.testing.assert_array_equal(table, table2)
  assert table.shape == (len(ids.current()["template_ids"]), config.d_model)
  rows = [names.index(t) for t in TEMPLATES]
  assert rows == [ids.template_id(t) for t in TEMPLATES]
  assert not np.allclose(table[rows[0]], table[rows[1]], atol=1e-4)


@pytest.fixture(scope="module")
def two_template_mixture():
  name = "test_two_rotten_tomatoes_templates"
  if name not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(name, [(t, 1.0) for t in TEMPLATES])
  return name


def test_embedding_routed_mov_trains_and_routes_by_template(tmp_path, two_template_mixture):
  model = build_model(get_preset("t5_1_1_tiny"), MoV(num_experts=3, routing="embedding"))
  run = str(tmp_path / "run")
  last = trainer.train(model, model_dir=run, mixture_or_task_name=two_template_mixture,
                       task_feature_lengths={"inputs": 32, "targets": 8}, train_steps=3, batch_size=4,
                       learning_rate=0.1, checkpoint_period=3, evaluator=None)
  assert np.isfinite(last["loss"])
  with np.load(os.path.join(run, routing_embeddings.CACHE_FILE)) as f:
    assert [str(n) for n in f["names"]][:1] and f["table"].shape[1] == model.config.d_model
  from moe_jax import weights
  fresh = jax.jit(lambda r: model.init(r, model._dummy_batch()))(jax.random.key(0))  # as the trainer
  trained, _, _ = weights.load_initial(model, fresh, os.path.join(run, "checkpoints"))
  kernel = ("encoder", "layers_0", "mlp", "ffn_hidden_adapter", "router", "kernel")
  moved = traverse_util.flatten_dict(trained)[kernel] - traverse_util.flatten_dict(fresh)[kernel]
  assert float(np.abs(moved).max()) > 1e-3  # the router was trained on the embeddings
  # the route depends on the template: the same tokens under two templates score differently
  table = routing_embeddings.for_run(model, trained, run)
  batch = {"encoder_input_tokens": np.array([[5, 6, 7, 1]] * 2), "decoder_input_tokens": np.array([[0, 4, 5]] * 2),
           "decoder_target_tokens": np.array([[4, 5, 1]] * 2),
           "template_id": np.array([ids.template_id(t) for t in TEMPLATES])}
  scores = np.asarray(model.score_batch(trained, routing_embeddings.attach(batch, table)))
  assert abs(scores[0] - scores[1]) > 1e-6
