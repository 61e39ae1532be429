"""Checkpoints: save/restore round trip, keep N, best by validation MAE, corrupt-newest
fallback, refusal of a checkpoint from another config, original import."""

import pathlib
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metarppg_jax import checkpoints
from metarppg_jax.errors import CheckpointError


@flax.struct.dataclass
class _State:
  """A stand-in with the shape of a TrainState: arrays, optax state, a PRNG key, a tuple."""
  step: Any
  params: Any
  opt_state: Any
  lstm_state: Any
  rng: Any


def _state(step=0, width=4, rng=None):
  params = {"theta": {"w": jnp.arange(3 * width, dtype=jnp.float32).reshape(3, width) + step},
            "phi": {"b": jnp.full((5,), float(step))}}
  tx = optax.sgd(0.1, momentum=0.9)
  h = jnp.full((4, 2, 6), 0.5 * step)
  return _State(jnp.asarray(step, jnp.int32), params, tx.init(params), (h, -h),
                jax.random.PRNGKey(step) if rng is None else rng)


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(checkpoints.to_tree(a)), jax.tree.leaves(checkpoints.to_tree(b))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.asarray(x).dtype == np.asarray(y).dtype


def _save_steps(workdir, maes, *, keep=2):
  mgrs = checkpoints.managers(workdir, max_to_keep=keep, async_save=True)
  for i, mae in enumerate(maes, start=1):
    checkpoints.save(mgrs, _state(i), step=i, data_state={"next": 10 * i}, val_mae=mae)
  checkpoints.wait(mgrs)
  checkpoints.close(mgrs)


def test_round_trip_keep_n_and_best(tmp_path):
  _save_steps(tmp_path, [5.0, 3.0, 4.0, 6.0], keep=2)
  latest = sorted(int(p.name) for p in checkpoints.checkpoint_dir(tmp_path).iterdir()
                  if p.name.isdigit())
  assert latest == [3, 4]
  restored = checkpoints.restore_latest(tmp_path, _state())
  assert restored.step == 4 and restored.data_state == {"next": 40}
  _assert_same(restored.state, _state(4))
  best = checkpoints.restore_best(tmp_path, _state())
  assert best.step == 2
  _assert_same(best.state, _state(2))
  assert checkpoints.latest_step(tmp_path) == 4


def test_typed_prng_key_round_trip(tmp_path):
  state = _state(1, rng=jax.random.key(7))
  mgrs = checkpoints.managers(tmp_path, async_save=False)
  checkpoints.save(mgrs, state, step=1)
  checkpoints.close(mgrs)
  back = checkpoints.restore_latest(tmp_path, _state(0, rng=jax.random.key(0))).state
  assert jax.dtypes.issubdtype(back.rng.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(back.rng), jax.random.key_data(state.rng))


def test_empty_workdir_has_nothing(tmp_path):
  assert checkpoints.restore_latest(tmp_path, _state()) is None
  assert checkpoints.latest_step(tmp_path) is None
  with pytest.raises(CheckpointError, match="no best checkpoint"):
    checkpoints.restore_best(tmp_path, _state())


@pytest.mark.parametrize("part", ["_METADATA", "d"])
def test_truncated_newest_falls_back_to_previous(tmp_path, caplog, part):
  _save_steps(tmp_path, [None, None, None], keep=3)
  state_dir = checkpoints.checkpoint_dir(tmp_path) / "3" / "state"
  # "d": the array data files (as a copy interrupted mid-file leaves them).
  victims = [state_dir / part] if part == "_METADATA" else list((state_dir / part).rglob("*"))
  assert victims
  for victim in victims:
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
  with caplog.at_level("WARNING"):
    restored = checkpoints.restore_latest(tmp_path, _state())
  assert restored.step == 2
  _assert_same(restored.state, _state(2))
  assert "corrupt or truncated" in caplog.text and "/3" in caplog.text


def test_all_corrupt_is_a_clear_error(tmp_path):
  _save_steps(tmp_path, [None], keep=1)
  for p in (checkpoints.checkpoint_dir(tmp_path) / "1" / "state").rglob("*"):
    if p.is_file():
      p.write_bytes(b"")
  with pytest.raises(CheckpointError, match="no readable checkpoint"):
    checkpoints.restore_latest(tmp_path, _state())


def test_checkpoint_of_another_config_is_refused_naming_leaves(tmp_path):
  _save_steps(tmp_path, [None], keep=1)
  with pytest.raises(CheckpointError, match=r"theta/w: shape \[3, 4\] in the checkpoint, "
                                            r"\[3, 7\] here"):
    checkpoints.restore_latest(tmp_path, _state(width=7))


def test_restore_by_path(tmp_path):
  _save_steps(tmp_path, [None, None], keep=2)
  step_dir = checkpoints.checkpoint_dir(tmp_path) / "1"
  assert checkpoints.restore_path(step_dir, _state()).step == 1
  assert checkpoints.restore_path(tmp_path, _state()).step == 2
  assert checkpoints.restore_path(checkpoints.checkpoint_dir(tmp_path), _state()).step == 2
  with pytest.raises(CheckpointError, match="no such checkpoint"):
    checkpoints.restore_path(tmp_path / "missing", _state())
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="not a checkpoint"):
    checkpoints.restore_path(tmp_path / "empty", _state())


def test_original_checkpoint_import_is_restorable(tmp_path, reference_dir):
  """An original .npz becomes an orbax checkpoint that evaluate restores like any other."""
  from metarppg_jax import configuration  # pylint: disable=g-import-not-at-top
  from metarppg_jax import original_checkpoint  # pylint: disable=g-import-not-at-top
  repo = pathlib.Path(__file__).resolve().parents[1]
  source = reference_dir / "checkpoint.npz"
  config = configuration.from_file(repo / "configs" / "reference.py",
                                   {"data.tasks_per_batch": 2})  # the file's (h, c) are for 2
  step_dir = checkpoints.import_original(source, config, tmp_path)
  assert step_dir.is_dir()
  restored = checkpoints.restore_latest(tmp_path, checkpoints.target_state(config))
  original = original_checkpoint.load(source)
  np.testing.assert_array_equal(np.asarray(restored.state.params["theta"]["conv1"]["kernel"]),
                                original.params["theta"]["conv1"]["kernel"])
  np.testing.assert_array_equal(np.asarray(restored.state.prototype), original.prototype)
  # The .npz path itself works as restore_from too, and a wrong N is named.
  config.restore_from = str(source)
  direct = checkpoints.restore(config, tmp_path / "unused", None)
  np.testing.assert_array_equal(np.asarray(direct.state.lstm_state[0]), original.lstm_state[0])
  bad = configuration.from_file(repo / "configs" / "reference.py")
  with pytest.raises(CheckpointError, match="tasks_per_batch=2"):
    checkpoints.load_original(source, bad)
