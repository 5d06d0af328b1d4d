"""Learnable rational activation (Pade form, Molina et al. 2019), as MiLoRA's router uses.

    R(x) = P(x) / (1 + |Q(x)|),  P of degree 6 (a_0..a_6), Q of degree 5 without
    constant term (b_1..b_5); the absolute value keeps the denominator >= 1.

The initial coefficients approximate GELU: our own nonlinear least-squares fit
on [-4, 4] (max error 1.4e-3 there; tests/peft/test_rational.py checks it).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

GELU_NUMERATOR = np.array([2.4338663274e-04, 4.9999963382e-01, 3.9503695386e-01, 3.4490176967e-01,
                           2.1742082966e-01, 6.0609794153e-02, 5.9110546473e-03], np.float32)
GELU_DENOMINATOR = np.array([-1.1344237400e-04, -6.8971035796e-01, -2.3252457485e-05,
                             -1.2121859161e-01, 1.9446285644e-07], np.float32)


def rational(x, numerator, denominator):
  p = jnp.polyval(numerator[::-1], x)  # polyval wants the highest degree first
  q = jnp.polyval(jnp.concatenate([denominator[::-1], jnp.zeros((1,), denominator.dtype)]), x)
  return p / (1.0 + jnp.abs(q))


class RationalActivation(nn.Module):
  """Elementwise R(x) with learnable shared coefficients, computed in float32."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    num = self.param("numerator", lambda *_: jnp.asarray(GELU_NUMERATOR))
    den = self.param("denominator", lambda *_: jnp.asarray(GELU_DENOMINATOR))
    return rational(x.astype(jnp.float32), num, den)
