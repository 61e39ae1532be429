"""pretrained: the packaged model loads and predicts; export/load round trip; clear errors."""

import json
import pathlib

import jax
import numpy as np
import pytest

from metarppg_jax import checkpoints
from metarppg_jax import configuration
from metarppg_jax import pretrained
from metarppg_jax.errors import CheckpointError

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_export_then_load_gives_the_same_model(tmp_path):
  config = configuration.from_file(REPO / "configs" / "tiny.py")
  state = checkpoints.target_state(config)
  state = state.replace(prototype=state.prototype + 0.25)
  pretrained.export(config, state, tmp_path, info={"made_by": "test"})
  loaded_config, loaded = pretrained.load(tmp_path)
  assert loaded_config.to_dict() == config.to_dict()
  for name in pretrained.MODEL_PARTS:
    for a, b in zip(jax.tree.leaves(getattr(state, name)), jax.tree.leaves(getattr(loaded, name))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert pretrained.info(tmp_path) == {"made_by": "test"}


def test_missing_or_mismatched_files_are_checkpoint_errors(tmp_path):
  with pytest.raises(CheckpointError, match="no pretrained model"):
    pretrained.load(tmp_path)
  config = configuration.from_file(REPO / "configs" / "tiny.py")
  pretrained.export(config, checkpoints.target_state(config), tmp_path)
  with config.unlocked():
    config.data.tasks_per_batch = config.data.tasks_per_batch + 1  # other LSTM state shape
  configuration.write(config, tmp_path)
  with pytest.raises(CheckpointError, match="lstm_state"):
    pretrained.load(tmp_path)


def test_the_packaged_model_is_there_and_documented():
  config, state = pretrained.load()
  about = pretrained.info()
  assert about["command"].startswith("python experiments/make_pretrained.py")
  assert "synthetic" in about["trained_on"]
  assert np.all(np.isfinite(np.asarray(state.prototype)))
  assert int(state.step) == about["steps"]
  assert json.loads(configuration.to_json(config))["data"]["dataset"] == "synthetic_rppg"
