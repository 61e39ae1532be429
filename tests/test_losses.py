"""Losses: ordinal (both heads), prototype, synthetic gradient."""

import jax
import jax.numpy as jnp
import numpy as np

from metarppg_jax import heart_rate
from metarppg_jax import losses
from metarppg_jax import models


def _brute_ordinal(prob, targets, lo):
  n, t, levels = prob.shape
  total = 0.0
  for i in range(n):
    for j in range(t):
      for k in range(levels):
        p = prob[i, j, k]
        total += np.log(max(p, lo)) if k <= targets[i, j] else np.log(max(1 - p, lo))
  return -total / (n * t)


def test_ordinal_reference_matches_definition():
  rng = np.random.default_rng(0)
  fc = rng.normal(size=(2, 3, 80)).astype(np.float32) * 3
  targets = rng.integers(0, 40, size=(2, 3))
  prob, _ = models.ordinal_layer(jnp.asarray(fc), "reference")
  ours = losses.ordinal_loss(jnp.asarray(fc), jnp.asarray(targets), "reference")
  np.testing.assert_allclose(ours, _brute_ordinal(np.asarray(prob, np.float64), targets, 1e-8),
                             rtol=1e-5)


def test_ordinal_sound_equals_log_of_sigmoid_and_is_finite():
  rng = np.random.default_rng(1)
  fc = rng.normal(size=(2, 3, 80)).astype(np.float32)
  targets = rng.integers(0, 40, size=(2, 3))
  prob, _ = models.ordinal_layer(jnp.asarray(fc), "sound")
  np.testing.assert_allclose(losses.ordinal_loss(jnp.asarray(fc), targets, "sound"),
                             _brute_ordinal(np.asarray(prob, np.float64), targets, 0.0), rtol=1e-5)
  huge = jnp.asarray(fc) * 1e30
  value, grad = jax.value_and_grad(losses.ordinal_loss)(huge, jnp.asarray(targets), "sound")
  assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_perfect_model_decodes_target_plus_one():
  targets = jnp.array([[0, 5, 39]])
  above = jnp.arange(40) <= targets[..., None]
  fc = jnp.stack([jnp.where(above, -10.0, 10.0), jnp.where(above, 10.0, -10.0)], -1)
  fc = fc.reshape(1, 3, 80)
  _, decision = models.ordinal_layer(fc, "sound")
  np.testing.assert_array_equal(decision, targets + 1)
  np.testing.assert_array_equal(heart_rate.decision_to_level(decision), targets)
  assert float(losses.ordinal_loss(fc, targets, "sound")) < 1e-3


def test_prototype_and_synthetic_gradient_losses():
  z = jnp.ones((2, 3, 120)) * 2.0
  assert float(losses.prototype_loss(z, jnp.ones(120))) == 1.0
  g = jax.grad(lambda s: losses.synthetic_gradient_loss(s, jnp.zeros_like(s)))(jnp.ones((2, 4)))
  np.testing.assert_allclose(g, 2 * jnp.ones((2, 4)) / 8)
  # The target is held constant: no gradient flows into it.
  g_t = jax.grad(lambda t: losses.synthetic_gradient_loss(jnp.zeros(3), t))(jnp.ones(3))
  np.testing.assert_array_equal(g_t, 0.0)
