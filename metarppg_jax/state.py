"""The training state: one pytree holding everything a resumed run needs.

  TrainState                                     the pytree (fields in the class docstring)
  create_train_state(config, key, *, num_tasks) -> TrainState   (fresh weights, step 0, epoch 1)
  state_from_original(config, original_state) -> TrainState     (fresh optimizers, epoch 1)
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from metarppg_jax import hparams
from metarppg_jax import models
from metarppg_jax import optim

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs.

  step i32[]: outer iterations done; epoch i32[]: 1-based, drives the cosine schedules;
  params {theta, phi, psi} (and "rates" {adapted net: tree like it}: the inner step's
  per-parameter rates, with config.meta.inner_rates "learned"); batch_stats {theta, psi};
  opt_state {theta, phi, psi, adapt} (`optim.sgd` states; adapt's covers the adapted nets:
  {"theta"}, {"phi"} or both; and "rates", `optim.rates_optimizer`'s, with learned rates);
  prototype f32[120]; lstm_state (h, c) f32[4, N, 60]. No PRNG key: the step is
  deterministic, and the data order is the input pipeline's (its position is checkpointed).
  """
  step: jax.Array
  epoch: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  prototype: jax.Array
  lstm_state: tuple[jax.Array, jax.Array]


def _with_rates(s: hparams.Settings, params: PyTree) -> PyTree:
  """params plus, with learned inner rates, "rates": {net: a tree like the net, every
  rate optim.adapt_lr} for each adapted net."""
  if s.inner_rates != "learned":
    return params
  rates = {k: jax.tree.map(lambda a: jnp.full_like(a, s.adapt_lr), params[k])
           for k in s.adapted_nets}
  return dict(params, rates=rates)


def _init_opt_state(s: hparams.Settings, params: PyTree) -> PyTree:
  opt = {
      "theta": s.sgd(s.lr).init(params["theta"]),
      "phi": s.sgd(s.lr).init(params["phi"]),
      "psi": s.sgd(s.lr).init(params["psi"]),
      "adapt": s.sgd(s.adapt_lr).init({k: params[k] for k in s.adapted_nets}),
  }
  if "rates" in params:
    opt["rates"] = optim.rates_optimizer(s.rates_lr).init(params["rates"])
  return opt


def create_train_state(config, key: jax.Array, *, num_tasks: int) -> TrainState:
  """A fresh state: the original's effective init, zero prototype and (h, c) for `num_tasks`."""
  s = hparams.from_config(config)
  dtype = jnp.dtype(config.model.dtype)
  params, stats = models.init(key, dtype)
  params = _with_rates(s, params)
  return TrainState(
      step=jnp.zeros((), jnp.int32), epoch=jnp.ones((), jnp.int32), params=params,
      batch_stats=stats, opt_state=_init_opt_state(s, params),
      prototype=jnp.zeros((models.FEATURES,), dtype),
      # Two distinct buffers: the step donates the state, and a buffer can be donated once.
      lstm_state=tuple(jnp.array(a) for a in models.zero_lstm_state(num_tasks, dtype)))


def state_from_original(config, original_state) -> TrainState:
  """A state from an `original_checkpoint.OriginalState`: its weights, statistics, prototype
  and (h, c), fresh optimizers, epoch 1, step 0 (the reference parity runs start here)."""
  s = hparams.from_config(config)
  params = _with_rates(s, jax.tree.map(jnp.asarray, original_state.params))
  stats = jax.tree.map(jnp.asarray, original_state.batch_stats)
  return TrainState(
      step=jnp.zeros((), jnp.int32), epoch=jnp.ones((), jnp.int32), params=params,
      batch_stats=stats, opt_state=_init_opt_state(s, params),
      prototype=jnp.asarray(original_state.prototype),
      lstm_state=tuple(jnp.asarray(a) for a in original_state.lstm_state))

