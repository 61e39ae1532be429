"""Meta-rPPG's outer iteration (one meta-training step) as a pure jitted function.

  meta_train_step(config, *, trace=False) -> step(state, batch) -> (state, metrics)
      (plain; the trainer jits it with the mesh's shardings), make_meta_train_step: the same
      jitted once, the state donated. batch = {"x": f32[N, 3, T, H, W, C],
      "targets": i32[N, 3, T], "valid": bool[N, 3] (optional, all True)} and, with
      `config.meta.test_in_step` (the reference config), "test_x": f32[fewshots + N, T, H, W, C],
      "test_targets": i32[fewshots + N, T]. Window 0: adaptation phase and the prototype
      update; windows 1 and 2: learning phase. metrics: float32 scalars (names below).
  update_prototype(config, state, x f32[N, T, H, W, C]) -> TrainState  (the original's
      prototype and LSTM-state update; the trainer calls it once before training, as the
      original does; the step does it at its end on window 0)

One outer iteration: on window 0 the adapted nets take `fewshots` synthetic-gradient steps
(psi's output as their gradient, no labels), as they will at test time; on windows 1 and 2 the
ordinal (and prototype) loss trains theta and phi at the adapted parameters, and psi learns to
output the loss's gradient at its input (`meta.psi_target`: on window 0 before the adaptation
steps, where they apply it, or on windows 1 and 2 after them as the original does); the prototype and LSTM state then move toward
window 0's features and final state. The state is `state.TrainState`; transductive inference
(the test-time inner loop) is `inference`.

Metrics of the step (per-term, stable names): "ordloss", "fewloss", "gradloss", "loss"
(learning-phase means; fewloss is 0 with `prototype` off, gradloss 0 without the synthetic
gradient), "learn1/ordloss", "learn1/fewloss", "learn1/gradloss", "learn2/..." (each computed
before its step), "adapt/ordloss", "adapt/fewloss" (only with `supervised_adapt_step`), "adapt/gradloss"
(psi_target "support": psi's loss on the adaptation window, then also "gradloss"),
"test/ordloss" (only with `test_in_step`), "lr", "adapt_lr", "rates/mean" and "rates/abs_max"
(only with learned inner rates).

Config switches (`config.meta`): adapt_position extractor|estimator|both; fewshots;
inner_rates fixed (optim.adapt_lr) | learned (Meta-SGD: one inner rate per adapted parameter,
in params["rates"], trained by Adam at optim.rates_lr on the learning phase's loss, and used
by the test-time synthetic-gradient steps);
synthetic_gradient; prototype; meta_learning (False: end-to-end baseline, learning steps on all
three windows, no adaptation, psi not trained); inner_mode joint (the original: the batch of
tasks adapts the one shared theta/phi, in place) | per_task (each task adapts its own copy from
the shared parameters with a fresh inner optimizer, its batch norms over that task alone; the
learning phase evaluates each task's loss at its adapted parameters and updates the shared ones
with the mean gradient: first order, exact for this update since the adaptation offsets are held
constant); supervised_adapt_step; carry_lstm_state (the original threads (h, c) through every
estimator call of the step); test_in_step (the original's transductive test inside the step:
it moves psi's batch statistics); psi_in_prototype_update (the original's prototype update runs
psi too, moving its statistics); mask_invalid_windows (windows with valid=False, e.g. a flat
PPG, do not count in the ordinal loss); lstm_state_rule "given" | "mean"
(`inference.initial_lstm_state`). `config.model.ordinal_head` picks the ordinal head.
"""

import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from metarppg_jax import compile_options
from metarppg_jax import hparams
from metarppg_jax import inference
from metarppg_jax import losses
from metarppg_jax import models
from metarppg_jax import optim
from metarppg_jax.errors import DataError
from metarppg_jax.state import TrainState

PyTree = Any


def _ordinal(s: hparams.Settings, out: models.EstimatorOutput, targets, valid, prob=None):
  """Ordinal loss of one estimator output; `prob` replaces out.prob (reference head) so that
  its gradient can be taken. Invalid windows are masked out in sound mode."""
  if s.head == "reference":
    p = out.prob if prob is None else prob
    per_window = lambda p1, t1: losses.ordinal_loss_from_prob(p1[None], t1[None], s.head)
    if not s.mask_invalid_windows or valid is None:
      return losses.ordinal_loss_from_prob(p, targets, s.head)
    per = jax.vmap(per_window)(p, targets)
  else:
    if not s.mask_invalid_windows or valid is None:
      return losses.ordinal_loss(out.fc_out, targets, s.head)
    per = jax.vmap(lambda f1, t1: losses.ordinal_loss(f1[None], t1[None], s.head))(
        out.fc_out, targets)
  w = valid.astype(per.dtype)
  return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1)


def _prob_target_grad(s: hparams.Settings, prob, targets, valid):
  """d ordinal / d prob (psi's target at the estimator), from the probability form."""
  def f(p):
    if s.mask_invalid_windows and valid is not None:
      per = jax.vmap(lambda p1, t1: losses.ordinal_loss_from_prob(p1[None], t1[None], s.head))(
          p, targets)
      w = valid.astype(per.dtype)
      return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1)
    return losses.ordinal_loss_from_prob(p, targets, s.head)
  return jax.grad(f)(prob)



def _lstm0(s: hparams.Settings, lstm_state, batch: int):
  return inference.initial_lstm_state(s.lstm_state_rule, lstm_state, batch)


def _supervised_step(s, params, stats, opt_theta, prototype, x, t, valid, lstm0):
  """The original's undocumented theta step on the adaptation window (A-optimizer)."""
  def loss_fn(theta):
    z, theta_stats = models.extract(theta, stats["theta"], x, train=True)
    out, final = models.estimate(params["phi"], z, lstm0, head=s.head)
    fewloss = losses.prototype_loss(z, prototype) if s.prototype else jnp.zeros((), z.dtype)
    ordloss = _ordinal(s, out, t, valid)
    return fewloss + ordloss, (theta_stats, final, ordloss, fewloss)

  (_, (theta_stats, final, ordloss, fewloss)), g = jax.value_and_grad(
      loss_fn, has_aux=True)(params["theta"])
  theta, opt_theta = optim.step(s.sgd(s.lr), g, opt_theta, params["theta"])
  return theta, theta_stats, opt_theta, final, ordloss, fewloss


def _sg_adaptation(s, params, stats, opt_adapt, x, lstm0):
  """`fewshots` synthetic-gradient steps on the adapted nets (shared, in place: the joint
  mode); with learned inner rates (params["rates"], opt_adapt at learning rate 1) each
  parameter moves by its rate times the SGD's direction. -> params, stats, opt_adapt, last
  lstm state, psi's last output, d adapted params / d rates (the directions summed; zeros
  with fixed rates)."""
  need_estimator = s.position != "extractor" or s.carry_lstm_state
  tx = s.sgd(s.adapt_lr)
  rates = params.get("rates")

  def step(carry, _):
    params, stats, opt_adapt, lstm, _, direction = carry
    theta, phi, psi = params["theta"], params["phi"], params["psi"]
    z, vjp_theta, theta_stats = jax.vjp(
        lambda th: models.extract(th, stats["theta"], x, train=True), theta, has_aux=True)
    prob, vjp_phi = None, None
    if need_estimator:
      z_const = jax.lax.stop_gradient(z)
      prob, vjp_phi, lstm_next = jax.vjp(
          lambda ph: _prob_and_final(s, ph, z_const, lstm), phi, has_aux=True)
    else:
      lstm_next = lstm
    inputs = {"extractor": [z], "estimator": [prob], "both": [z, prob]}[s.position]
    outs, psi_stats = inference.psi_calls(psi, stats["psi"], inputs)
    grads = {}
    if "theta" in s.adapted_nets:
      grads["theta"] = vjp_theta(outs[0])[0]
    if "phi" in s.adapted_nets:
      grads["phi"] = vjp_phi(outs[-1])[0]
    current = {k: params[k] for k in grads}
    if rates is None:
      adapted, opt_adapt = optim.step(tx, grads, opt_adapt, current)
    else:
      adapted, opt_adapt, unit = optim.rated_step(tx, grads, opt_adapt, current,
                                                  {k: rates[k] for k in grads})
      direction = jax.tree.map(jnp.add, direction, unit)
    params = dict(params, **adapted)
    stats = {"theta": theta_stats, "psi": psi_stats}
    lstm = lstm_next if s.carry_lstm_state else lstm
    return (params, stats, opt_adapt, lstm, outs[-1], direction), None

  width = models.FEATURES if s.position == "extractor" else models.NUM_LEVELS
  last = jnp.zeros(x.shape[:2] + (width,), x.dtype)
  direction = jax.tree.map(jnp.zeros_like, {k: params[k] for k in s.adapted_nets})
  carry, _ = jax.lax.scan(step, (params, stats, opt_adapt, lstm0, last, direction), None,
                          length=s.fewshots, unroll=True)  # see inference.adapt_theta
  return carry


def _per_task_adaptation(s, params, stats, x, lstm0, adapt_lr):
  """inner_mode per_task: each task adapts its own copy of the adapted nets from the shared
  parameters (a fresh inner SGD, batch norms over that task alone).
  -> offsets {net: tree [N, ...]} (adapted - shared), stats (averaged over tasks), the carried
  LSTM state, psi's last output f32[N, T, D]."""
  tx = s.sgd(s.adapt_lr)

  def one(x_i, h_i, c_i):
    opt = _with_lr(tx.init({k: params[k] for k in s.adapted_nets}), adapt_lr)
    p, st, _, (h, c), last, _ = _sg_adaptation(s, params, stats, opt, x_i[None],
                                               (h_i[:, None], c_i[:, None]))
    offsets = {k: jax.tree.map(jnp.subtract, p[k], params[k]) for k in s.adapted_nets}
    return offsets, st, h[:, 0], c[:, 0], last[0]

  offsets, st, h, c, last = jax.vmap(one, in_axes=(0, 1, 1), out_axes=(0, 0, 1, 1, 0))(
      x, *lstm0)
  return offsets, inference.mean_over_tasks(st), (h, c), last


def _prob_and_final(s, phi, z, lstm):
  out, final = models.estimate(phi, z, lstm, head=s.head)
  return out.prob, final


def _forward(s, theta, phi, theta_stats, x, lstm0, offsets, dz):
  """Extractor and estimator on x f32[N, T, H, W, C], `dz` (zeros) added to the features so
  that its gradient is d loss / d z. With per-task `offsets` ({net: [N, ...]}, held constant)
  task i runs alone at (shared + offset_i), batch norms over that task.
  -> z, estimator output, final (h, c), new theta statistics."""
  if offsets is None:
    z, theta_stats = models.extract(theta, theta_stats, x, train=True)
    z = z + dz
    out, final = models.estimate(phi, z, lstm0, head=s.head)
    return z, out, final, theta_stats

  def one(x_i, off, h_i, c_i, dz_i):
    th = _offset(theta, off.get("theta"))
    ph = _offset(phi, off.get("phi"))
    z, st = models.extract(th, theta_stats, x_i[None], train=True)
    z = z + dz_i[None]
    out, (h, c) = models.estimate(ph, z, (h_i[:, None], c_i[:, None]), head=s.head)
    return z[0], jax.tree.map(lambda a: a[0], out), h[:, 0], c[:, 0], st

  z, out, h, c, st = jax.vmap(one, in_axes=(0, 0, 1, 1, 0), out_axes=(0, 0, 1, 1, 0))(
      x, jax.lax.stop_gradient(offsets), *lstm0, dz)
  return z, out, (h, c), inference.mean_over_tasks(st)


def _offset(tree, offset):
  return tree if offset is None else jax.tree.map(jnp.add, tree, offset)


def _loss_gradients(s, phi, z, prototype, t, valid, lstm0):
  """d (ordinal + prototype loss) / d z and d ordinal / d prob at features z f32[N, T, 120]
  (held constant): what psi learns to output at the extractor and at the estimator."""
  def loss_fn(z, dprob):
    out, _ = models.estimate(phi, z, lstm0, head=s.head)
    prob = out.prob + dprob
    fewloss = losses.prototype_loss(z, prototype) if s.prototype else jnp.zeros((), z.dtype)
    return _ordinal(s, out, t, valid, prob=prob) + fewloss, prob

  zeros_p = jnp.zeros(z.shape[:2] + (models.NUM_LEVELS,), z.dtype)
  (_, prob), (g_z, g_p) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
      z, zeros_p)
  if s.head != "reference":
    g_p = _prob_target_grad(s, prob, t, valid)
  return _psi_pairs(s, z, g_z, prob, g_p)


def _psi_pairs(s: hparams.Settings, z, g_z, prob, g_p):
  """psi's (input, target gradient) pairs at the adaptation position, in psi_calls' order."""
  return {"extractor": [(z, g_z)], "estimator": [(prob, g_p)],
          "both": [(prob, g_p), (z, g_z)]}[s.position]


def _train_psi(s, params, stats, opt_state, pairs, lr, per_task=False):
  """One Grad step: psi's outputs at the inputs of `pairs` [(input, target gradient)] toward
  the targets (MSE). -> psi, psi statistics, opt_state, gradloss."""
  def psi_loss(psi):
    outs, new_stats = inference.psi_calls(psi, stats["psi"], [inp for inp, _ in pairs],
                                          per_task=per_task)
    total = sum(losses.synthetic_gradient_loss(o, g) for o, (_, g) in zip(outs, pairs))
    return total, new_stats

  (gradloss, psi_stats), g_psi = jax.value_and_grad(psi_loss, has_aux=True)(params["psi"])
  psi, opt_psi = optim.step(s.sgd(s.lr), g_psi, _with_lr(opt_state["psi"], lr), params["psi"])
  return psi, psi_stats, dict(opt_state, psi=opt_psi), gradloss


def _psi_support_step(s, params, stats, opt_state, prototype, x, t, valid, lstm0, lr):
  """psi_target "support": psi learns the loss gradient at the adaptation window's features
  at the parameters the inner step starts from: the point where that step applies psi's
  output, in training and in the transductive test. The features' batch statistics are not
  kept (the adaptation step that follows computes the same ones)."""
  z, _ = models.extract(params["theta"], stats["theta"], x, train=True)
  pairs = _loss_gradients(s, params["phi"], z, prototype, t, valid, lstm0)
  psi, psi_stats, opt_state, gradloss = _train_psi(s, params, stats, opt_state, pairs, lr)
  return dict(params, psi=psi), dict(stats, psi=psi_stats), opt_state, gradloss


def _learning_step(s, params, stats, opt_state, prototype, x, t, valid, lstm0, lr, train_psi,
                   offsets=None):
  """One learning step: loss = ordinal + prototype at the current parameters (per_task: each
  task at its adapted parameters, `offsets`); A and B steps; then psi trained toward
  d loss / d z (d prob for the estimator) held constant."""
  def loss_fn(theta, phi, dz, dprob):
    # dz, dprob: zeros whose gradients are d loss / d z and d loss / d prob (psi's targets).
    z, out, final, theta_stats = _forward(s, theta, phi, stats["theta"], x, lstm0, offsets, dz)
    prob = out.prob + dprob
    ordloss = _ordinal(s, out, t, valid, prob=prob)
    fewloss = losses.prototype_loss(z, prototype) if s.prototype else jnp.zeros((), z.dtype)
    return ordloss + fewloss, (z, prob, theta_stats, final, ordloss, fewloss)

  n, tt = x.shape[:2]
  zeros_z = jnp.zeros((n, tt, models.FEATURES), x.dtype)
  zeros_p = jnp.zeros((n, tt, models.NUM_LEVELS), x.dtype)
  (_, (z, prob, theta_stats, final, ordloss, fewloss)), (g_theta, g_phi, g_z, g_p) = (
      jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3), has_aux=True)(
          params["theta"], params["phi"], zeros_z, zeros_p))
  tx = s.sgd(s.lr)
  theta, opt_theta = optim.step(tx, g_theta, _with_lr(opt_state["theta"], lr), params["theta"])
  phi, opt_phi = optim.step(tx, g_phi, _with_lr(opt_state["phi"], lr), params["phi"])
  opt_state = dict(opt_state, theta=opt_theta, phi=opt_phi)
  psi_stats, psi = stats["psi"], params["psi"]
  gradloss = jnp.zeros((), x.dtype)
  if train_psi:
    if s.head != "reference":
      g_p = _prob_target_grad(s, prob, t, valid)
    pairs = _psi_pairs(s, z, g_z, prob, g_p)
    psi, psi_stats, opt_state, gradloss = _train_psi(s, params, stats, opt_state, pairs, lr,
                                                     per_task=offsets is not None)
  params = dict(params, theta=theta, phi=phi, psi=psi)
  stats = {"theta": theta_stats, "psi": psi_stats}
  return params, stats, opt_state, final, {"ordloss": ordloss, "fewloss": fewloss,
                                           "gradloss": gradloss}, {"theta": g_theta,
                                                                   "phi": g_phi}


def _with_lr(opt_state, lr):
  return optim.set_learning_rate(opt_state, lr)


def _prototype_update(s, params, stats, prototype, lstm_state, x):
  """The original's update_prototype: estimator from (h, c), mean features and final state
  replace (first update: prototype all zero) or enter a 0.8/0.2 running average."""
  n = x.shape[0]
  lstm0 = _lstm0(s, lstm_state, n)
  z, theta_stats = models.extract(params["theta"], stats["theta"], x, train=True)
  out, (h_new, c_new) = models.estimate(params["phi"], z, lstm0, head=s.head)
  psi_stats = stats["psi"]
  if s.psi_in_prototype_update:
    inputs = {"extractor": [z], "estimator": [out.prob], "both": [z, out.prob]}[s.position]
    _, psi_stats = inference.psi_calls(params["psi"], psi_stats, inputs)
  proto_new = jnp.mean(z, axis=(0, 1))
  h, c = lstm_state
  if s.prototype:
    first = jnp.sum(prototype) == 0
  else:
    first = jnp.all(h == 0) & jnp.all(c == 0)
  m = s.proto_momentum

  def mix(old, new):
    return jnp.where(first, new, m * old + (1 - m) * new)

  if s.prototype:
    prototype = mix(prototype, proto_new)
  lstm_state = (mix(h, h_new), mix(c, c_new))
  return prototype, lstm_state, {"theta": theta_stats, "psi": psi_stats}


def update_prototype(config, state: TrainState, x: jax.Array) -> TrainState:
  """The prototype and LSTM-state update on windows f32[N, T, H, W, C] (N = the state's)."""
  s = hparams.from_config(config)
  prototype, lstm_state, stats = _prototype_update(s, state.params, state.batch_stats,
                                                   state.prototype, state.lstm_state, x)
  return state.replace(prototype=prototype, lstm_state=lstm_state, batch_stats=stats)


def _check_batch(s: hparams.Settings, state: TrainState, batch: Mapping[str, jax.Array]):
  x, t = batch["x"], batch["targets"]
  if x.ndim != 6 or x.shape[1] != 3:
    raise DataError(f"batch 'x' has shape {list(x.shape)}: expected [N, 3, T, H, W, C]")
  if t.shape != x.shape[:3]:
    raise DataError(f"batch 'targets' has shape {list(t.shape)}: expected {list(x.shape[:3])}")
  if s.test_in_step:
    for key in ("test_x", "test_targets"):
      if key not in batch:
        raise DataError(f"config.meta.test_in_step is on but the batch has no {key!r}")
    q = batch["test_x"].shape[0] - s.fewshots
    if q < 1:
      raise DataError(f"batch 'test_x' holds {batch['test_x'].shape[0]} windows: needs "
                      f"fewshots ({s.fewshots}) support windows and at least one query")
  if s.lstm_state_rule == "given" and state.lstm_state[0].shape[1] != x.shape[0]:
    raise DataError(f"the batch holds {x.shape[0]} tasks but the state's LSTM state is for "
                    f"{state.lstm_state[0].shape[1]}")


class _Phase(NamedTuple):
  """What the stages of one outer iteration hand on: the parameters, batch statistics and
  optimizer states so far, and the estimator's initial LSTM state for the next call."""
  params: PyTree
  stats: PyTree
  opt_state: PyTree
  lstm: tuple[jax.Array, jax.Array]


def _next_lstm(s: hparams.Settings, final, lstm):
  return final if s.carry_lstm_state else lstm


def _adaptation_phase(s, state: TrainState, ph: _Phase, x0, t0, v0, lr, adapt_lr, metrics, rec
                      ) -> tuple[_Phase, PyTree | None, PyTree | None]:
  """Window 0 (f32[N, T, H, W, C], targets t0, valid v0): the original's supervised theta
  step, psi's support-window step, then the synthetic-gradient steps (joint: in place;
  per_task: per-task offsets). -> the phase after it, the per-task offsets (or None),
  d adapted params / d learned rates (None with fixed rates)."""
  params, stats, opt_state, lstm = ph
  offsets, direction = None, None
  if s.supervised_adapt_step:
    theta, theta_stats, opt_theta, final, ordloss, fewloss = _supervised_step(
        s, params, stats, _with_lr(opt_state["theta"], lr), state.prototype, x0, t0, v0, lstm)
    params, stats = dict(params, theta=theta), dict(stats, theta=theta_stats)
    opt_state = dict(opt_state, theta=opt_theta)
    lstm = _next_lstm(s, final, lstm)
    metrics.update({"adapt/ordloss": ordloss, "adapt/fewloss": fewloss})
    rec["adapt/sup/params"] = params
  if s.synthetic_gradient and s.psi_target == "support":
    params, stats, opt_state, metrics["adapt/gradloss"] = _psi_support_step(
        s, params, stats, opt_state, state.prototype, x0, t0, v0, lstm, lr)
  if s.synthetic_gradient and s.inner_mode == "joint":
    inner_lr = 1.0 if s.inner_rates == "learned" else adapt_lr  # learned: rates * direction
    params, stats, opt_adapt, lstm, last, direction = _sg_adaptation(
        s, params, stats, _with_lr(opt_state["adapt"], inner_lr), x0, lstm)
    opt_state = dict(opt_state, adapt=opt_adapt)
    if s.inner_rates != "learned":
      direction = None
    rec["adapt/synthetic_grad"] = last
  elif s.synthetic_gradient:
    offsets, stats, lstm_adapted, last = _per_task_adaptation(s, params, stats, x0, lstm,
                                                              adapt_lr)
    lstm = _next_lstm(s, lstm_adapted, lstm)
    rec["adapt/synthetic_grad"] = last
  rec["adapt/params"], rec["adapt/stats"] = params, stats
  return _Phase(params, stats, opt_state, lstm), offsets, direction


def _rates_step(s, params, opt_state, direction, grads, metrics):
  """Meta-SGD's outer step on the learned inner rates. The adapted parameters are
  p + rates * direction, so d loss / d rates = d loss / d adapted * direction: exact for one
  inner step (its direction does not depend on the rates), first order for more, with the
  learning steps' mean gradient as d loss / d adapted. -> params, opt_state."""
  g = {k: jax.tree.map(jnp.multiply, grads[k], direction[k]) for k in direction}
  rates, opt_rates = optim.step(optim.rates_optimizer(s.rates_lr), g, opt_state["rates"],
                                params["rates"])
  leaves = jnp.concatenate([a.ravel() for a in jax.tree.leaves(rates)])
  metrics["rates/mean"], metrics["rates/abs_max"] = jnp.mean(leaves), jnp.max(jnp.abs(leaves))
  return dict(params, rates=rates), dict(opt_state, rates=opt_rates)


def _learning_phase(s, state: TrainState, ph: _Phase, x, t, valid, first: int, lr, offsets,
                    metrics) -> tuple[_Phase, PyTree]:
  """Learning steps on windows first..2 of x f32[N, 3, T, H, W, C] (one scan, unrolled:
  XLA:CPU convolutions are slow inside loops); their losses go into `metrics`.
  -> the phase after them, the mean of their loss gradients {theta, phi}."""
  train_psi = s.meta_learning and s.synthetic_gradient and s.psi_target == "learning"

  def learn(carry, window):
    params, stats, opt_state, lstm = carry
    xk, tk, vk = window
    params, stats, opt_state, final, terms, grads = _learning_step(
        s, params, stats, opt_state, state.prototype, xk, tk, vk, lstm, lr,
        train_psi=train_psi, offsets=offsets)
    return _Phase(params, stats, opt_state, _next_lstm(s, final, lstm)), (terms, grads)

  windows = (jnp.moveaxis(x[:, first:], 1, 0), jnp.moveaxis(t[:, first:], 1, 0),
             jnp.moveaxis(valid[:, first:], 1, 0))
  ph, (terms, grads) = jax.lax.scan(learn, ph, windows, unroll=True)  # inference.adapt_theta
  for name, values in terms.items():
    for i in range(values.shape[0]):
      metrics[f"learn{first + i}/{name}"] = values[i]
    metrics[name] = jnp.mean(values)
  if "adapt/gradloss" in metrics:
    metrics["gradloss"] = metrics["adapt/gradloss"]  # psi trained on the support window
  metrics["loss"] = metrics["ordloss"] + metrics["fewloss"]
  return _Phase(*ph), jax.tree.map(lambda g: jnp.mean(g, 0), grads)


def _test_in_step(s, state: TrainState, params, stats, batch, metrics, rec) -> PyTree:
  """The original's transductive test inside the step (it moves psi's batch statistics):
  adapt a copy of theta on the held-out video's support, predict its queries. -> stats."""
  test_x, test_t = batch["test_x"], batch["test_targets"]
  theta, theta_stats, psi_stats, proto_losses = inference.adapt_theta(
      s, params["theta"], stats["theta"], params["psi"], stats["psi"], state.prototype,
      test_x[:s.fewshots], inference.theta_rates(params))
  queries = test_x[s.fewshots:]
  z, theta_stats = models.extract(theta, theta_stats, queries, train=True)
  out, _ = models.estimate(params["phi"], z, _lstm0(s, state.lstm_state, queries.shape[0]),
                           head=s.head)
  if s.lstm_state_rule == "given" and s.head == "reference":
    # The original's (misaligned) test loss: query 0 against support window 0's target.
    metrics["test/ordloss"] = losses.ordinal_loss_from_prob(out.prob[:1], test_t[:1], s.head)
  else:
    metrics["test/ordloss"] = _ordinal(s, out, test_t[s.fewshots:], None)
  rec.update({"test/theta": theta, "test/theta_stats": theta_stats,
              "test/psi_stats": psi_stats, "test/proto_losses": proto_losses,
              "test/prob": out.prob, "test/decision": out.decision,
              "test/ordloss": metrics["test/ordloss"]})
  return dict(stats, psi=psi_stats)


def _meta_train_step(s: hparams.Settings, trace: bool, state: TrainState, batch):
  """One outer iteration: adaptation phase on window 0, learning phase, the original's
  in-step test (reference config), the prototype and LSTM-state update on window 0."""
  _check_batch(s, state, batch)
  x, t = batch["x"], batch["targets"]
  valid = batch.get("valid")
  if valid is None:
    valid = jnp.ones(x.shape[:2], bool)
  lr = s.lr_at(s.lr, state.epoch).astype(x.dtype)
  adapt_lr = s.lr_at(s.adapt_lr, state.epoch).astype(x.dtype)
  ph = _Phase(state.params, state.batch_stats, state.opt_state,
              _lstm0(s, state.lstm_state, x.shape[0]))
  metrics, rec, offsets, direction = {}, {}, None, None
  if s.meta_learning:
    ph, offsets, direction = _adaptation_phase(s, state, ph, x[:, 0], t[:, 0], valid[:, 0], lr,
                                               adapt_lr, metrics, rec)
  ph, grads = _learning_phase(s, state, ph, x, t, valid, 1 if s.meta_learning else 0, lr,
                              offsets, metrics)
  if direction is not None:
    params, opt_state = _rates_step(s, ph.params, ph.opt_state, direction, grads, metrics)
    ph = ph._replace(params=params, opt_state=opt_state)
  params, stats = ph.params, ph.stats
  rec["learn2/params"], rec["learn2/stats"] = params, stats
  if s.test_in_step:
    stats = _test_in_step(s, state, params, stats, batch, metrics, rec)
  prototype, lstm_state, stats = _prototype_update(s, params, stats, state.prototype,
                                                   state.lstm_state, x[:, 0])
  metrics["lr"], metrics["adapt_lr"] = lr, adapt_lr
  metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=stats,
                            opt_state=_lr_recorded(ph.opt_state, lr, adapt_lr),
                            prototype=prototype, lstm_state=lstm_state)
  if trace:
    metrics["trace"] = rec
  return new_state, metrics


def _lr_recorded(opt_state, lr, adapt_lr):
  """Store the rates the step used in every optimizer state (checkpoints show them)."""
  out = {k: _with_lr(v, lr) for k, v in opt_state.items() if k not in ("adapt", "rates")}
  out["adapt"] = _with_lr(opt_state["adapt"], adapt_lr)
  if "rates" in opt_state:
    out["rates"] = opt_state["rates"]
  return out


def meta_train_step(config, *, trace: bool = False):
  """`step(state, batch) -> (state, metrics)`, one outer iteration, not jitted: for a caller
  that jits it itself (`sharding.jit_sharded_step` with the mesh's shardings). trace=True adds
  metrics["trace"]: every stage's parameters and statistics (for the reference check)."""
  return functools.partial(_meta_train_step, hparams.from_config(config), trace)


def make_meta_train_step(config, *, trace: bool = False):
  """`meta_train_step` jitted once, the state's buffers donated (do not use the state passed
  in afterwards)."""
  return compile_options.jit(meta_train_step(config, trace=trace), donate_argnums=0)
