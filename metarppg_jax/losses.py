"""Meta-rPPG's losses as pure functions: ordinal, prototype, synthetic-gradient.

Targets are ordinal levels `i32[N, T]` in 0..39 (see `data/preprocess.quantize_ppg`). The
ordinal loss counts level k as "above" for k <= t, so t + 1 levels are above: a perfect model
decodes t + 1 (the original's convention; `heart_rate.decision_to_level` undoes the offset).
"""

import jax
import jax.numpy as jnp

from metarppg_jax import models

_CLAMP_LO, _CLAMP_HI = 1e-8, 1e8


def _above_mask(targets: jax.Array, num_levels: int) -> jax.Array:
  """bool[N, T, L]: level k counts as "above" the signal's level t when k <= t."""
  return jnp.arange(num_levels) <= targets[..., None]


def ordinal_loss_from_prob(prob: jax.Array, targets: jax.Array, head: str = "sound"
                           ) -> jax.Array:
  """Ordinal loss of probabilities f32[N, T, L] against levels i32[N, T]; a scalar.

  `-(sum_{k<=t} log p_k + sum_{k>t} log(1 - p_k)) / (N T)`. `reference` clamps p and 1 - p to
  [1e-8, 1e8] before the log as the original does; `sound` clamps at the smallest normal
  float so the log stays finite (use `ordinal_loss` on logits where possible: it needs no clamp).
  """
  lo = _CLAMP_LO if head == "reference" else jnp.finfo(prob.dtype).tiny
  above = _above_mask(targets, prob.shape[-1])
  log_p = jnp.log(jnp.clip(prob, lo, _CLAMP_HI))
  log_q = jnp.log(jnp.clip(1 - prob, lo, _CLAMP_HI))
  total = jnp.sum(jnp.where(above, log_p, log_q))
  return -total / (targets.shape[0] * targets.shape[1])


def ordinal_loss(fc_out: jax.Array, targets: jax.Array, head: str = "sound") -> jax.Array:
  """Ordinal loss from the estimator's logits f32[N, T, 80] against levels i32[N, T].

  `sound`: log p_k = log_sigmoid(b_k - a_k), log(1 - p_k) = log_sigmoid(a_k - b_k): finite for
  every finite logit. `reference`: the original's clamped logits and clamped probabilities.
  """
  if head == "reference":
    prob, _ = models.ordinal_layer(fc_out, head)
    return ordinal_loss_from_prob(prob, targets, head)
  a, b = models.ordinal_logits(fc_out, head)
  above = _above_mask(targets, a.shape[-1])
  total = jnp.sum(jnp.where(above, jax.nn.log_sigmoid(b - a), jax.nn.log_sigmoid(a - b)))
  return -total / (targets.shape[0] * targets.shape[1])


def prototype_loss(z: jax.Array, prototype: jax.Array) -> jax.Array:
  """MSE between features f32[N, T, F] and the prototype f32[F] broadcast to them."""
  return jnp.mean(jnp.square(z - prototype))


def synthetic_gradient_loss(synthetic: jax.Array, true_grad: jax.Array) -> jax.Array:
  """MSE between psi's output and the true gradient (held constant)."""
  return jnp.mean(jnp.square(synthetic - jax.lax.stop_gradient(true_grad)))

