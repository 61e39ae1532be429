"""Transductive inference: adapt a copy of theta to one video without labels, then predict.

  initial_lstm_state(rule, lstm_state, batch) -> (h, c) f32[4, batch, 60]
  adapt(config, params, batch_stats, prototype, support f32[S, T, H, W, C])
      -> (theta', theta_stats', psi_stats')
  adapt_theta(s, theta, theta_stats, psi, psi_stats, prototype, support, rates=None)
      -> (theta', theta_stats', psi_stats', prototype losses f32[S])   (the step's own test)
  predict(params, batch_stats, query f32[Q, T, H, W, C], lstm_state, *, head, train=True)
      -> models.EstimatorOutput
  evaluate_videos(config, state, videos f32[V, S + Q, T, H, W, C], *, adapt, batching=None)
      -> {"prob" f32[V, Q, T, 40], "decision" i32[V, Q, T], "level" i32[V, Q, T],
          "expected_level" f32[V, Q, T]}   (one jitted call over all videos)
  video_batching(videos) -> "vmap" | "map": how that call batches the videos on their platform
  psi_calls, mean_over_tasks: psi on several inputs; per-task batch statistics -> one set
      (the outer step's adaptation uses them too)

LSTM initial state of an estimator call (`config.meta.lstm_state_rule`): "given" (reference)
uses (h, c) as stored, so the call's batch must equal the state's N (the original's
restriction); "mean" (sound) starts every sequence from the mean of the N stored states,
broadcast to the call's batch: the stored states belong to no particular video (tasks are
re-sampled every step), so their mean is the one state that is not arbitrary, and any query
count works.

Test-time adaptation adapts theta (a copy per video), whatever the training adaptation position,
as the original does; psi runs in train mode (batch statistics of the single support window).
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from metarppg_jax import compile_options
from metarppg_jax import heart_rate
from metarppg_jax import hparams
from metarppg_jax import losses
from metarppg_jax import models
from metarppg_jax import optim
from metarppg_jax.errors import DataError
from metarppg_jax.state import TrainState

PyTree = Any


def initial_lstm_state(rule: str, lstm_state, batch: int):
  """The estimator's initial (h, c) f32[4, batch, 60] for `batch` sequences under `rule`
  ("given" | "mean", module docstring) from the stored (h, c) f32[4, N, 60]."""
  h, c = lstm_state
  if rule == "given":
    if h.shape[1] != batch:
      raise DataError(
          f"{batch} sequences but the stored LSTM state (h, c) is for {h.shape[1]}: with "
          "config.meta.lstm_state_rule = 'given' (the original's rule) they must be equal")
    return h, c
  shape = (h.shape[0], batch, h.shape[2])
  return (jnp.broadcast_to(h.mean(1, keepdims=True), shape),
          jnp.broadcast_to(c.mean(1, keepdims=True), shape))


def psi_calls(psi, psi_stats, inputs, *, per_task: bool = False):
  """psi in train mode on each input f32[N, 60, D] in order (each call moves the batch
  statistics). per_task: batch norm over each task alone (vmapped), statistics averaged."""
  if per_task:
    outs, stats = jax.vmap(lambda *xs: psi_calls(psi, psi_stats, [x[None] for x in xs]))(
        *inputs)
    return [o[:, 0] for o in outs], mean_over_tasks(stats)
  outs = []
  for inp in inputs:
    o, psi_stats = models.synthetic_gradient(psi, psi_stats, jax.lax.stop_gradient(inp),
                                             train=True)
    outs.append(o)
  return outs, psi_stats


def mean_over_tasks(stats):
  """Per-task batch-norm statistics [N, ...] -> one set: running values averaged (each task
  moved the same running value, so this is the update with the mean batch statistic)."""
  return jax.tree.map(lambda a: a.mean(0) if jnp.issubdtype(a.dtype, jnp.floating) else a[0],
                      stats)


def predict(params: PyTree, batch_stats: PyTree, query: jax.Array, lstm_state, *,
            head: str, train: bool = True) -> models.EstimatorOutput:
  """Estimator output for query clips f32[Q, T, H, W, C] from initial (h, c) f32[4, Q, 60].
  train: batch norm over the queries (the original evaluates in train mode)."""
  z, _ = models.extract(params["theta"], batch_stats["theta"], query, train=train)
  return models.estimate(params["phi"], z, lstm_state, head=head)[0]


def adapt_theta(s: hparams.Settings, theta, theta_stats, psi, psi_stats, prototype, support,
                rates=None):
  """The transductive inner loop on support windows f32[S, T, H, W, C], each alone:
  S synthetic-gradient steps, then S prototype steps, one fresh SGD (its momentum carries
  from the first kind into the second). rates (a tree like theta: learned inner rates):
  the synthetic-gradient steps move theta by rates * the SGD's direction instead of
  adapt_lr * it. -> theta', theta_stats', psi_stats', proto losses [S]."""
  tx = s.sgd(s.adapt_lr)
  opt_state = tx.init(theta)
  if rates is not None:
    opt_state = optim.set_learning_rate(opt_state, 1.0)

  def sg_step(carry, x):
    theta, theta_stats, psi_stats, opt_state = carry
    z, vjp, theta_stats = jax.vjp(
        lambda th: models.extract(th, theta_stats, x[None], train=True), theta, has_aux=True)
    (g_z,), psi_stats = psi_calls(psi, psi_stats, [z])
    (g,) = vjp(g_z)
    if rates is None:
      theta, opt_state = optim.step(tx, g, opt_state, theta)
    else:
      theta, opt_state, _ = optim.rated_step(tx, g, opt_state, theta, rates)
    return (theta, theta_stats, psi_stats, opt_state), None

  def proto_step(carry, x):
    theta, theta_stats, psi_stats, opt_state = carry

    def loss_fn(th):
      z, st = models.extract(th, theta_stats, x[None], train=True)
      return losses.prototype_loss(z, prototype), st

    (loss, theta_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(theta)
    theta, opt_state = optim.step(tx, g, opt_state, theta)
    return (theta, theta_stats, psi_stats, opt_state), loss

  carry = (theta, theta_stats, psi_stats, opt_state)
  # unroll: XLA:CPU runs convolutions inside a while loop ~10x slower (measured: two
  # extractor gradient steps 34 s scanned vs 2.9 s unrolled); the step counts are small.
  if s.synthetic_gradient:
    carry, _ = jax.lax.scan(sg_step, carry, support, unroll=True)
  if rates is not None:
    carry = carry[:3] + (optim.set_learning_rate(carry[3], s.adapt_lr),)
  if s.prototype:
    carry, proto_losses = jax.lax.scan(proto_step, carry, support, unroll=True)
  else:
    proto_losses = jnp.zeros((support.shape[0],), support.dtype)
  theta, theta_stats, psi_stats, _ = carry
  return theta, theta_stats, psi_stats, proto_losses


def theta_rates(params: PyTree) -> PyTree | None:
  """theta's learned inner rates (params["rates"]["theta"]), None when the rates are fixed."""
  return params.get("rates", {}).get("theta")


def adapt(config, params: PyTree, batch_stats: PyTree, prototype: jax.Array,
          support: jax.Array) -> tuple[PyTree, PyTree, PyTree]:
  """Transductive adaptation of a copy of theta on one video's support windows
  f32[S, T, H, W, C] (S = the number of steps of each kind). -> (theta', theta_stats',
  psi_stats'). Pure; jit or vmap it as needed (`evaluate_videos` does both)."""
  s = hparams.from_config(config)
  theta, theta_stats, psi_stats, _ = adapt_theta(
      s, params["theta"], batch_stats["theta"], params["psi"], batch_stats["psi"], prototype,
      support, theta_rates(params))
  return theta, theta_stats, psi_stats


# --------------------------------------------------------------------------------------------
# Evaluation: every video adapts its own copy, one jitted call.
# --------------------------------------------------------------------------------------------

BATCHING = ("vmap", "map")


def video_batching(videos) -> str:
  """How `evaluate_videos` batches videos on the platform that holds `videos` (a jax.Array;
  anything else: the default device's): "vmap" on accelerators, "map" on CPU.

  Each video adapts its own theta, so vmapping gives the convolutions' weights a batch axis:
  grouped convolutions, fast on GPUs, but XLA:CPU runs them at about half the throughput of
  plain ones (4 videos vmapped: 53 query frames/s against 104-118 for one video alone,
  reference config, this project's 2-core CPU). On CPU the videos go one after another
  (`lax.map`, one group a device when they are split over several), at one video's speed.
  """
  devices = videos.sharding.device_set if isinstance(videos, jax.Array) else jax.devices()
  return "map" if next(iter(devices)).platform == "cpu" else "vmap"


@functools.partial(compile_options.jit, static_argnums=(0, 1, 2, 3))
def _evaluate(s: hparams.Settings, do_adapt: bool, batching: str, groups: int, params,
              batch_stats, prototype, lstm_state, videos):
  num_queries = videos.shape[1] - s.fewshots
  lstm0 = initial_lstm_state(s.lstm_state_rule, lstm_state, num_queries)

  def one(video):
    theta, theta_stats = params["theta"], batch_stats["theta"]
    if do_adapt:
      theta, theta_stats, _, _ = adapt_theta(s, theta, theta_stats, params["psi"],
                                             batch_stats["psi"], prototype, video[:s.fewshots],
                                             theta_rates(params))
    return predict({"theta": theta, "phi": params["phi"]}, {"theta": theta_stats},
                   video[s.fewshots:], lstm0, head=s.head, train=True)

  if batching == "vmap":
    out = jax.vmap(one)(videos)
  elif groups == 1:
    out = jax.lax.map(one, videos)
  else:  # videos split over `groups` devices: each maps over its own
    grouped = videos.reshape((groups, -1) + videos.shape[1:])
    out = jax.vmap(lambda vs: jax.lax.map(one, vs))(grouped)
    out = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out)
  return {"prob": out.prob, "decision": out.decision,
          "level": heart_rate.decision_to_level(out.decision),
          "expected_level": heart_rate.expected_level(out.prob)}


def evaluate_videos(config, state: TrainState, videos: jax.Array, *, adapt: bool,
                    batching: str | None = None) -> dict[str, jax.Array]:
  """Transductive test of V videos at once: videos f32[V, S + Q, T, H, W, C], the first
  S = config.meta.fewshots windows of each the support, the rest the queries.

  Each video adapts its own copy of theta (`adapt`; skipped with adapt=False, the
  "no_adaptation" method: then the support windows are unused, so every method predicts the
  same queries) and predicts its queries from the initial LSTM state of
  `lstm_state_rule`. -> prob f32[V, Q, T, 40], decision i32[V, Q, T] (0..40, a perfect model
  gives target + 1), level i32[V, Q, T] (decision mapped to target levels 0..39),
  expected_level f32[V, Q, T] (sum of prob - 1: a continuous signal on the level scale).
  batching: "vmap" | "map" (`video_batching`: the platform's faster form when None); the
  results are the same either way.
  """
  s = hparams.from_config(config)
  if videos.ndim != 6 or videos.shape[1] <= s.fewshots:
    raise DataError(f"videos have shape {list(videos.shape)}: expected [V, fewshots + Q, T, H, "
                    f"W, C] with fewshots = {s.fewshots} and Q >= 1")
  batching = video_batching(videos) if batching is None else batching
  if batching not in BATCHING:
    raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
  devices = len(videos.sharding.device_set) if isinstance(videos, jax.Array) else 1
  return _evaluate(s, bool(adapt), batching, math.gcd(videos.shape[0], devices), state.params,
                   state.batch_stats, state.prototype, state.lstm_state, videos)

