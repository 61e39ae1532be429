"""Evaluation: every method on the same windows, outputs written, and evaluating the saved
checkpoint reproduces the training run's final metrics exactly. Tiny synthetic setting."""

import json
import pathlib

import numpy as np
import pytest

from metarppg_jax import configuration
from metarppg_jax import evaluate
from metarppg_jax import metrics
from metarppg_jax import reports
from metarppg_jax import train
from metarppg_jax.data import preprocess
from metarppg_jax.data import splits
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
  sources = splits.load(config, tmp_path)
  data = evaluate.load_eval_data(config, sources["test"], "test")
  s, q, t = config.meta.fewshots, config.eval.queries, preprocess.WINDOW
  assert data.x.shape[:3] == (2, s + q, t)
  assert data.rgb.shape == (2, q * t, 3) and data.ppg.shape == (2, q * t)
  sig = evaluate.signals(config, None, data, ("green", "chrom"))
  assert {k: v.shape for k, v in sig.items()} == {"green": (2, q * t), "chrom": (2, q * t)}


def _fake_results(offsets: dict, num_videos=8, num_windows=3, seed=0):
  """{method: {"test": score-like dict}}: each method's HR = truth + its per-video offset."""
  rng = np.random.default_rng(seed)
  true = rng.uniform(60, 110, (num_videos, num_windows))
  ids = np.repeat(np.arange(num_videos), num_windows)
  out = {}
  for method, offset in offsets.items():
    pred = true + np.asarray(offset, np.float64)[:, None]
    out[method] = {"test": {"hr_pred": pred.tolist(), "hr_true": true.tolist(),
                            "mae": 0.0, "video": metrics.video_metrics(pred.ravel(),
                                                                       true.ravel(), ids)}}
  return out


def test_paired_comparisons_and_report_wording(tmp_path, data_dir):
  n = 8
  jitter = 0.01 * np.array([1, -1] * (n // 2))
  results = _fake_results({
      "meta_rppg": np.full(n, 2.0),
      "no_adaptation": 2.0 + jitter,          # adaptation changes a hundredth of a bpm
      "pos": np.linspace(6.0, 9.0, n),        # the best classical method, clearly worse
      "chrom": np.full(n, 15.0),
  })
  data = evaluate.EvalData(x=None, ppg=None, hr=None, rgb=None, fps=30.0, split="test",
                           video_ids=[f"v{i}" for i in range(n)], domain="shifted")
  assert evaluate.best_classical(results, "test") == "pos"
  pairs = evaluate.paired(results, data)
  assert set(pairs) == {"no_adaptation", "pos"}
  adapt, pos = pairs["no_adaptation"], pairs["pos"]
  assert (adapt["a"], adapt["b"], adapt["role"]) == ("meta_rppg", "no_adaptation", "adaptation")
  assert pos["role"] == "best_classical" and pos["videos"] == data.video_ids
  assert adapt["num_videos"] == pos["num_videos"] == n
  np.testing.assert_allclose(pos["errors_b"], np.linspace(6.0, 9.0, n))
  assert adapt["verdict"] == "no_measurable_difference" and pos["verdict"] == "a_better"
  assert adapt["num_resamples"] == evaluate.PAIRED_RESAMPLES
  assert adapt["seed"] == evaluate.PAIRED_SEED
  assert evaluate.paired({m: results[m] for m in ("no_adaptation", "pos")}, data) == {}

  table = {m: {"test": dict(r["test"], snr=1.0, rmse=1.0, mape=1.0, pearson=1.0,
                            num_windows=3 * n)} for m, r in results.items()}
  table["meta_rppg"]["test"]["paired"] = pairs
  text = reports.write_report_md(
      tmp_path / "report.md", table, title="t",
      notes=evaluate._notes(_config(data_dir), table, data, None),
      comparisons=evaluate._comparisons(table, "test")).read_text()
  assert "Transductive adaptation makes no measurable difference on split `test`" in text
  assert "Transductive adaptation helps" not in text
  assert "Meta-rPPG beats POS on split `test`" in text
  ranking = next(line for line in text.splitlines() if line.startswith("Per-video MAE"))
  assert "Meta-rPPG 2.00" in ranking and "no adaptation 2.00" in ranking
  assert ranking.index("POS 7.50") < ranking.index("CHROM 15.00")
  assert "not a verdict" in text
  assert "The classical method Meta-rPPG is paired with, POS, is the one with the lowest" in text


@pytest.mark.slow
def test_evaluate_from_checkpoint_reproduces_training_metrics(tmp_path, data_dir):
  config = _config(data_dir)
  trained = train.train_and_evaluate(config, tmp_path)
  saved = reports.read_metrics_json(tmp_path / "metrics.json")
  assert set(saved) == set(configuration.METHODS)
  report = (tmp_path / "report.md").read_text()
  # 2 test videos: paired comparisons are written, and too few to name a better method.
  pairs = saved["meta_rppg"]["test"]["paired"]
  assert pairs["no_adaptation"]["num_videos"] == 2 and len(pairs) == 2
  assert {p["reason"] for p in pairs.values()} == {"too_few_videos"}
  assert "Transductive adaptation makes no measurable difference on split `test`" in report
  assert "2 videos are too few to tell" in report and "beats" not in report
  assert (tmp_path / "plots" / "training_curves.png").is_file()
  assert list((tmp_path / "plots").glob("heatmap_*.gif"))

  again = evaluate.evaluate(_config(data_dir, mode="evaluate"), tmp_path, plots=False)
  assert json.dumps(again["metrics"], sort_keys=True) == json.dumps(trained["metrics"],
                                                                    sort_keys=True)
  for method in ("meta_rppg", "no_adaptation"):
    a, b = trained["metrics"][method]["test"], saved[method]["test"]
    np.testing.assert_equal(a["mae"], b["mae"])
