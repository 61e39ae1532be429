"""PyTorch-style SGD and the per-epoch cosine schedule, as optax transformations.

The original trains with `torch.optim.SGD(lr, momentum=0.9, weight_decay=5e-4)`: weight decay
is added to the gradient before momentum (`d = g + wd w`), the momentum buffer is
`buf = m buf + d` (first step `buf = d`), and `w -= lr buf`. `optax.trace` starts its buffer at
zero, so its first step `0.9 * 0 + d = d` is PyTorch's first step exactly.

The learning rate is an injected hyperparameter (`opt_state.hyperparams["learning_rate"]`),
set from the epoch with `set_learning_rate(opt_state, cosine_lr(...))`: PyTorch's
`CosineAnnealingLR(T_max, eta_min)` stepped once per epoch, periodic after `T_max` (its closed
form; PyTorch's recursive form equals it).
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def _torch_sgd(learning_rate, momentum: float, weight_decay: float
               ) -> optax.GradientTransformation:
  return optax.chain(
      optax.add_decayed_weights(weight_decay),   # d = g + wd * w (PyTorch's coupled decay)
      optax.trace(decay=momentum, nesterov=False),  # buf = m * buf + d
      optax.scale_by_learning_rate(learning_rate),  # update = -lr * buf
  )


def sgd(learning_rate: float, momentum: float = 0.9, weight_decay: float = 5e-4
        ) -> optax.GradientTransformationExtraArgs:
  """`torch.optim.SGD(lr, momentum, weight_decay)`, learning rate injected (changeable)."""
  return optax.inject_hyperparams(_torch_sgd, static_args=("momentum", "weight_decay"))(
      learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)


def cosine_lr(base_lr: float, epoch, *, t_max: int = 5, floor: float = 0.1):
  """Learning rate of (1-based) `epoch` under PyTorch's `CosineAnnealingLR(T_max=t_max,
  eta_min=floor * base_lr)` stepped once per finished epoch (epoch 1 uses `base_lr`).

  `eta_min + (base - eta_min) (1 + cos(pi (epoch - 1) / T_max)) / 2`: periodic with period
  `2 T_max` (after `T_max` the rate rises again, as PyTorch's does). `epoch` may be traced.
  """
  eta_min = floor * base_lr
  t = jnp.asarray(epoch) - 1
  return eta_min + (base_lr - eta_min) * (1 + jnp.cos(jnp.pi * t / t_max)) / 2


def set_learning_rate(opt_state: PyTree, learning_rate) -> PyTree:
  """A copy of an `sgd` state with its learning rate replaced (same dtype as stored)."""
  hyper = dict(opt_state.hyperparams)
  old = hyper["learning_rate"]
  hyper["learning_rate"] = jnp.asarray(learning_rate, dtype=jnp.asarray(old).dtype)
  return opt_state._replace(hyperparams=hyper)


def step(tx: optax.GradientTransformation, grads: PyTree, opt_state: PyTree, params: PyTree
         ) -> tuple[PyTree, PyTree]:
  """One optimizer step: `(new params, new opt_state)`."""
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def rated_step(tx: optax.GradientTransformation, grads: PyTree, opt_state: PyTree,
               params: PyTree, rates: PyTree) -> tuple[PyTree, PyTree, PyTree]:
  """One step with per-parameter rates (a tree like params; the state's own learning rate
  set to 1): params + rates * updates. -> (new params, new opt_state, the updates before the
  rates: d new params / d rates)."""
  updates, opt_state = tx.update(grads, opt_state, params)
  return (optax.apply_updates(params, jax.tree.map(jnp.multiply, updates, rates)), opt_state,
          updates)


def rates_optimizer(learning_rate: float) -> optax.GradientTransformation:
  """Adam for meta-learned per-parameter inner rates: steps of about `learning_rate` in
  the rates' own units, whatever the scale of their gradient."""
  return optax.adam(learning_rate)
