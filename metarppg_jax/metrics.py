"""Heart-rate error metrics, per window and per video, with standard errors.

One implementation for every method (Meta-rPPG, no adaptation, the classical baselines).
Inputs are heart rates in bpm from `heart_rate.hr_estimate` (or `hr_reference`) and the ground
truth's heart rate on the same windows.

Standard errors (all closed form, so the numbers are reproducible without a seed):
- `mae_se`, `mape_se`: the standard error of a mean, `std(x, ddof=1) / sqrt(K)`.
- `rmse_se`: delta method, `se(MSE) / (2 RMSE)` with `se(MSE) = std(e^2, ddof=1) / sqrt(K)`
  (0 when every error is 0).
- `pearson_se`: `sqrt((1 - r^2) / (K - 2))`.
They treat windows as independent; overlapping windows of one video are not, so per-window
standard errors are optimistic: the per-video metrics are the honest ones.

Degenerate cases are NaN, never an exception: standard errors need K >= 2, Pearson r and its
standard error K >= 3 and neither input constant; with K = 0 every metric is NaN.
Pairs where either heart rate is NaN/inf (a flat or broken window: see `heart_rate`) are left
out and counted in `num_invalid`; `num_windows` counts the pairs used.

`signal_metrics` is the one call an evaluation needs: the heart rate of every window by the
configured estimator, these metrics per window and per video, and the SNR.

`paired_comparison` compares two methods on the same videos: the per-video absolute errors
(`video_abs_errors`) of both, their mean difference with a bootstrap confidence interval
(`scipy.stats.bootstrap`, BCa, seeded) and a Wilcoxon signed-rank test
(`scipy.stats.wilcoxon`). It names a better method only when both agree: the interval excludes
0 and p < alpha; otherwise "no measurable difference", with the reason.
"""

import math

from typing import Sequence

import numpy as np
from scipy import stats

from metarppg_jax import errors
from metarppg_jax import heart_rate

METRIC_KEYS = ("mae", "mae_se", "rmse", "rmse_se", "mape", "mape_se", "pearson", "pearson_se",
               "num_windows", "num_invalid")


def _mean_and_se(x: np.ndarray) -> tuple[float, float]:
  k = x.size
  if k == 0:
    return float("nan"), float("nan")
  se = float(np.std(x, ddof=1) / np.sqrt(k)) if k >= 2 else float("nan")
  return float(np.mean(x)), se


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  if x.size < 3:
    return float("nan")
  with np.errstate(invalid="ignore", divide="ignore"):  # a constant input: r is NaN
    r = np.corrcoef(x, y)[0, 1]
  return float(np.clip(r, -1.0, 1.0))


def _pairs(pred_bpm, true_bpm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  pred = np.asarray(pred_bpm, dtype=np.float64)
  true = np.asarray(true_bpm, dtype=np.float64)
  if pred.ndim != 1 or pred.shape != true.shape:
    raise errors.DataError(
        f"predicted and true heart rates must be 1-D of the same length; got shapes "
        f"{pred.shape} and {true.shape}")
  valid = np.isfinite(pred) & np.isfinite(true)
  if np.any(true[valid] <= 0):
    raise errors.DataError(
        f"true heart rate must be > 0 bpm; got {true[valid][true[valid] <= 0][:5]} at windows "
        f"{np.flatnonzero(valid & (true <= 0))[:5]}")
  return pred, true, valid


def hr_metrics(pred_bpm, true_bpm) -> dict[str, float | int]:
  """MAE, RMSE (bpm), MAPE (%), Pearson r, their standard errors and counts.

  Args:
    pred_bpm: f[K] predicted heart rates.
    true_bpm: f[K] ground-truth heart rates (> 0 where finite).

  Returns:
    {key: value} with the keys of `METRIC_KEYS` (floats; counts as ints); see the module
    docstring for the standard errors and the NaN cases.
  """
  pred, true, valid = _pairs(pred_bpm, true_bpm)
  p, t = pred[valid], true[valid]
  err = p - t
  mae, mae_se = _mean_and_se(np.abs(err))
  mse, mse_se = _mean_and_se(err * err)
  rmse = float(np.sqrt(mse))
  # Delta method; a perfect prediction (RMSE 0, so se(MSE) 0 too) has standard error 0.
  rmse_se = mse_se / (2 * rmse) if rmse > 0 else (0.0 if np.isfinite(mse_se) else mse_se)
  mape, mape_se = _mean_and_se(100.0 * np.abs(err) / t)
  r = _pearson(p, t)
  r_se = float(np.sqrt((1 - r * r) / (p.size - 2))) if np.isfinite(r) else float("nan")
  return {
      "mae": mae, "mae_se": mae_se, "rmse": rmse, "rmse_se": float(rmse_se),
      "mape": mape, "mape_se": mape_se, "pearson": r, "pearson_se": r_se,
      "num_windows": int(p.size), "num_invalid": int(pred.size - p.size),
  }


def per_video(pred_bpm, true_bpm, video_ids: Sequence) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
  """Mean heart rate per video, over the windows valid for both (finite pred and truth).

  Args:
    pred_bpm, true_bpm: f[K] per-window heart rates.
    video_ids: [K] any hashable/sortable labels (ints or strings), the video of each window.

  Returns:
    (pred f64[V], true f64[V], videos [V]) in sorted order of the ids; a video without a valid
    window gets NaN (and is counted invalid by `hr_metrics`).
  """
  pred, true, valid = _pairs(pred_bpm, true_bpm)
  ids = np.asarray(video_ids)
  if ids.shape != pred.shape:
    raise errors.DataError(f"video_ids has shape {ids.shape}; expected {pred.shape}")
  videos, inverse = np.unique(ids, return_inverse=True)
  count = np.bincount(inverse, weights=valid.astype(np.float64), minlength=videos.size)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = lambda x: np.bincount(inverse, weights=np.where(valid, x, 0.0),
                                 minlength=videos.size) / count
    return mean(pred), mean(true), videos


def video_metrics(pred_bpm, true_bpm, video_ids: Sequence) -> dict[str, float | int]:
  """`hr_metrics` of the per-video mean heart rates (`per_video`).

  The same keys, except that `num_windows` / `num_invalid` become `num_videos` /
  `num_invalid_videos` (videos with no valid window).
  """
  pred, true, _ = per_video(pred_bpm, true_bpm, video_ids)
  out = hr_metrics(pred, true)
  out["num_videos"] = out.pop("num_windows")
  out["num_invalid_videos"] = out.pop("num_invalid")
  return out


def signal_metrics(pred_signals, true_bpm, fps: float, *, video_ids: Sequence | None = None,
                   estimator: str = "sound") -> tuple[dict, np.ndarray]:
  """Metrics of rPPG signals on windows against the true heart rates of the same windows.

  Args:
    pred_signals: f[K, n] the method's signal on each window (model: `heart_rate.
      levels_to_signal`; classical: `baselines.rppg_signal` cut into the same windows).
    true_bpm: f[K] ground-truth heart rate of each window (from the reference PPG by the same
      estimator, or the dataset's own HR).
    fps: frame rate.
    video_ids: [K] the video of each window; adds a "video" dict (`video_metrics`).
    estimator: "sound" (`heart_rate.hr_estimate`) or "reference" (the original `get_bpm`).

  Returns:
    (summary, pred_bpm f64[K]): summary has `hr_metrics`' keys plus `snr` (mean dB over the
    windows with a finite SNR, `heart_rate.snr` at the true HR), `snr_se`, and "video" if
    `video_ids` is given: ready for `reports.write_metrics_json` as one split of a method.
  """
  sig = np.asarray(pred_signals)
  true = np.asarray(true_bpm, dtype=np.float64)
  if sig.ndim != 2 or sig.shape[0] != true.shape[0]:
    raise errors.DataError(
        f"pred_signals must be f[K, n] with K = len(true_bpm) = {true.shape[0]}; got shape "
        f"{sig.shape}")
  pred = heart_rate.estimator(estimator)(sig, fps)
  summary = hr_metrics(pred, true)
  snr_db = heart_rate.snr(sig, fps, true)
  snr_db = snr_db[np.isfinite(snr_db)]
  summary["snr"], summary["snr_se"] = _mean_and_se(snr_db)
  if video_ids is not None:
    summary["video"] = video_metrics(pred, true, video_ids)
  return summary, pred


# --------------------------------------------------------------------------------------------
# Paired comparison of two methods over videos.
# --------------------------------------------------------------------------------------------

VERDICTS = ("a_better", "b_better", "no_measurable_difference")
# Why no better method is named: the interval holds 0; the interval excludes 0 but the
# signed-rank test does not reach alpha; too few videos for the test to ever reach alpha;
# every video has the same error under both methods.
REASONS = ("", "ci_includes_zero", "not_significant", "too_few_videos", "all_equal")
# Per-video errors closer than this (bpm) are equal: float rounding, not a difference.
_EQUAL_BPM = 1e-9


def video_abs_errors(pred_bpm, true_bpm, video_ids: Sequence) -> np.ndarray:
  """|mean predicted - mean true HR| of each video: f64[V] in `per_video`'s order (NaN for a
  video with no valid window). Their mean is `video_metrics`' MAE."""
  pred, true, _ = per_video(pred_bpm, true_bpm, video_ids)
  return np.abs(pred - true)


def min_paired_videos(alpha: float) -> int:
  """The fewest pairs with which an exact two-sided signed-rank test can reach p < alpha.

  With n pairs its smallest p-value is 2 / 2^n (every difference of one sign), so n must
  exceed 1 - log2(alpha): 6 for alpha = 0.05.
  """
  return math.floor(1 - math.log2(alpha)) + 1


def paired_comparison(err_a, err_b, *, confidence: float = 0.95, num_resamples: int = 10_000,
                      seed: int = 0) -> dict:
  """Compares methods A and B by their absolute errors on the same videos.

  The difference of video i is d_i = err_a[i] - err_b[i] (negative: A is closer to the truth).
  Videos where either error is NaN are left out. The confidence interval is a BCa bootstrap of
  mean(d) (`scipy.stats.bootstrap`, `num_resamples` resamples drawn by
  `np.random.default_rng(seed)`); when every d_i is the same value c the bootstrap is
  degenerate and the interval is [c, c]; with fewer than 2 videos it is NaN. The p-value is
  the two-sided Wilcoxon signed-rank test of d (`scipy.stats.wilcoxon`, zero differences
  dropped); it is 1.0 when every d_i is 0 and NaN with no video. Differences within 1e-9 bpm
  count as 0 (float rounding of equal errors).

  A better method is named only when the interval excludes 0, p < alpha = 1 - confidence and
  there are at least `min_paired_videos(alpha)` videos; the direction is the sign of mean(d).

  Args:
    err_a, err_b: f[V] per-video absolute errors (bpm) of A and B (`video_abs_errors`).
    confidence: the interval's level; alpha = 1 - confidence for the test.
    num_resamples: bootstrap resamples.
    seed: the bootstrap's seed (the same inputs and seed give the same interval).

  Returns:
    {"num_videos": pairs used, "num_invalid_videos": pairs left out, "mae_a", "mae_b": mean
    errors over the pairs used, "mean_diff": mae_a - mae_b, "ci_low", "ci_high", "confidence",
    "num_resamples", "seed", "wilcoxon_p", "alpha", "min_videos", "verdict": one of
    `VERDICTS`, "reason": one of `REASONS` ("" when a better method is named), "errors_a",
    "errors_b": the per-video errors as given (lists, NaN kept)}.
  """
  a = np.asarray(err_a, dtype=np.float64)
  b = np.asarray(err_b, dtype=np.float64)
  if a.ndim != 1 or a.shape != b.shape:
    raise errors.DataError(f"per-video errors must be 1-D of the same length; got shapes "
                           f"{a.shape} and {b.shape}")
  if not 0 < confidence < 1:
    raise errors.ConfigError(f"confidence={confidence}: must be in (0, 1)")
  if num_resamples < 1:
    raise errors.ConfigError(f"num_resamples={num_resamples}: must be >= 1")
  alpha = round(1.0 - confidence, 12)           # 0.05, not 0.050000000000000044
  min_videos = min_paired_videos(alpha)
  valid = np.isfinite(a) & np.isfinite(b)
  d = a[valid] - b[valid]
  d = np.where(np.abs(d) <= _EQUAL_BPM, 0.0, d)
  n = int(d.size)
  nan = float("nan")
  ci_low = ci_high = p = nan
  if n >= 1 and not np.any(d):
    ci_low = ci_high = 0.0
    p = 1.0
  elif n >= 1:
    if n >= 2 and np.ptp(d) <= _EQUAL_BPM:         # one value: every resample mean is it
      ci_low = ci_high = float(np.mean(d))
    elif n >= 2:
      ci = stats.bootstrap((d,), np.mean, n_resamples=num_resamples, method="BCa",
                           confidence_level=confidence,
                           rng=np.random.default_rng(seed)).confidence_interval
      ci_low, ci_high = float(ci.low), float(ci.high)
    p = float(stats.wilcoxon(d).pvalue)
  mean_diff = float(np.mean(d)) if n else nan
  if n and not np.any(d):
    reason = "all_equal"
  elif n < min_videos:
    reason = "too_few_videos"
  elif not (ci_low > 0 or ci_high < 0):
    reason = "ci_includes_zero"
  elif not p < alpha:
    reason = "not_significant"
  else:
    reason = ""
  verdict = ("no_measurable_difference" if reason else
             "a_better" if mean_diff < 0 else "b_better")
  return {
      "num_videos": n, "num_invalid_videos": int(a.size - n),
      "mae_a": float(np.mean(a[valid])) if n else nan,
      "mae_b": float(np.mean(b[valid])) if n else nan,
      "mean_diff": mean_diff, "ci_low": ci_low, "ci_high": ci_high,
      "confidence": float(confidence), "num_resamples": int(num_resamples), "seed": int(seed),
      "wilcoxon_p": p, "alpha": float(alpha), "min_videos": min_videos,
      "verdict": verdict, "reason": reason,
      "errors_a": a.tolist(), "errors_b": b.tolist(),
  }
