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


# --------------------------------------------------------------------------------------------
# Paired comparison over videos.
# --------------------------------------------------------------------------------------------

def _errors(n, seed=0):
  return np.random.default_rng(seed).uniform(1.0, 15.0, n)


def test_video_abs_errors_mean_is_video_mae():
  ids = np.array([0, 0, 1, 1, 2, 2])
  true = np.array([60.0, 62.0, 80.0, 80.0, 100.0, 104.0])
  pred = np.array([64.0, 66.0, 70.0, 74.0, np.nan, 100.0])
  err = metrics.video_abs_errors(pred, true, ids)
  np.testing.assert_allclose(err, [4.0, 8.0, 4.0])
  assert np.mean(err) == pytest.approx(metrics.video_metrics(pred, true, ids)["mae"])


def test_paired_identical_errors_no_measurable_difference():
  err = _errors(12)
  p = metrics.paired_comparison(err, err.copy())
  assert p["num_videos"] == 12 and p["num_invalid_videos"] == 0
  assert p["mean_diff"] == 0.0 and p["ci_low"] == 0.0 and p["ci_high"] == 0.0
  assert p["wilcoxon_p"] == 1.0
  assert p["verdict"] == "no_measurable_difference" and p["reason"] == "all_equal"
  assert p["errors_a"] == err.tolist() and p["errors_b"] == err.tolist()


@pytest.mark.parametrize("shift", [-2.0, 2.0])
def test_paired_constant_shift_excludes_zero(shift):
  err = _errors(10)
  p = metrics.paired_comparison(err + shift, err)
  assert p["mean_diff"] == pytest.approx(shift)
  assert p["ci_low"] == pytest.approx(shift) and p["ci_high"] == pytest.approx(shift)
  assert p["wilcoxon_p"] == pytest.approx(2 / 2 ** 10)       # exact: every sign the same
  assert p["verdict"] == ("a_better" if shift < 0 else "b_better") and p["reason"] == ""
  assert p["mae_a"] - p["mae_b"] == pytest.approx(shift)


def test_paired_noisy_shift_matches_scipy_and_is_seeded():
  rng = np.random.default_rng(3)
  b = _errors(20, seed=1)
  a = b - 3.0 + rng.normal(0, 1.0, 20)                       # A clearly better
  p = metrics.paired_comparison(a, b, seed=7)
  d = a - b
  assert p["mean_diff"] == pytest.approx(np.mean(d))
  assert p["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d).pvalue)
  want = stats.bootstrap((d,), np.mean, n_resamples=10_000, method="BCa",
                         rng=np.random.default_rng(7)).confidence_interval
  assert (p["ci_low"], p["ci_high"]) == pytest.approx((want.low, want.high))
  assert p["ci_low"] < np.mean(d) < p["ci_high"] < 0
  assert p["verdict"] == "a_better"
  again = metrics.paired_comparison(a, b, seed=7)
  assert (again["ci_low"], again["ci_high"]) == (p["ci_low"], p["ci_high"])
  other = metrics.paired_comparison(a, b, seed=8)
  assert (other["ci_low"], other["ci_high"]) != (p["ci_low"], p["ci_high"])


def test_paired_noise_only_ci_includes_zero():
  rng = np.random.default_rng(4)
  b = _errors(12, seed=2)
  a = b + rng.normal(0, 3.0, 12) * np.array([1, -1] * 6)     # no systematic difference
  p = metrics.paired_comparison(a, b)
  assert p["ci_low"] < 0 < p["ci_high"]
  assert p["verdict"] == "no_measurable_difference" and p["reason"] == "ci_includes_zero"


def test_paired_interval_alone_is_not_enough():
  # 6 videos, 5 better by 1-5 bpm and 1 worse by 1: the bootstrap interval of the mean excludes
  # 0 but the exact signed-rank p is 2 * 3 / 64 = 0.094, so no better method is named.
  d = np.array([-1.0, -2.0, -3.0, -4.0, -5.0, 1.0])
  b = _errors(6)
  p = metrics.paired_comparison(b + d, b)
  assert p["ci_high"] < 0 and p["wilcoxon_p"] == pytest.approx(6 / 64)
  assert p["verdict"] == "no_measurable_difference" and p["reason"] == "not_significant"


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_paired_too_few_videos(n):
  err = _errors(n)
  p = metrics.paired_comparison(err - 3.0, err)              # every video better by 3 bpm
  assert p["num_videos"] == n and p["min_videos"] == 6
  assert p["verdict"] == "no_measurable_difference" and p["reason"] == "too_few_videos"
  assert np.isnan(p["ci_low"]) == (n < 2) and np.isnan(p["wilcoxon_p"]) == (n == 0)
  if n >= 2:
    assert p["ci_low"] == pytest.approx(-3.0) and p["wilcoxon_p"] == pytest.approx(2 / 2 ** n)


def test_paired_drops_nan_videos_and_rejects_bad_inputs():
  err = _errors(8)
  a = (err - 2.0).copy()
  a[3] = np.nan
  b = err.copy()
  b[5] = np.nan
  p = metrics.paired_comparison(a, b)
  assert p["num_videos"] == 6 and p["num_invalid_videos"] == 2
  assert p["mae_b"] == pytest.approx(np.mean(np.delete(err, [3, 5])))
  assert np.isnan(p["errors_a"][3]) and len(p["errors_b"]) == 8
  with pytest.raises(errors.DataError, match="same length"):
    metrics.paired_comparison(err, err[:3])
  with pytest.raises(errors.ConfigError, match="confidence"):
    metrics.paired_comparison(err, err, confidence=1.0)


def test_min_paired_videos():
  assert metrics.min_paired_videos(0.05) == 6           # 2 / 2**6 = 0.031 < 0.05 <= 2 / 2**5
  assert metrics.min_paired_videos(0.01) == 8           # 2 / 2**8 = 0.0078 < 0.01 <= 2 / 2**7
  for alpha in (0.05, 0.01, 0.1):
    n = metrics.min_paired_videos(alpha)
    assert 2 / 2 ** n < alpha <= 2 / 2 ** (n - 1)
