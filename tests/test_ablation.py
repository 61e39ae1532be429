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
  rows = ablation.run(base, tmp_path / "runs", ("full", "end_to_end"), seeds=(0, 1),
                      results=tmp_path / "results")
  assert [(r["variant"], r["seed"]) for r in rows] == [
      ("full", 0), ("full", 1), ("end_to_end", 0), ("end_to_end", 1)]
  saved = json.loads((tmp_path / "results" / "ablation.json").read_text())
  full, end_to_end = saved["summary"]
  assert full["seeds"] == [0, 1] and full["evaluated"] == "meta_rppg"
  maes = [r["video_mae"] for r in rows[:2]]
  assert full["video_mae"] == pytest.approx(sum(maes) / 2)
  assert full["video_mae_sd"] == pytest.approx(abs(maes[0] - maes[1]) / 2 ** 0.5)
  assert full["gain"] == pytest.approx(sum(r["gain"]["mean_diff"] for r in rows[:2]) / 2)
  assert end_to_end["evaluated"] == "no_adaptation" and rows[2]["gain"] is None
  table = (tmp_path / "results" / "ablation.md").read_text()
  assert "| full | 2 |" in table and "| end_to_end | 2 |" in table
  assert (tmp_path / "runs" / "end_to_end" / "seed1" / "metrics.json").is_file()


def test_summary_of_seeds(load_experiment):
  ablation = load_experiment("ablation")
  gain = {"mean_diff": -1.0, "ci_low": -2.0, "ci_high": -0.5, "wilcoxon_p": 0.03,
          "verdict": "a_better"}
  rows = [{"variant": "full", "seed": k, "evaluated": "meta_rppg", "video_mae": m,
           "video_mae_no_adaptation": m + 1, "window_mae": m, "pearson": 0.5,
           "num_videos": 6, "gain": dict(gain, ci_high=ci_high)}
          for k, (m, ci_high) in enumerate([(2.0, -0.5), (4.0, 0.5), (6.0, -0.1)])]
  (line,) = ablation.summarise(rows)
  assert line["video_mae"] == 4.0 and line["video_mae_sd"] == 2.0
  assert line["gain"] == -1.0 and line["gain_sd"] == 0.0
  assert line["gain_ci_excludes_0"] == 2
  assert "4.00 ± 2.00" in ablation.table_md([line], "test", "synthetic_rppg")


def test_combine_merges_runs_split_over_processes(tmp_path, load_experiment):
  ablation = load_experiment("ablation")
  def row(variant, seed, mae):
    return {"variant": variant, "seed": seed, "evaluated": "meta_rppg", "video_mae": mae,
            "video_mae_no_adaptation": mae, "window_mae": mae, "pearson": 0.5,
            "num_videos": 6, "gain": None}
  for name, rows in {"a": [row("end_to_end", 0, 3.0)],
                     "b": [row("full", 1, 2.0), row("full", 0, 4.0)]}.items():
    ablation.write_table(rows, tmp_path / name, "test", "synthetic_rppg")
  merged = ablation.combine([tmp_path / "a" / "ablation.json", tmp_path / "b" / "ablation.json"],
                            tmp_path / "all")
  assert [(r["variant"], r["seed"]) for r in merged] == [
      ("full", 0), ("full", 1), ("end_to_end", 0)]
  saved = json.loads((tmp_path / "all" / "ablation.json").read_text())
  assert [s["variant"] for s in saved["summary"]] == ["full", "end_to_end"]
  ablation.write_table([row("full", 2, 1.0)], tmp_path / "c", "validation", "synthetic_rppg")
  with pytest.raises(configuration.ConfigError, match="different splits"):
    ablation.combine([tmp_path / "a" / "ablation.json", tmp_path / "c" / "ablation.json"],
                     tmp_path / "bad")
