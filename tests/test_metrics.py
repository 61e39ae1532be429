"""HR metrics: values, standard errors, per-video aggregation, degenerate inputs."""

import numpy as np
import pytest
from scipy import stats

from metarppg_jax import errors
from metarppg_jax import heart_rate
from metarppg_jax import metrics


def test_hr_metrics_values_and_standard_errors():
  rng = np.random.default_rng(0)
  true = rng.uniform(50, 150, 200)
  pred = true + rng.normal(2.0, 5.0, 200)
  m = metrics.hr_metrics(pred, true)
  assert set(m) == set(metrics.METRIC_KEYS)
  err = pred - true
  assert m["mae"] == pytest.approx(np.mean(np.abs(err)))
  assert m["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)))
  assert m["mape"] == pytest.approx(100 * np.mean(np.abs(err) / true))
  r = stats.pearsonr(pred, true).statistic
  assert m["pearson"] == pytest.approx(r)
  assert m["pearson_se"] == pytest.approx(np.sqrt((1 - r ** 2) / 198))
  assert m["mae_se"] == pytest.approx(stats.sem(np.abs(err)))
  assert m["mape_se"] == pytest.approx(stats.sem(100 * np.abs(err) / true))
  assert m["num_windows"] == 200 and m["num_invalid"] == 0
  # The delta-method RMSE standard error agrees with a (seeded) bootstrap.
  idx = rng.integers(0, 200, (2000, 200))
  boot = np.sqrt(np.mean(err[idx] ** 2, axis=1))
  assert m["rmse_se"] == pytest.approx(np.std(boot), rel=0.15)


def test_hr_metrics_perfect_prediction():
  true = np.array([60.0, 72.0, 90.0, 120.0])
  m = metrics.hr_metrics(true, true)
  assert m["mae"] == m["rmse"] == m["mape"] == 0
  assert m["mae_se"] == m["rmse_se"] == m["mape_se"] == 0
  assert m["pearson"] == pytest.approx(1.0) and m["pearson_se"] == pytest.approx(0.0)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_hr_metrics_few_windows_nan_not_crash(k):
  true = np.array([60.0, 80.0][:k])
  pred = true + 3.0
  m = metrics.hr_metrics(pred, true)
  assert np.isnan(m["pearson"]) and np.isnan(m["pearson_se"])
  assert m["num_windows"] == k
  if k == 0:
    assert all(np.isnan(m[key]) for key in ("mae", "rmse", "mape", "mae_se", "rmse_se"))
  else:
    assert m["mae"] == pytest.approx(3.0) and m["rmse"] == pytest.approx(3.0)
    assert np.isnan(m["mae_se"]) == (k == 1)


def test_hr_metrics_constant_inputs():
  true = np.array([60.0, 75.0, 90.0, 105.0])
  m = metrics.hr_metrics(np.full(4, 80.0), true)        # a constant predictor
  assert np.isnan(m["pearson"]) and np.isnan(m["pearson_se"])
  assert m["mae"] == pytest.approx(np.mean(np.abs(80 - true)))


def test_hr_metrics_drops_invalid_pairs():
  pred = np.array([70.0, np.nan, 90.0, 100.0, np.inf])
  true = np.array([72.0, 80.0, np.nan, 98.0, 60.0])
  m = metrics.hr_metrics(pred, true)
  assert m["num_windows"] == 2 and m["num_invalid"] == 3
  assert m["mae"] == pytest.approx(2.0)


def test_hr_metrics_rejects_bad_inputs():
  with pytest.raises(errors.DataError, match="same length"):
    metrics.hr_metrics(np.ones(3), np.ones(4))
  with pytest.raises(errors.DataError, match="> 0"):
    metrics.hr_metrics(np.ones(3), np.array([60.0, 0.0, 70.0]))


def test_per_video_and_video_metrics():
  ids = np.array(["b", "a", "b", "a", "c", "c"])
  true = np.array([80.0, 60.0, 82.0, 62.0, 100.0, np.nan])
  pred = np.array([85.0, 61.0, 83.0, np.nan, 90.0, 120.0])
  p, t, videos = metrics.per_video(pred, true, ids)
  assert list(videos) == ["a", "b", "c"]
  # Means over the windows valid for both: a -> window 1 only, c -> window 4 only.
  np.testing.assert_allclose(p, [61.0, 84.0, 90.0])
  np.testing.assert_allclose(t, [60.0, 81.0, 100.0])
  m = metrics.video_metrics(pred, true, ids)
  assert m["num_videos"] == 3 and m["num_invalid_videos"] == 0 and "num_windows" not in m
  assert m["mae"] == pytest.approx((1 + 3 + 10) / 3)
  # A video with no valid window is NaN there and invalid in the metrics.
  p, t, _ = metrics.per_video([np.nan, 70.0], [60.0, 70.0], [0, 1])
  assert np.isnan(p[0]) and np.isnan(t[0]) and p[1] == 70.0
  assert metrics.video_metrics([np.nan, 70.0], [60.0, 70.0], [0, 1])["num_invalid_videos"] == 1
  with pytest.raises(errors.DataError, match="video_ids"):
    metrics.per_video(pred, true, ids[:3])


@pytest.mark.parametrize("estimator", ["sound", "reference"])
def test_signal_metrics_end_to_end(estimator):
  rng = np.random.default_rng(1)
  fps, t = 30.0, np.arange(300) / 30.0
  true = rng.uniform(55, 150, 9)
  sig = np.sin(2 * np.pi * true[:, None] / 60 * t) + 0.3 * rng.standard_normal((9, 300))
  sig[4] = 0.0                                      # a flat window: no heart rate
  ids = np.repeat([0, 1, 2], 3)
  summary, pred = metrics.signal_metrics(sig, true, fps, video_ids=ids, estimator=estimator)
  assert pred.shape == (9,)
  want = heart_rate.estimator(estimator)(sig, fps)
  np.testing.assert_array_equal(pred, want)
  assert summary["mae"] == metrics.hr_metrics(pred, true)["mae"]
  if estimator == "sound":
    assert np.isnan(pred[4]) and summary["num_invalid"] == 1 and summary["num_windows"] == 8
    assert summary["mae"] < 0.5
  assert summary["snr"] > 0 and np.isfinite(summary["snr_se"])
  assert summary["video"]["num_videos"] == 3
  with pytest.raises(errors.ConfigError, match="hr_estimator"):
    metrics.signal_metrics(sig, true, fps, estimator="peak")
  with pytest.raises(errors.DataError, match="pred_signals"):
    metrics.signal_metrics(sig[:3], true, fps)
