"""Per-segment task/domain ids: a packed row routes each segment by its own id.

Three examples, the first two of different tasks and domains, unpacked (one
per row, ids [B]) and packed (two in one row, ids [B, S] per segment, -1 for
an unused slot): the same loss and the same gradients for MOELoRA (task gate)
and MoA (given domain plus the supervised routers' domain loss), on T5 and on
a decoder-only prefix LM (packed by hand: the converters pack only T5).

The comparison runs in float64: in float32 the two batches already differ by
up to 2e-5 (relative) through summation order alone. In float64 MOELoRA's
agree to ~1e-15 and MoA's to ~2e-7 (its routers pool in float32 by design)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from moe_jax.data import ids
from moe_jax.models import build_model
from moe_jax.peft import MOELoRA, MoA, moa, sites
from moe_jax.peft.trainable import is_adapter_path
from tests.peft import common

# (inputs, targets, task, domain)
EXAMPLES = [([5, 6, 7, 1], [4, 5, 1], 0, 0), ([8, 9, 1], [6, 1], 2, 1), ([3, 10, 11, 12, 1], [7, 8, 9, 1], 1, 2)]


def _t5_row(group):
  row = {k: [] for k in ("encoder_input_tokens", "encoder_segment_ids", "decoder_input_tokens",
                         "decoder_target_tokens", "decoder_segment_ids")}
  for seg, (enc, tgt, _, _) in enumerate(group, start=1):
    row["encoder_input_tokens"] += enc
    row["encoder_segment_ids"] += [seg] * len(enc)
    row["decoder_input_tokens"] += [0] + tgt[:-1]
    row["decoder_target_tokens"] += tgt
    row["decoder_segment_ids"] += [seg] * len(tgt)
  return row


def _prefix_lm_row(group):
  """Inputs then targets in one sequence (as converters.prefix_lm), loss on the targets."""
  row = {k: [] for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_causal_attention",
                         "decoder_loss_weights", "decoder_segment_ids", "decoder_positions")}
  for seg, (inputs, targets, _, _) in enumerate(group, start=1):
    seq, n = inputs + targets, len(inputs + targets) - 1
    row["decoder_input_tokens"] += seq[:-1]
    row["decoder_target_tokens"] += seq[1:]
    row["decoder_causal_attention"] += [int(t < len(inputs)) for t in range(n)]
    row["decoder_loss_weights"] += [int(t >= len(inputs) - 1) for t in range(n)]
    row["decoder_segment_ids"] += [seg] * n
    row["decoder_positions"] += list(range(n))
  return row


def _rows(family, groups, packed):
  """One row per group of examples. Packed: segment ids and the ids per
  segment (-1 for an unused slot); unpacked: one example and its ids per row."""
  rows = [(_t5_row if family == "t5" else _prefix_lm_row)(g) for g in groups]
  batch = {}
  for k in rows[0]:
    width = max(len(r[k]) for r in rows) + (2 if packed else 0)  # packed rows end in padding
    batch[k] = [r[k] + [0] * (width - len(r[k])) for r in rows]
  for k, i in (("task_id", 2), ("domain_id", 3)):
    batch[k] = [[e[i] for e in g] + [-1] * (len(EXAMPLES) - len(g)) if packed else g[0][i] for g in groups]
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  return batch if packed else {k: v for k, v in batch.items() if "segment" not in k and "positions" not in k}


def _loss_and_grads(model, params):
  """batch -> (loss_fn, its gradient w.r.t. the adapter (trainable) parameters)."""
  flat = traverse_util.flatten_dict(params)
  trainable = {k: v for k, v in flat.items() if is_adapter_path(k)}
  frozen = {k: v for k, v in flat.items() if not is_adapter_path(k)}

  def loss(t, batch):
    return model.loss_fn(traverse_util.unflatten_dict({**frozen, **t}), batch, None)[0]
  step = jax.jit(jax.value_and_grad(loss))
  return lambda batch: step(trainable, batch)


# Attention and FFN sites; in the T5 decoder also over encoder tokens (v: cross-attention values).
TARGETS = ("q", "v", "wo", "down")
CONFIGS = {"t5": dataclasses.replace(common.T5_TINY, num_encoder_layers=1, num_decoder_layers=1),
           "llama": dataclasses.replace(common.LLAMA_TINY, num_layers=1)}


@pytest.mark.parametrize("family", ["t5", "llama"])
@pytest.mark.parametrize("adapters", [
    MOELoRA(num_experts=2, rank=4, num_tasks=3, task_dim=4, targets=TARGETS),
    MoA(domains=("a", "b", "c"), rank=2, router_loss_weight=1.0, targets=TARGETS)], ids=["moelora", "moa"])
def test_packed_rows_route_each_segment_by_its_own_id(adapters, family):
  unpacked = _rows(family, [[e] for e in EXAMPLES], packed=False)
  packed = _rows(family, [EXAMPLES[:2], EXAMPLES[2:]], packed=True)
  with jax.enable_x64(True):
    config = dataclasses.replace(CONFIGS[family], dtype="float64", param_dtype="float64")
    model = build_model(config, adapters, loss_normalizing_factor="average_per_sequence")
    params = jax.jit(model.init)(jax.random.key(0), common.batch(family))
    params = common.perturb_adapters(params, seed=2, scale=0.5)
    loss_and_grads = _loss_and_grads(model, jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params))
    loss_u, grads_u = loss_and_grads(unpacked)
    loss_p, grads_p = loss_and_grads(packed)
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5, atol=1e-5)
    assert set(grads_p) == set(grads_u) and max(np.abs(g).max() for g in grads_u.values()) > 1e-2
    for k, g in grads_u.items():
      np.testing.assert_allclose(grads_p[k], g, rtol=1e-5, atol=1e-5, err_msg="/".join(k))
    # The ids decide: giving the second segment of row 0 the first one's id changes the loss.
    same = {k: packed[k].at[0, 1].set(packed[k][0, 0]) for k in ("task_id", "domain_id")}
    assert abs(float(loss_and_grads(dict(packed, **same))[0]) - float(loss_p)) > 1e-4  # 10x the tolerance


def test_per_segment_ids_need_a_packed_batch():
  ctx = sites.AdapterContext(features={"task_id": jnp.zeros((3, 2), jnp.int32)})
  with pytest.raises(ValueError, match="one id per packed segment"):
    sites.ids_by_segment(ctx, "task_id", 3)
  packed = ctx.replace(segment_ids=jnp.ones((3, 4), jnp.int32),
                       features={"task_id": jnp.array([[4, -1], [5, 6], [7, -1]])})
  # column = segment id: 0 (padding) and the absent segment get 0
  np.testing.assert_array_equal(sites.ids_by_segment(packed, "task_id", 4), [[0, 4, 0, 0], [0, 5, 6, 0], [0, 7, 0, 0]])


def test_moa_data_domains_keep_unused_segment_slots(monkeypatch):
  # Data ids 0..2 name x, y, z; the MoA orders them y, x and lacks z. -1 marks a
  # packed row's unused slot: kept, and not taken for z (numpy's index -1).
  monkeypatch.setitem(ids._MAPS, "domain_ids", {"x": 0, "y": 1, "z": 2})
  remap = moa.data_domains(MoA(domains=("y", "x")))
  out = remap({"domain_id": np.array([[0, 1, -1], [1, -1, -1]])})["domain_id"]
  np.testing.assert_array_equal(out, [[1, 0, -1], [0, -1, -1]])
  with pytest.raises(ValueError, match=r"\['z'\]"):
    remap({"domain_id": np.array([[2, -1]])})


def test_route_by_vote_refuses_packed_rows():
  # It picks one domain per row; a packed row holds several examples.
  with pytest.raises(ValueError, match="one domain per row"):
    moa.route_by_vote(None, None, {"decoder_segment_ids": jnp.ones((1, 4), jnp.int32)})
