"""Training loop: exact resume from a middle checkpoint, non-finite loss guard (stop / skip),
logging outputs. Tiny synthetic setting (configs/tiny.py); compiled steps are cached."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarppg_jax import checkpoints
from metarppg_jax import configuration
from metarppg_jax import history as history_lib
from metarppg_jax import meta
from metarppg_jax import train

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _config(data_dir, **overrides):
  base = {"data.data_dir": data_dir, "checkpoint.every_steps": 1, "checkpoint.max_to_keep": 5,
          "checkpoint.async_save": False, "eval.every_epochs": 0}
  return configuration.from_file(CONFIGS / "tiny.py", {**base, **overrides})


def _leaves(state):
  return jax.tree.leaves(checkpoints.to_tree(state))


def test_resume_from_a_middle_checkpoint_is_exact(tmp_path, data_dir):
  config = _config(data_dir)
  full = tmp_path / "full"
  state_full = train.train(config, full)
  assert int(state_full.step) == 4
  assert sorted(int(p.name) for p in checkpoints.checkpoint_dir(full).iterdir()) == [1, 2, 3, 4]
  history = json.loads((full / history_lib.FILE).read_text())
  assert [h["step"] for h in history] == [1, 2, 3, 4]
  assert list((full / "tensorboard").glob("events.out.tfevents.*"))

  # An interrupted run: its newest checkpoints lost; it resumes from step 2.
  cut = tmp_path / "cut"
  shutil.copytree(full, cut)
  for step in (3, 4):
    shutil.rmtree(checkpoints.checkpoint_dir(cut) / str(step))
  state_resumed = train.train(config, cut)
  assert int(state_resumed.step) == 4
  for a, b in zip(_leaves(state_full), _leaves(state_resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  resumed_history = json.loads((cut / history_lib.FILE).read_text())
  assert [h["step"] for h in resumed_history] == [1, 2, 3, 4]


def _poisoned_step(monkeypatch, bad_step: int):
  """meta.meta_train_step whose metrics report a NaN ordinal loss at `bad_step` (the trainer
  jits it)."""
  real = meta.meta_train_step

  def make(config, **kwargs):
    step = real(config, **kwargs)

    def poisoned(state, batch):
      n = state.step
      state, metrics = step(state, batch)
      bad = jnp.where(n + 1 == bad_step, jnp.nan, metrics["ordloss"])
      return state, dict(metrics, ordloss=bad.astype(metrics["ordloss"].dtype))
    return poisoned
  monkeypatch.setattr(meta, "meta_train_step", make)


def test_nonfinite_loss_stops_naming_step_and_term(tmp_path, data_dir, monkeypatch):
  _poisoned_step(monkeypatch, bad_step=2)
  with pytest.raises(train.NonFiniteLoss, match=r"step 2 .*ordloss=nan.*checkpoint \(step 1\)"):
    train.train(_config(data_dir, **{"optim.num_epochs": 1}), tmp_path)
  steps = sorted(int(p.name) for p in checkpoints.checkpoint_dir(tmp_path).iterdir())
  assert steps == [1]
  assert checkpoints.restore_latest(
      tmp_path, checkpoints.target_state(_config(data_dir))).step == 1


def test_nonfinite_loss_skip_drops_the_update(tmp_path, data_dir, monkeypatch):
  _poisoned_step(monkeypatch, bad_step=2)
  config = _config(data_dir, **{"optim.nonfinite": "skip", "optim.num_epochs": 1})
  state = train.train(config, tmp_path)
  assert int(state.step) == 2
  target = checkpoints.target_state(config)
  one = checkpoints.restore_path(checkpoints.checkpoint_dir(tmp_path) / "1", target).state
  two = checkpoints.restore_path(checkpoints.checkpoint_dir(tmp_path) / "2", target).state
  assert int(two.step) == 2
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_diverging_run_stops_at_the_first_nonfinite_loss(tmp_path, data_dir):
  """A real divergence (a learning rate of 1e4), not a poisoned metric: the run stops with a
  message naming the step and the loss terms, and the checkpoints before it hold finite
  weights."""
  config = _config(data_dir, **{"optim.lr": 1e4, "optim.num_epochs": 1,
                                "optim.steps_per_epoch": 6})
  with pytest.raises(train.NonFiniteLoss, match=r"non-finite loss at step \d+ \(epoch 1\): "
                     r".*(loss=|parameters are not finite)") as info:
    train.train(config, tmp_path)
  bad_step = int(str(info.value).split("step ")[1].split()[0])
  assert bad_step >= 2  # step 1 starts from the finite initial weights
  saved = sorted(int(p.name) for p in checkpoints.checkpoint_dir(tmp_path).iterdir())
  assert saved == list(range(1, bad_step))
  last = checkpoints.restore_latest(tmp_path, checkpoints.target_state(config))
  assert last.step == bad_step - 1
  assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(last.state.params))
