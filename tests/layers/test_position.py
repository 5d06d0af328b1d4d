"""T5 relative-position buckets and RoPE against transformers' implementations."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from moe_jax.layers.position import apply_rope, relative_position_bucket


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20), (16, 50), (64, 256)])
def test_relative_position_bucket_matches_transformers(bidirectional, num_buckets, max_distance):
  from transformers.models.t5.modeling_t5 import T5Attention
  rel = np.arange(-300, 301)[None, :] - np.zeros((1, 1), np.int64)
  theirs = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional=bidirectional,
                                                  num_buckets=num_buckets, max_distance=max_distance)
  ours = relative_position_bucket(jnp.asarray(rel, jnp.int32), bidirectional, num_buckets, max_distance)
  np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())
  assert int(np.max(ours)) == num_buckets - 1  # far distances saturate in the last bucket


def test_rope_matches_transformers_llama():
  from transformers import LlamaConfig
  from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
  head_dim, theta = 16, 500.0
  cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=head_dim,
                    rope_parameters={"rope_type": "default", "rope_theta": theta})
  rng = np.random.RandomState(0)
  q = rng.randn(2, 4, 9, head_dim).astype(np.float32)  # HF layout [B, H, T, D]
  pos = np.stack([np.arange(9), np.arange(3, 12)]).astype(np.int64)
  cos, sin = LlamaRotaryEmbedding(cfg)(torch.tensor(q), torch.tensor(pos))
  theirs, _ = apply_rotary_pos_emb(torch.tensor(q), torch.tensor(q), cos, sin)
  ours = apply_rope(jnp.asarray(q.transpose(0, 2, 1, 3)), jnp.asarray(pos), theta)
  np.testing.assert_allclose(np.asarray(ours).transpose(0, 2, 1, 3), theirs.numpy(), atol=1e-5)


def test_rope_is_relative():
  """Rotating q and k by the same offset leaves their dot products unchanged."""
  rng = np.random.RandomState(1)
  q, k = (jnp.asarray(rng.randn(1, 6, 2, 8).astype(np.float32)) for _ in range(2))
  p = jnp.arange(6)[None]
  a = jnp.einsum("bqhd,bkhd->bhqk", apply_rope(q, p, 1e4), apply_rope(k, p, 1e4))
  b = jnp.einsum("bqhd,bkhd->bhqk", apply_rope(q, p + 37, 1e4), apply_rope(k, p + 37, 1e4))
  np.testing.assert_allclose(a, b, atol=1e-4)
