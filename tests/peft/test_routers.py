"""Router options and auxiliary losses, against their closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.peft import sites
from moe_jax.peft.rational import RationalActivation, rational, GELU_DENOMINATOR, GELU_NUMERATOR
from moe_jax.peft.routers import (Router, RouterConfig, load_balance_loss, router_z_loss, select_top_k,
                                  top_k_mask)

CTX = sites.AdapterContext(features={})


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_top_k_keeps_exactly_k_even_with_ties():
  p = jnp.array([[0.25, 0.25, 0.25, 0.25], [0.1, 0.6, 0.2, 0.1]])
  for k in (1, 2, 3):
    assert np.all(np.asarray(top_k_mask(p, k)).sum(-1) == k)
  kept = select_top_k(p, 2, renormalize=True)
  np.testing.assert_allclose(np.asarray(kept).sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(kept[1], [0, 0.75, 0.25, 0], rtol=1e-6)
  raw = select_top_k(p, 2, renormalize=False)
  np.testing.assert_allclose(raw[1], [0, 0.6, 0.2, 0], rtol=1e-6)


def test_load_balance_and_z_loss_closed_forms():
  # Perfectly balanced top-1 routing with uniform mean probability gives 1.
  p = jnp.eye(4)
  np.testing.assert_allclose(load_balance_loss(p, jnp.ones(4)), 1.0, rtol=1e-6)
  # Everything to expert 0 with certainty gives E.
  p = jnp.tile(jnp.array([[1.0, 0, 0, 0]]), (5, 1))
  np.testing.assert_allclose(load_balance_loss(p, jnp.ones(5)), 4.0, rtol=1e-6)
  # Masked items do not count.
  p = jnp.concatenate([jnp.eye(4), jnp.tile(jnp.array([[1.0, 0, 0, 0]]), (3, 1))])
  np.testing.assert_allclose(load_balance_loss(p, jnp.array([1.0] * 4 + [0.0] * 3)), 1.0, rtol=1e-6)
  logits = jnp.array([[1.0, 2.0], [0.0, 0.0]])
  z = np.log(np.exp([1, 2]).sum()), np.log(2.0)
  np.testing.assert_allclose(router_z_loss(logits, jnp.ones(2)), (z[0] ** 2 + z[1] ** 2) / 2, rtol=1e-6)


def _run(config, x, ctx=CTX, mask=None, mutable=False, segment_ids=None, causal=False):
  router = Router(config)
  seq = sites.SiteSequence(mask, segment_ids, causal)
  variables = router.init(jax.random.key(0), x, ctx, seq)
  return router.apply(variables, x, ctx, seq, mutable=mutable)


def test_router_is_float32_and_softmax():
  x = jnp.asarray(np.random.RandomState(0).randn(2, 5, 8), jnp.bfloat16)
  probs = _run(RouterConfig(4), x)
  assert probs.dtype == jnp.float32 and probs.shape == (2, 5, 4)
  variables = Router(RouterConfig(4)).init(jax.random.key(0), x, CTX)
  kernel = np.asarray(variables["params"]["kernel"].value, np.float64)
  assert variables["params"]["kernel"].value.dtype == jnp.float32
  # p = softmax(x W) per token, in float64 here (the bf16 input is exact in float32).
  np.testing.assert_allclose(probs, _softmax(np.asarray(x, np.float64) @ kernel), rtol=1e-5)
  # kernel ~ N(0, 0.02): from 2048 draws the sample std is within 1.6 % (one standard
  # error, 1/sqrt(2n)) of 0.02; 6 % is ~4 standard errors.
  wide = jnp.zeros((1, 1, 512), jnp.float32)
  wide_kernel = np.asarray(Router(RouterConfig(4)).init(jax.random.key(0), wide, CTX)["params"]["kernel"].value)
  assert wide_kernel.shape == (512, 4)
  assert abs(float(np.std(wide_kernel)) - 0.02) < 0.06 * 0.02 and abs(float(np.mean(wide_kernel))) < 0.002


def test_sentence_routing_ignores_padding_and_is_shared_by_tokens():
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.randn(2, 6, 8), jnp.float32)
  mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  cfg = RouterConfig(3, routing="sentence")
  probs = _run(cfg, x, mask=mask)
  kernel = np.asarray(Router(cfg).init(jax.random.key(0), x, CTX)["params"]["kernel"].value, np.float64)
  means = np.stack([np.asarray(x, np.float64)[0, :4].mean(0), np.asarray(x, np.float64)[1].mean(0)])
  np.testing.assert_allclose(probs, np.repeat(_softmax(means @ kernel)[:, None], 6, 1), rtol=1e-5)
  changed = x.at[0, 4:].set(100.0)  # padding content must not matter
  np.testing.assert_allclose(_run(cfg, changed, mask=mask), probs, rtol=1e-6)


def test_embedding_routing_reads_the_feature():
  x = jnp.zeros((2, 3, 8))
  ctx = sites.AdapterContext(features={"routing_embedding": jnp.asarray(np.random.RandomState(2).randn(2, 5))})
  probs = _run(RouterConfig(3, routing="embedding"), x, ctx)
  kernel = Router(RouterConfig(3, routing="embedding")).init(jax.random.key(0), x, ctx)["params"]["kernel"].value
  expected = _softmax(np.asarray(ctx.features["routing_embedding"], np.float64) @ np.asarray(kernel, np.float64))
  np.testing.assert_allclose(probs, np.repeat(expected[:, None], 3, 1), rtol=1e-5)
  assert not np.allclose(probs[0], probs[1])
  with pytest.raises(KeyError, match="routing_embedding"):
    _run(RouterConfig(3, routing="embedding"), x)


def test_aux_losses_are_sown_with_their_weights_and_jitter_needs_training():
  x = jnp.asarray(np.random.RandomState(3).randn(2, 4, 8), jnp.float32)
  cfg = RouterConfig(4, load_balance_weight=0.5, z_loss_weight=0.25, jitter_noise=0.1)
  router = Router(cfg)
  variables = router.init(jax.random.key(0), x, CTX)
  probs, aux = router.apply(variables, x, CTX, mutable=[sites.AUX_LOSS_COLLECTION])
  logits = np.asarray(x).reshape(-1, 8) @ np.asarray(variables["params"]["kernel"].value)
  lb = aux[sites.AUX_LOSS_COLLECTION]["load_balance"][0]
  np.testing.assert_allclose(lb, 0.5 * load_balance_loss(jax.nn.softmax(logits), jnp.ones(8)), rtol=1e-5)
  np.testing.assert_allclose(aux[sites.AUX_LOSS_COLLECTION]["router_z_loss"][0],
                             0.25 * router_z_loss(jnp.asarray(logits), jnp.ones(8)), rtol=1e-5)
  train_ctx = sites.AdapterContext(features={}, deterministic=False)
  noisy = router.apply(variables, x, train_ctx, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(noisy, probs)  # jitter changes the routing in training only


def test_rational_activation_starts_as_gelu_and_learns():
  x = jnp.linspace(-4, 4, 801)
  r = rational(x, jnp.asarray(GELU_NUMERATOR), jnp.asarray(GELU_DENOMINATOR))
  assert float(jnp.max(jnp.abs(r - jax.nn.gelu(x, approximate=False)))) < 2e-3
  act = RationalActivation()
  variables = act.init(jax.random.key(0), x)
  grads = jax.grad(lambda v: jnp.sum(act.apply(v, x) ** 2))(variables)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))
