"""Adapter-only export and MOELoRA per-task merged checkpoints that transformers loads."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from moe_jax.evaluation import adapter_export
from moe_jax.peft import MOELoRA, MoV
from moe_jax.peft.trainable import is_adapter_path, trainable_mask
from moe_jax import trainer
from tests.peft import common


@pytest.fixture(scope="module")
def moelora():
  model, params = common.make("t5", MOELoRA(num_experts=2, rank=4, num_tasks=3, task_dim=5))
  return model, common.perturb_adapters(params, seed=1)


def test_adapters_round_trip_and_hold_only_trained_weights(moelora, tmp_path):
  _, params = moelora
  trainable, _ = trainer.split_params(params, trainable_mask(params))
  path = adapter_export.save_adapters(trainable, str(tmp_path / "a" / "adapters.safetensors"), {"step": "7"})
  loaded = adapter_export.load_adapters(path)
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(trainable)
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(trainable)):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert all(is_adapter_path(k) for k in common.flat(loaded))
  assert os.listdir(tmp_path / "a") == ["adapters.safetensors"]


def test_merged_task_checkpoint_loads_in_transformers_with_the_adapted_logits(moelora, tmp_path):
  from transformers import T5ForConditionalGeneration
  model, params = moelora
  [path] = adapter_export.merged_exports(model, params, {"rte": 1, "cb": 2}, ["rte"], str(tmp_path))
  assert path == str(tmp_path / "merged" / "rte")
  batch = dict(common.batch("t5"), task_id=jnp.ones((3,), jnp.int32))
  ours = np.asarray(model.compute_logits(params, batch))
  hf = T5ForConditionalGeneration.from_pretrained(path).eval()
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(np.asarray(batch["encoder_input_tokens"])),
                attention_mask=torch.tensor(np.asarray(batch["encoder_input_tokens"]) > 0),
                decoder_input_ids=torch.tensor(np.asarray(batch["decoder_input_tokens"]))).logits.numpy()
  mask = np.asarray(batch["decoder_target_tokens"]) > 0
  # 5e-4: the f32 rounding of folding B.diag(w).A into the kernels (merge_task is
  # 1e-5 against the adapted model) plus torch vs XLA (1e-4 in the parity tests).
  np.testing.assert_allclose(theirs[mask], ours[mask], atol=5e-4, rtol=1e-4)
  other = np.asarray(model.compute_logits(params, dict(batch, task_id=jnp.full((3,), 2, jnp.int32))))
  assert np.abs(other[mask] - theirs[mask]).max() > 1e-3  # the export is task-specific


def test_merge_errors_name_the_problem(moelora, tmp_path):
  model, params = moelora
  with pytest.raises(KeyError, match="wic"):
    adapter_export.merged_exports(model, params, {"rte": 1}, ["wic"], str(tmp_path))
  mov, mov_params = common.make("t5", MoV(num_experts=2))
  with pytest.raises(ValueError, match="MOELoRA"):
    adapter_export.merged_exports(mov, mov_params, {"rte": 1}, ["rte"], str(tmp_path))
  assert not os.listdir(tmp_path)
