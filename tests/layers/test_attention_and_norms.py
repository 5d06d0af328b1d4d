"""Attention masking/GQA and RMS norm identities."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.layers.attention import dot_product_attention
from moe_jax.layers.norms import RMSNorm


def test_grouped_query_attention_equals_repeated_kv_heads():
  rng = np.random.RandomState(0)
  q = jnp.asarray(rng.randn(2, 5, 6, 4), jnp.float32)
  k = jnp.asarray(rng.randn(2, 7, 2, 4), jnp.float32)
  v = jnp.asarray(rng.randn(2, 7, 2, 4), jnp.float32)
  bias = jnp.asarray(rng.randn(1, 6, 5, 7), jnp.float32)
  gqa = dot_product_attention(q, k, v, bias=bias, scale=0.5)
  mha = dot_product_attention(q, jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2), bias=bias, scale=0.5)
  np.testing.assert_allclose(gqa, mha, atol=1e-6)


def test_masked_keys_have_no_influence():
  rng = np.random.RandomState(1)
  q, k, v = (jnp.asarray(rng.randn(1, 4, 2, 3), jnp.float32) for _ in range(3))
  mask = jnp.array([True, True, False, True])[None, None, None, :]
  out = dot_product_attention(q, k, v, mask=mask)
  k2, v2 = k.at[:, 2].set(100.0), v.at[:, 2].set(-100.0)
  np.testing.assert_allclose(dot_product_attention(q, k2, v2, mask=mask), out, atol=1e-6)


def test_rms_norm_formula_and_bf16_activations():
  x = jnp.asarray(np.random.RandomState(2).randn(3, 8) * 10, jnp.float32)
  norm = RMSNorm(epsilon=1e-6)
  params = norm.init(jax.random.key(0), x)
  params = jax.tree_util.tree_map(lambda s: s * 2.0, params)
  expected = 2.0 * x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(norm.apply(params, x), expected, rtol=1e-5)
  y = RMSNorm(epsilon=1e-6, dtype=jnp.bfloat16).apply(params, x.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), expected, rtol=2e-2)


def test_attention_dropout_mask_is_shared_by_every_query_position():
  # flaxformer broadcast_dropout / t5x T5: a key dropped for one query is dropped
  # for all. Uniform attention over one-hot values makes the output row of each
  # query its (rescaled) keep mask.
  b, tq, h, tk = 2, 6, 3, 8
  q = jnp.zeros((b, tq, h, tk))
  k = jnp.zeros((b, tk, h, tk))
  v = jnp.broadcast_to(jnp.eye(tk)[None, :, None, :], (b, tk, h, tk))
  out = dot_product_attention(q, k, v, dropout_rate=0.5, deterministic=False,
                              dropout_rng=jax.random.key(3))
  rows = np.asarray(out)  # [b, tq, h, tk]
  np.testing.assert_allclose(rows, np.broadcast_to(rows[:, :1], rows.shape))  # same for every query
  assert set(np.unique(np.round(rows * tk * 0.5, 6))) == {0.0, 1.0}  # kept keys rescaled by 1/(1-p)
  assert 0 < np.mean(rows == 0) < 1
  assert not np.allclose(rows[:, :, 0], rows[:, :, 1])  # masks differ across heads


def test_fused_attention_equals_the_explicit_path_with_bias_mask_and_gqa():
  # jax.nn.dot_product_attention (XLA) against the explicit einsum path: T5's
  # relative bias as `bias`, a padding mask with a fully masked query row, GQA.
  rng = np.random.RandomState(4)
  q = jnp.asarray(rng.randn(2, 5, 6, 4), jnp.float32)
  k = jnp.asarray(rng.randn(2, 7, 2, 4), jnp.float32)
  v = jnp.asarray(rng.randn(2, 7, 2, 4), jnp.float32)
  bias = jnp.asarray(rng.randn(1, 6, 5, 7) * 3, jnp.float32)
  mask = jnp.asarray(rng.rand(2, 1, 5, 7) > 0.3).at[1, :, 2].set(False)
  explicit = dot_product_attention(q, k, v, bias=bias, mask=mask, scale=0.5, implementation="einsum")
  fused = dot_product_attention(q, k, v, bias=bias, mask=mask, scale=0.5, implementation="xla")
  np.testing.assert_allclose(fused, explicit, atol=1e-5)
  assert np.abs(np.asarray(explicit)).max() > 0.1
  with pytest.raises(ValueError, match="implementation"):
    dot_product_attention(q, k, v, implementation="flash")
