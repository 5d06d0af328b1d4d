"""Token embedding table, usable as a tied output head."""
import flax.linen as nn
import jax
import jax.numpy as jnp


class Embed(nn.Module):
  num_embeddings: int
  features: int
  embedding_init: nn.initializers.Initializer = nn.initializers.normal(stddev=1.0)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return jnp.take(jnp.asarray(self.embedding, self.dtype), tokens, axis=0)

  def attend(self, x: jax.Array) -> jax.Array:
    """Logits against the embedding table (tied output head)."""
    return jnp.einsum("...d,vd->...v", jnp.asarray(x, self.dtype),
                      jnp.asarray(self.embedding, self.dtype))
