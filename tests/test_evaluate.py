"""Evaluation: every method on the same windows, outputs written, and evaluating the saved
checkpoint reproduces the training run's final metrics exactly. Tiny synthetic setting."""

import json
import pathlib

import numpy as np
import pytest

from metarppg_jax import configuration
from metarppg_jax import evaluate
from metarppg_jax import reports
from metarppg_jax import train
from metarppg_jax.errors import CheckpointError

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _config(data_dir, **overrides):
  return configuration.from_file(CONFIGS / "tiny.py", {"data.data_dir": data_dir, **overrides})


def test_classical_methods_need_no_checkpoint(tmp_path, data_dir):
  config = _config(data_dir, mode="evaluate", method="pos")
  results = evaluate.evaluate(config, tmp_path)
  assert list(results["metrics"]) == ["pos"]
  m = results["metrics"]["pos"]["test"]
  for key in reports.REQUIRED_KEYS:
    assert key in m
  # 2 test videos x 2 query windows of 2 s -> 4 s of signal: one 4 s window each.
  assert m["num_windows"] + m["num_invalid"] == 2
  assert (tmp_path / "metrics.json").is_file() and (tmp_path / "report.md").is_file()
  assert (tmp_path / "plots" / "bland_altman_pos_video.png").is_file()


def test_learned_method_without_checkpoint_is_a_clear_error(tmp_path, data_dir):
  config = _config(data_dir, mode="evaluate", method="no_adaptation")
  with pytest.raises(CheckpointError, match="no checkpoint to evaluate; train first"):
    evaluate.evaluate(config, tmp_path)


def test_same_windows_for_every_method(data_dir, tmp_path):
  config = _config(data_dir)
  sources = evaluate.load_splits(config, tmp_path)
  data = evaluate.load_eval_data(config, sources["test"], "test")
  s, q, t = config.meta.fewshots, config.eval.queries, config.data.window
  assert data.x.shape[:3] == (2, s + q, t)
  assert data.rgb.shape == (2, q * t, 3) and data.ppg.shape == (2, q * t)
  sig = evaluate.signals(config, None, data, ("green", "chrom"))
  assert {k: v.shape for k, v in sig.items()} == {"green": (2, q * t), "chrom": (2, q * t)}


@pytest.mark.slow
def test_evaluate_from_checkpoint_reproduces_training_metrics(tmp_path, data_dir):
  config = _config(data_dir)
  trained = train.train_and_evaluate(config, tmp_path)
  saved = reports.read_metrics_json(tmp_path / "metrics.json")
  assert set(saved) == set(configuration.METHODS)
  report = (tmp_path / "report.md").read_text()
  assert "has the lowest MAE here" in report
  assert (tmp_path / "plots" / "training_curves.png").is_file()
  assert list((tmp_path / "plots").glob("heatmap_*.gif"))

  again = evaluate.evaluate(_config(data_dir, mode="evaluate"), tmp_path, plots=False)
  assert json.dumps(again["metrics"], sort_keys=True) == json.dumps(trained["metrics"],
                                                                    sort_keys=True)
  for method in ("meta_rppg", "no_adaptation"):
    a, b = trained["metrics"][method]["test"], saved[method]["test"]
    np.testing.assert_equal(a["mae"], b["mae"])
