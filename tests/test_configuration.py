"""Config loading and validation: every config file is valid; bad fields fail before work."""

import json
import pathlib

import ml_collections
import pytest

from metarppg_jax import configuration
from metarppg_jax.errors import ConfigError

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _default():
  return configuration.from_file(CONFIGS / "default.py")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.py")), ids=lambda p: p.stem)
def test_every_config_file_is_valid(path):
  config = configuration.from_file(path)
  assert "window" not in config.data  # a constant of the model, not a setting


def test_schema_covers_exactly_the_default_config():
  flat = configuration._flatten(_default())  # pylint: disable=protected-access
  assert set(flat) == set(configuration.SCHEMA)


def test_unknown_field_is_named():
  config = _default()
  with config.unlocked():
    config.optim.learning_rate = 0.1
  with pytest.raises(ConfigError, match=r"unknown field 'optim.learning_rate'"):
    configuration.validate(config)


def test_unknown_override_is_refused():
  with pytest.raises(ConfigError, match="unknown field 'optim.lrate'"):
    configuration.from_file(CONFIGS / "default.py", {"optim.lrate": 0.1})


def test_negative_learning_rate_is_refused():
  with pytest.raises(ConfigError, match=r"optim.lr=-0.001: must be > 0"):
    configuration.from_file(CONFIGS / "default.py", {"optim.lr": -1e-3})


@pytest.mark.parametrize("name,value,message", [
    ("mode", "fit", "must be one of"),
    ("method", "svm", "must be one of"),
    ("meta.fewshots", 0, "must be >= 1"),
    ("optim.momentum", 1.0, "must be < 1"),
    ("optim.lr", float("nan"), "finite"),
    ("eval.hr_window_s", 0.0, "must be > 0"),
    ("checkpoint.async_save", 1, "True or False"),
])
def test_bad_values_name_the_field(name, value, message):
  flat = configuration._flatten(_default())  # pylint: disable=protected-access
  flat[name] = value  # a plain dict: no ConfigDict type coercion in the way
  nested = {}
  for key, v in flat.items():
    *parents, leaf = key.split(".")
    node = nested
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  with pytest.raises(ConfigError, match=name.replace(".", r"\.") + r"=.*" + message):
    configuration.validate(ml_collections.ConfigDict(nested))


def test_all_problems_reported_at_once():
  config = _default()
  config.optim.lr = -1.0
  config.meta.fewshots = 0
  with pytest.raises(ConfigError) as e:
    configuration.validate(config)
  assert "optim.lr" in str(e.value) and "meta.fewshots" in str(e.value)


def test_window_longer_than_the_video():
  config = _default()
  with pytest.raises(ConfigError, match=r"model window \(60 frames\) is too long .* shortest video has 150"):
    configuration.check_against_data(config, split="test", num_frames=150, purpose="eval",
                                     source="synthetic_rppg")
  config.data.speed_max = 1.0
  configuration.check_against_data(config, split="train", num_frames=180, purpose="train",
                                   source="synthetic_rppg")
  with pytest.raises(ConfigError, match="too long"):
    configuration.check_against_data(config, split="train", num_frames=179, purpose="train",
                                     source="synthetic_rppg")
  config.data.speed_max = 1.3       # stretched windows: 3 x ceil(60 x 1.3) frames
  configuration.check_against_data(config, split="train", num_frames=234, purpose="train",
                                   source="synthetic_rppg")
  with pytest.raises(ConfigError, match="speed_max=1.3"):
    configuration.check_against_data(config, split="train", num_frames=233, purpose="train",
                                     source="synthetic_rppg")


def test_write_and_read_round_trip(tmp_path):
  config = _default()
  config.optim.num_epochs = 7
  path = configuration.write(config, tmp_path)
  assert json.loads(path.read_text())["optim"]["num_epochs"] == 7
  back = configuration.read(tmp_path)
  assert back.to_dict() == config.to_dict()


def test_missing_config_json(tmp_path):
  with pytest.raises(ConfigError, match="no config.json"):
    configuration.read(tmp_path)


def test_from_file_errors(tmp_path):
  with pytest.raises(ConfigError, match="not found"):
    configuration.from_file(tmp_path / "nope.py")
  bad = tmp_path / "bad.py"
  bad.write_text("x = 1\n")
  with pytest.raises(ConfigError, match="must define get_config"):
    configuration.from_file(bad)
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config():\n  return undefined_name\n")
  with pytest.raises(ConfigError, match="NameError"):
    configuration.from_file(broken)


def test_missing_field():
  config = ml_collections.ConfigDict(_default().to_dict())
  del config.optim["lr"]
  with pytest.raises(ConfigError, match="missing field 'optim.lr'"):
    configuration.validate(config)
