"""meta: the outer step trains, evaluation vmaps adapt+predict exactly, config switches."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarppg_jax import compile_options
from metarppg_jax import configuration
from metarppg_jax import heart_rate
from metarppg_jax import hparams
from metarppg_jax import inference
from metarppg_jax import losses
from metarppg_jax import meta
from metarppg_jax import models
from metarppg_jax import optim
from metarppg_jax import state as state_lib
from metarppg_jax.errors import ConfigError, DataError

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
SIZE = 32  # frame size: the smallest the extractor takes, to keep compiles and steps cheap


def _config(name="default", **meta_fields):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in meta_fields.items():
    config.meta[key] = value
  return config


def _pulse_clips(seed, n, windows, size=SIZE):
  """Clips f32[n, windows, 60, size, size, 3] whose colour follows a pulse, and the pulse's
  levels i32[n, windows, 60] (quantised per window as the original does)."""
  rng = np.random.default_rng(seed)
  t = np.arange(windows * 60) / 30.0
  yy, xx = np.mgrid[0:size, 0:size] / size
  clips, levels = [], []
  for _ in range(n):
    base = np.stack([0.5 + 0.2 * np.sin(rng.uniform(-3, 3) * xx + rng.uniform(-3, 3) * yy)
                     for _ in range(3)], -1)
    pulse = np.sin(2 * np.pi * rng.uniform(1.0, 2.0) * t + rng.uniform(0, 6))
    clip = base[None] * (1 + 0.05 * pulse[:, None, None, None] * np.array([0.3, 0.8, 0.5]))
    clip = clip + rng.normal(0, 0.01, clip.shape)
    clip = clip - clip.mean(axis=(1, 2), keepdims=True)
    clips.append(clip.reshape(windows, 60, size, size, 3))
    p = pulse.reshape(windows, 60)
    lo, hi = p.min(-1, keepdims=True), p.max(-1, keepdims=True)
    levels.append(np.round((p - lo) / ((hi - lo) / 39)))
  return np.stack(clips).astype(np.float32), np.stack(levels).astype(np.int32)


def test_config_errors_name_the_field():
  with pytest.raises(ConfigError, match="adapt_position"):
    configuration.validate(_config(adapt_position="middle"))
  with pytest.raises(ConfigError, match="inner_mode"):
    configuration.validate(_config(inner_mode="sometimes"))
  with pytest.raises(ConfigError, match="lstm_state_rule"):
    # The carried state is per task: 'given'.
    configuration.validate(_config(carry_lstm_state=True))
  with pytest.raises(ConfigError, match="fewshots"):
    configuration.validate(_config(fewshots=0))
  s = hparams.from_config(_config("reference"))
  assert (s.head, s.supervised_adapt_step, s.carry_lstm_state, s.test_in_step) == (
      "reference", True, True, True)


def test_invalid_windows_do_not_count_in_the_ordinal_loss():
  rng = np.random.default_rng(0)
  fc_out = jnp.asarray(rng.normal(size=(3, 60, 80)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 40, (3, 60)), jnp.int32)
  prob, decision = models.ordinal_layer(fc_out)
  out = models.EstimatorOutput(fc_out, fc_out, prob, decision)
  valid = jnp.array([True, False, True])
  s = hparams.from_config(_config())
  masked = meta._ordinal(s, out, targets, valid)  # pylint: disable=protected-access
  kept = losses.ordinal_loss(fc_out[jnp.array([0, 2])], targets[jnp.array([0, 2])])
  np.testing.assert_allclose(masked, kept, rtol=1e-6)
  garbage = targets.at[1].set(39 - targets[1])
  np.testing.assert_allclose(meta._ordinal(s, out, garbage, valid), masked, rtol=1e-6)  # pylint: disable=protected-access
  s_ref = hparams.from_config(_config("reference"))  # the reference ignores the mask
  out_ref = out._replace(prob=models.ordinal_layer(fc_out, "reference")[0])
  np.testing.assert_allclose(meta._ordinal(s_ref, out_ref, targets, valid),  # pylint: disable=protected-access
                             losses.ordinal_loss(fc_out, targets, "reference"), rtol=1e-6)


@pytest.mark.parametrize("batching", inference.BATCHING)
def test_vmapped_evaluation_equals_each_video_alone(batching):
  # float64: test-time steps on one clip amplify float32 rounding ~1e3x (reference README), so
  # two correct float32 programs (vmapped, alone) differ by ~1e-4 in prob; float64 ones do not.
  # Both batching forms (vmap: accelerators; map: CPU) give each video's own result.
  with jax.enable_x64(True):
    config = _config(fewshots=2)
    config.model.dtype = "float64"
    state = state_lib.create_train_state(config, jax.random.PRNGKey(0), num_tasks=3)
    clips, _ = _pulse_clips(1, 2, 3)  # 2 videos, 2 support + 1 query window each
    clips = jnp.asarray(clips, jnp.float64)
    # A non-zero prototype and LSTM state, so that every part of the adaptation acts.
    state = state.replace(
        prototype=jnp.linspace(-0.5, 0.5, models.FEATURES),
        lstm_state=(0.1 * jnp.ones((4, 3, 60)), -0.1 * jnp.ones((4, 3, 60))))
    out = inference.evaluate_videos(config, state, clips, adapt=True, batching=batching)
    assert out["prob"].shape == (2, 1, 60, 40) and out["decision"].dtype == jnp.int32

    adapt = compile_options.jit(lambda support: inference.adapt(
        config, state.params, state.batch_stats, state.prototype, support))
    lstm0 = inference.initial_lstm_state(config.meta.lstm_state_rule, state.lstm_state, 1)
    predict = compile_options.jit(lambda theta, theta_stats, query: inference.predict(
        {"theta": theta, "phi": state.params["phi"]}, {"theta": theta_stats}, query, lstm0,
        head=config.model.ordinal_head))
    plain = inference.evaluate_videos(config, state, clips, adapt=False)
    for v in range(2):
      theta, theta_stats, _ = adapt(clips[v, :2])
      alone = predict(theta, theta_stats, clips[v, 2:])
      np.testing.assert_allclose(out["prob"][v], alone.prob, rtol=1e-9, atol=1e-12)
      np.testing.assert_array_equal(out["level"][v], heart_rate.decision_to_level(alone.decision))
      # Adaptation moved this video's copy of theta, and its predictions.
      assert not np.allclose(theta["conv1"]["kernel"], state.params["theta"]["conv1"]["kernel"])
      assert np.abs(plain["prob"][v] - out["prob"][v]).max() > 1e-6
    with pytest.raises(DataError, match="fewshots"):
      inference.evaluate_videos(config, state, clips[:, :2], adapt=True)


@pytest.mark.parametrize("inner_mode", ["joint", pytest.param("per_task", marks=pytest.mark.slow)])
def test_meta_training_lowers_the_ordinal_loss(inner_mode):
  config = _config(inner_mode=inner_mode, supervised_adapt_step=True)
  state = state_lib.create_train_state(config, jax.random.PRNGKey(0), num_tasks=2)
  clips, levels = _pulse_clips(2, 2, 3)
  state = meta.update_prototype(config, state, jnp.asarray(clips[:, 0]))
  assert float(jnp.abs(state.prototype).sum()) > 0
  batch = {"x": jnp.asarray(clips), "targets": jnp.asarray(levels),
           "valid": jnp.ones((2, 3), bool)}
  step = meta.make_meta_train_step(config)
  history = []
  for _ in range(6):
    state, metrics = step(state, batch)
    history.append({k: float(v) for k, v in metrics.items()})
  for name in ("ordloss", "fewloss", "gradloss", "learn1/ordloss", "learn2/gradloss",
               "adapt/ordloss"):
    assert all(np.isfinite(h[name]) for h in history), name
  ordloss = [h["ordloss"] for h in history]
  # lr 1e-3 from the original init: a steady descent (measured 27.66 -> 27.38 in 6 steps, each
  # step lower than the last); a wrong gradient sign or a lost update breaks both conditions.
  assert all(b < a for a, b in zip(ordloss, ordloss[1:])), ordloss
  assert ordloss[-1] < ordloss[0] - 0.2, ordloss
  assert int(state.step) == 6


@pytest.mark.parametrize("psi_target", ["support", "learning"])
def test_psi_learns_the_gradient_where_it_is_trained(psi_target):
  """psi_target support: psi's loss is taken on the adaptation window (adapt/gradloss) and
  falls; the learning phase leaves psi alone. learning: the other way round."""
  config = _config(psi_target=psi_target)
  state = state_lib.create_train_state(config, jax.random.PRNGKey(1), num_tasks=2)
  clips, levels = _pulse_clips(3, 2, 3)
  batch = {"x": jnp.asarray(clips), "targets": jnp.asarray(levels),
           "valid": jnp.ones((2, 3), bool)}
  step = meta.make_meta_train_step(config)
  psi0 = jax.tree.map(np.asarray, state.params["psi"])
  history = []
  for _ in range(4):
    state, metrics = step(state, batch)
    history.append({k: float(v) for k, v in metrics.items()})
  moved = max(float(np.abs(np.asarray(a) - b).max())
              for a, b in zip(jax.tree.leaves(state.params["psi"]), jax.tree.leaves(psi0)))
  assert moved > 0
  if psi_target == "support":
    assert all(h["learn1/gradloss"] == 0 and h["learn2/gradloss"] == 0 for h in history)
    losses_ = [h["adapt/gradloss"] for h in history]
    assert all(h["gradloss"] == h["adapt/gradloss"] for h in history)
  else:
    assert "adapt/gradloss" not in history[0]
    losses_ = [h["learn1/gradloss"] for h in history]
  assert losses_[-1] < losses_[0], losses_


def _learned(**fields):
  config = _config(inner_rates="learned", **fields)
  config.optim.rates_lr = 1e-4
  return configuration.validate(config)


def test_learned_rates_need_the_joint_inner_step_on_theta():
  for fields, need in (({"inner_mode": "per_task"}, "joint"),
                       ({"adapt_position": "estimator"}, "extractor"),
                       ({"synthetic_gradient": False}, "synthetic_gradient")):
    with pytest.raises(ConfigError, match=f"inner_rates='learned' needs .*{need}"):
      _learned(**fields)


def test_learned_rates_gradient_is_the_exact_one_for_one_inner_step():
  """d loss / d rates = d loss / d adapted * direction (what the step feeds Adam) equals
  autodiff through the inner step, for the loss on the next window."""
  config = _learned(adapt_position="both")
  s = hparams.from_config(config)
  state = state_lib.create_train_state(config, jax.random.PRNGKey(0), num_tasks=2)
  clips, levels = _pulse_clips(4, 2, 2)
  x0, x1, t1 = jnp.asarray(clips[:, 0]), jnp.asarray(clips[:, 1]), jnp.asarray(levels[:, 1])
  lstm0 = meta._lstm0(s, state.lstm_state, 2)  # pylint: disable=protected-access
  opt = optim.set_learning_rate(state.opt_state["adapt"], 1.0)

  def adapted(rates):
    params = dict(state.params, rates=rates)
    return meta._sg_adaptation(s, params, state.batch_stats, opt, x0, lstm0)  # pylint: disable=protected-access

  def loss_at(theta, phi, stats):
    z, stats = models.extract(theta, stats["theta"], x1, train=True)
    out, _ = models.estimate(phi, z, lstm0, head=s.head)
    return losses.ordinal_loss(out.fc_out, t1, s.head) + losses.prototype_loss(z,
                                                                              state.prototype)

  def loss(rates):
    params, stats, *_ = adapted(rates)
    return loss_at(params["theta"], params["phi"], stats)

  exact = jax.grad(loss)(state.params["rates"])
  params, stats, _, _, _, direction = adapted(state.params["rates"])
  g = dict(zip(("theta", "phi"), jax.grad(loss_at, argnums=(0, 1))(params["theta"],
                                                                   params["phi"], stats)))
  formula = {k: jax.tree.map(jnp.multiply, g[k], direction[k]) for k in direction}
  # float32: the two paths sum the weight gradients' long convolutions (60 frames x 32 x 32
  # pixels) in different orders; a wrong formula would miss by the rates' own size.
  for a, b in zip(jax.tree.leaves(formula), jax.tree.leaves(exact)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()) + 1e-30)
  assert max(float(np.abs(a).max()) for a in jax.tree.leaves(exact)) > 0


def test_learned_rates_train_and_adapt_at_test_time():
  """The step moves the rates (Adam: about rates_lr an element on its first step), and the
  test-time inner step uses them: at their initial value (adapt_lr everywhere) the
  evaluation is the fixed-rate one; moved, it differs."""
  config = _learned()
  fixed = _config()
  state = state_lib.create_train_state(config, jax.random.PRNGKey(2), num_tasks=2)
  clips, levels = _pulse_clips(5, 2, 3)
  videos = jnp.asarray(clips)
  same = inference.evaluate_videos(config, state, videos, adapt=True)
  plain_state = state.replace(params={k: v for k, v in state.params.items() if k != "rates"})
  want = inference.evaluate_videos(fixed, plain_state, videos, adapt=True)
  np.testing.assert_allclose(same["prob"], want["prob"], rtol=1e-5, atol=1e-6)
  step = meta.make_meta_train_step(config)
  rates0 = jax.tree.map(np.asarray, state.params["rates"])
  state, metrics = step(state, {"x": videos, "targets": jnp.asarray(levels)})
  moved = [np.abs(np.asarray(a) - b) for a, b in zip(jax.tree.leaves(state.params["rates"]),
                                                      jax.tree.leaves(rates0))]
  assert 0.5e-4 < max(float(m.max()) for m in moved) < 2e-4
  assert np.isfinite(float(metrics["rates/mean"])) and "rates" in state.opt_state
  scaled = state.replace(params=dict(state.params, rates=jax.tree.map(
      lambda r: 1e3 * r, state.params["rates"])))
  moved_eval = inference.evaluate_videos(config, scaled, videos, adapt=True)
  assert np.abs(moved_eval["prob"] - want["prob"]).max() > 1e-4
