"""experiments/ablation.py on the tiny setting: every variant's config, and the table."""

import json
import pathlib

import pytest

from metarppg_jax import configuration
from metarppg_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_variant_configs_apply_their_overrides(tmp_path, load_experiment):
  ablation = load_experiment("ablation")
  base = configuration.from_file(REPO / "configs" / "tiny.py")
  expected = {"no_synthetic_gradient": ("meta", "synthetic_gradient", False),
              "no_prototype": ("meta", "prototype", False),
              "adapt_estimator": ("meta", "adapt_position", "estimator"),
              "adapt_both": ("meta", "adapt_position", "both"),
              "end_to_end": ("meta", "meta_learning", False)}
  for variant, (group, field, value) in expected.items():
    config = ablation.variant_config(base, variant, tmp_path)
    assert config[group][field] == value
    assert config.data.builder_config == "tiny"  # the base config's dataset is kept
    assert config.data.data_dir == str(tmp_path / "data")
    # The same change as the standalone config file.
    standalone = configuration.from_file(REPO / "configs" / f"ablation_{variant}.py")
    assert standalone[group][field] == value
  assert base.meta.prototype  # the base is not modified
  with pytest.raises(ConfigError, match="unknown ablation"):
    ablation.variant_config(base, "no_lstm", tmp_path)


@pytest.mark.slow
def test_ablation_table_on_tiny(tmp_path, load_experiment):
  ablation = load_experiment("ablation")
  base = configuration.from_file(REPO / "configs" / "tiny.py", {
      "optim.num_epochs": 1, "optim.steps_per_epoch": 1, "eval.every_epochs": 0})
  rows = ablation.run(base, tmp_path, ("full", "no_prototype"))
  assert [r["variant"] for r in rows] == ["full", "no_prototype"]
  assert json.loads((tmp_path / "ablation.json").read_text())[1]["variant"] == "no_prototype"
  table = (tmp_path / "ablation.md").read_text()
  assert "| full |" in table and "| no_prototype |" in table
  assert (tmp_path / "no_prototype" / "metrics.json").is_file()
