"""Numerical guards: degenerate clips and flat PPG stay finite through the whole
model (preprocess -> models -> losses -> one meta_train_step) in both ordinal head forms.
(The trainer's stop/skip on a non-finite loss is tests/test_train.py's.)"""

import functools
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarppg_jax import configuration
from metarppg_jax import losses
from metarppg_jax import meta
from metarppg_jax import state as state_lib
from metarppg_jax import models
from metarppg_jax.data import faces
from metarppg_jax.data import input_pipeline
from metarppg_jax.data import preprocess

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
SIZE = 32          # the smallest frame the extractor takes: cheap compiles and steps
WINDOW = 60
CLIPS = {"all-black": 0, "saturated": 255, "constant": 131}
HEADS = {"sound": "sound", "reference": "reference"}   # head -> normalisation it is used with


def _config(head, **overrides):
  base = {"model.ordinal_head": head, "data.normalization": HEADS[head],
          "data.tasks_per_batch": 2}
  return configuration.from_file(CONFIGS / "default.py", {**base, **overrides})


def _pulse(n, flat=False):
  t = np.arange(n) / 30.0
  return np.zeros(n, np.float32) + 0.7 if flat else np.sin(2 * np.pi * 1.2 * t).astype(
      np.float32)


def _batch(value, head, *, tasks=2, flat_ppg=False):
  """A meta-batch of `tasks` identical tasks cut from a clip whose every pixel is `value`,
  through the real skin mask, window loader and normalisation."""
  frames = np.full((3 * WINDOW, SIZE, SIZE, 3), value, np.uint8)
  record = {"frames": frames, "mask": faces.skin_mask(frames, ellipse=faces.face_ellipse(1.6)),
            "ppg": _pulse(3 * WINDOW, flat_ppg), "hr": np.full(3 * WINDOW, 72.0, np.float32),
            "has_ppg": True}
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # no divide-by-zero / invalid-value warning on the way
    w = input_pipeline.load_windows(record, np.arange(3) * WINDOW, window=WINDOW,
                                    normalization=HEADS[head])
  assert np.isfinite(w["x"]).all()
  stack = lambda a: jnp.asarray(np.stack([a] * tasks))
  return {"x": stack(w["x"]), "targets": stack(w["targets"]), "valid": stack(w["valid"])}


@functools.lru_cache(maxsize=None)
def _step(head):
  return meta.make_meta_train_step(_config(head))


def _finite_tree(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating))


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("clip", list(CLIPS))
def test_degenerate_clips_stay_finite(head, clip):
  batch = _batch(CLIPS[clip], head)
  # The networks and the loss on their own ...
  params, stats = models.init(jax.random.PRNGKey(0))
  x0 = batch["x"][:, 0]
  z, _ = models.extract(params["theta"], stats["theta"], x0, train=True)
  out, _ = models.estimate(params["phi"], z, models.zero_lstm_state(x0.shape[0]), head=head)
  assert _finite_tree((z, out.fc_out, out.prob))
  loss = (losses.ordinal_loss(out.fc_out, batch["targets"][:, 0], head)
          if head == "sound" else
          losses.ordinal_loss_from_prob(out.prob, batch["targets"][:, 0], head))
  assert np.isfinite(float(loss))
  # ... and one whole outer step (adaptation, learning, prototype update).
  config = _config(head)
  state = state_lib.create_train_state(config, jax.random.PRNGKey(1), num_tasks=2)
  new_state, metrics = _step(head)(state, batch)
  bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(float(v))}
  assert not bad, f"{clip} clip, {head} head: non-finite {bad}"
  assert _finite_tree(new_state), f"{clip} clip, {head} head: non-finite state"
  assert float(metrics["ordloss"]) > 0


def test_flat_ppg_windows_are_flagged_not_divided():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    levels, valid = preprocess.quantize_ppg(np.stack([
        np.full(WINDOW, 0.7),                    # flat
        np.full(WINDOW, 1e6) + 1e-7 * np.arange(WINDOW),   # flat to float precision
        np.where(np.arange(WINDOW) == 5, np.nan, 1.0),     # a hole
        _pulse(WINDOW)]))
  assert valid.tolist() == [False, False, False, True]
  assert (levels[:3] == 0).all() and levels[3].min() == 0 and levels[3].max() == 39


@pytest.mark.parametrize("head", list(HEADS))
def test_flat_ppg_batch_trains_finite(head):
  """Every window flat (a sensor that fell off): nothing to learn from, but no NaN either."""
  batch = _batch(131, head, flat_ppg=True)
  assert not np.asarray(batch["valid"]).any()
  state = state_lib.create_train_state(_config(head), jax.random.PRNGKey(2), num_tasks=2)
  new_state, metrics = _step(head)(state, batch)
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert _finite_tree(new_state)
