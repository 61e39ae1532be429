"""What an evaluation leaves in the workdir: metrics.json, report.md, plots, heat-map GIFs.

- `write_metrics_json` / `read_metrics_json`: `{method: {split: {metric: value}}}`, keys sorted,
  NaN/inf written as null (strict JSON) and read back as NaN.
- `write_report_md`: title, notes, one comparison table a split (methods as rows; per-video
  metrics first, per-window after), the paired comparisons over videos with their verdict
  sentences (`comparison_sentence`), figures; `results_table`: one split's table alone.
- Plots (PNG): `plot_signal`, `plot_spectrum`, `plot_bland_altman`, `plot_training_curves`.
- `heatmap_animation`: the original README's visualisation as an animated GIF (blitted frames,
  one shared palette: seconds, not minutes, for a 10 s video).

Figures are drawn with matplotlib's object API on the Agg canvas (`matplotlib.figure.Figure`),
so nothing here touches pyplot's global state or needs a display. Every writer creates the
parent directory and writes through a temporary file, so a crash never leaves a half file.
"""

import json
import math
import os
import pathlib
from typing import Any, Iterable, Mapping, NamedTuple, Sequence
import uuid

import matplotlib
from matplotlib import figure as mpl_figure
from matplotlib.backends import backend_agg
import numpy as np
from PIL import Image

from metarppg_jax import errors
from metarppg_jax import heart_rate

PathLike = str | os.PathLike
REQUIRED_KEYS = ("mae", "rmse", "mape", "pearson", "snr", "num_windows")

# Report table columns: (header, value key, standard-error key or None, format).
_COLUMNS = (
    ("MAE (bpm)", "mae", "mae_se", "{:.2f}"),
    ("RMSE (bpm)", "rmse", "rmse_se", "{:.2f}"),
    ("MAPE (%)", "mape", "mape_se", "{:.2f}"),
    ("Pearson r", "pearson", "pearson_se", "{:.3f}"),
    ("SNR (dB)", "snr", None, "{:.2f}"),
    ("windows", "num_windows", None, "{:d}"),
)
# With per-video metrics: these first (the windows of one video are not independent, so
# only the videos are independent samples), then the per-window ones.
_VIDEO_COLUMNS = (
    ("MAE (bpm)", "mae", "mae_se", "{:.2f}"),
    ("RMSE (bpm)", "rmse", "rmse_se", "{:.2f}"),
    ("MAPE (%)", "mape", "mape_se", "{:.2f}"),
    ("Pearson r", "pearson", "pearson_se", "{:.3f}"),
    ("videos", "num_videos", None, "{:d}"),
)
_WINDOW_COLUMNS = (
    ("MAE per window (bpm)", "mae", "mae_se", "{:.2f}"),
    ("r per window", "pearson", "pearson_se", "{:.3f}"),
    ("SNR (dB)", "snr", None, "{:.2f}"),
    ("windows", "num_windows", None, "{:d}"),
)


class Comparison(NamedTuple):
  """A paired comparison to report.

  split: the split it was computed on; a, b: the two methods' display names; stats:
  `metrics.paired_comparison` of a's and b's per-video errors; subject: what a against b
  measures (e.g. "Transductive adaptation" for adapted against not adapted): the verdict then
  says whether it helps or hurts; None: which method beats which.
  """
  split: str
  a: str
  b: str
  stats: Mapping
  subject: str | None = None


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def _write_atomic(path: PathLike, write) -> pathlib.Path:
  """Calls write(tmp_path) and moves the result to `path` (parents created)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # Same directory (os.replace stays atomic), same suffix (writers infer the format from it);
  # created by the writer itself, so it gets the user's usual permissions.
  tmp = str(path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{path.suffix}"))
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def _to_json(x: Any, where: str) -> Any:
  """Plain JSON values: numpy/jax scalars and arrays to Python, NaN/inf to None."""
  if isinstance(x, Mapping):
    return {str(k): _to_json(v, f"{where}/{k}") for k, v in x.items()}
  if isinstance(x, (str, bool)) or x is None:
    return x
  if hasattr(x, "__array__") and not isinstance(x, np.ndarray):     # jax arrays
    x = np.asarray(x)
  if isinstance(x, np.ndarray) and x.ndim == 0:
    x = x[()]
  if isinstance(x, (list, tuple, np.ndarray)):
    return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(np.asarray(x).tolist()
                                                             if isinstance(x, np.ndarray) else x)]
  if isinstance(x, (np.bool_,)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  raise errors.DataError(f"metrics value at {where} has type {type(x).__name__}; expected a "
                         "number, string, list or dict")


def _check_results(results: Mapping) -> None:
  for method, splits in results.items():
    if not isinstance(splits, Mapping):
      raise errors.DataError(f"results[{method!r}] must be a dict split -> metrics")
    for split, values in splits.items():
      missing = [k for k in REQUIRED_KEYS if not isinstance(values, Mapping) or k not in values]
      if missing:
        raise errors.DataError(f"results[{method!r}][{split!r}] lacks the keys {missing}")


def write_metrics_json(path: PathLike, results: Mapping[str, Mapping[str, Mapping]]
                       ) -> pathlib.Path:
  """Writes `{method: {split: {metric: value, ...}}}` as strict JSON (sorted keys).

  Each split's dict needs at least `REQUIRED_KEYS` (mae, rmse, mape, pearson, snr,
  num_windows); any further keys (standard errors, a nested "video" dict from
  `metrics.video_metrics`, ...) are written too. NaN and inf become null.
  """
  _check_results(results)
  text = json.dumps(_to_json(results, "results"), indent=2, sort_keys=True, allow_nan=False)
  return _write_atomic(path, lambda tmp: pathlib.Path(tmp).write_text(text + "\n"))


def read_metrics_json(path: PathLike) -> dict:
  """The dict `write_metrics_json` wrote, with null read back as NaN."""
  def nan_for_null(x):
    if isinstance(x, dict):
      return {k: nan_for_null(v) for k, v in x.items()}
    if isinstance(x, list):
      return [nan_for_null(v) for v in x]
    return float("nan") if x is None else x
  try:
    return nan_for_null(json.loads(pathlib.Path(path).read_text()))
  except (OSError, json.JSONDecodeError) as e:
    raise errors.DataError(f"cannot read metrics file {path}: {e}") from e


def _cell(values: Mapping, key: str, se_key: str | None, fmt: str) -> str:
  v = values.get(key)
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "n/a"
  text = fmt.format(int(v) if fmt == "{:d}" else float(v))
  se = values.get(se_key) if se_key else None
  if se is not None and isinstance(se, (int, float)) and math.isfinite(se):
    text += " ± " + fmt.format(float(se))
  return text


def _num(x, fmt: str = "{:.2f}") -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "n/a"
  return fmt.format(x)


def _reason(stats: Mapping) -> str:
  """Why a comparison names no better method, in words."""
  reason, alpha = stats["reason"], stats["alpha"]
  if reason == "ci_includes_zero":
    return f"the {100 * stats['confidence']:g} % interval includes 0"
  if reason == "not_significant":
    return (f"the interval excludes 0 but the signed-rank test does not support it "
            f"(p >= {alpha:g})")
  if reason == "too_few_videos":
    return (f"{stats['num_videos']} videos are too few to tell (a two-sided signed-rank test "
            f"needs at least {stats['min_videos']} to reach p < {alpha:g})")
  if reason == "all_equal":
    return "every video has the same error with both"
  raise errors.DataError(f"paired comparison has an unknown reason {reason!r}")


def _paired_numbers(stats: Mapping) -> str:
  return (f"per-video MAE {_num(stats['mae_a'])} vs {_num(stats['mae_b'])} bpm over "
          f"{stats['num_videos']} videos, difference {_num(stats['mean_diff'], '{:+.2f}')} bpm "
          f"({100 * stats['confidence']:g} % CI [{_num(stats['ci_low'], '{:+.2f}')}, "
          f"{_num(stats['ci_high'], '{:+.2f}')}], Wilcoxon signed-rank "
          f"p = {_num(stats['wilcoxon_p'], '{:.3g}')})")


def comparison_sentence(c: Comparison) -> str:
  """The verdict of a paired comparison in words, with its numbers.

  A direction ("helps"/"hurts" with a subject, "A beats B" without) only for the verdicts
  "a_better"/"b_better" of `metrics.paired_comparison`; otherwise "no measurable difference"
  and the reason.
  """
  verdict, numbers = c.stats["verdict"], _paired_numbers(c.stats)
  where = f"on split `{c.split}`"
  if verdict == "a_better":
    return (f"{c.subject} helps {where}" if c.subject else
            f"{c.a} beats {c.b} {where}") + f": {numbers}."
  if verdict == "b_better":
    return (f"{c.subject} hurts {where}" if c.subject else
            f"{c.b} beats {c.a} {where}") + f": {numbers}."
  if verdict != "no_measurable_difference":
    raise errors.DataError(f"paired comparison of {c.a} and {c.b} has an unknown verdict "
                           f"{verdict!r}")
  head = (f"{c.subject} makes no measurable difference {where}" if c.subject else
          f"No measurable difference between {c.a} and {c.b} {where}")
  return f"{head}: {numbers}; {_reason(c.stats)}."


def _comparison_lines(comparisons: Sequence[Comparison]) -> list[str]:
  """The paired table of one split and a verdict sentence a comparison."""
  first = comparisons[0].stats
  lines = [f"Paired over videos (difference = first - second per-video absolute error, "
           f"negative: the first is closer; {100 * first['confidence']:g} % BCa bootstrap "
           f"interval of the mean difference, {first['num_resamples']} resamples, seed "
           f"{first['seed']}; two-sided Wilcoxon signed-rank test; a method is called better "
           f"only when the interval excludes 0 and p < {first['alpha']:g}):", "",
           "| first | second | videos | MAE first (bpm) | MAE second (bpm) | difference (bpm) "
           f"| {100 * first['confidence']:g} % CI | Wilcoxon p | verdict |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|"]
  sentences = [comparison_sentence(c) for c in comparisons]   # unknown verdicts raise here
  for c in comparisons:
    s = c.stats
    verdict = {"a_better": f"{c.a} better", "b_better": f"{c.b} better"}.get(
        s["verdict"], "no measurable difference")
    lines.append(
        f"| {c.a} | {c.b} | {s['num_videos']} | {_num(s['mae_a'])} | {_num(s['mae_b'])} | "
        f"{_num(s['mean_diff'], '{:+.2f}')} | [{_num(s['ci_low'], '{:+.2f}')}, "
        f"{_num(s['ci_high'], '{:+.2f}')}] | {_num(s['wilcoxon_p'], '{:.3g}')} | "
        f"{verdict} |")
  lines.append("")
  for sentence in sentences:
    lines += [sentence, ""]
  return lines


def results_table(results: Mapping[str, Mapping[str, Mapping]], split: str) -> list[str]:
  """The Markdown table of one split, a line each (the report's, and main's console): methods
  as rows, columns as `write_report_md` describes them, the lowest first MAE in bold."""
  rows = [(m, r[split]) for m, r in results.items() if split in r]
  with_video = any(isinstance(v.get("video"), Mapping) for _, v in rows)
  # (columns, where their values are) in order: per video first when there is a per-video
  # dict, per window after it.
  video_of = lambda v: v["video"] if isinstance(v.get("video"), Mapping) else {}
  groups = ([(_VIDEO_COLUMNS, video_of), (_WINDOW_COLUMNS, lambda v: v)] if with_video
            else [(_COLUMNS, lambda v: v)])
  header = ["method"] + [c[0] for cols, _ in groups for c in cols]
  primary = [groups[0][1](v).get("mae") for _, v in rows]
  maes = [math.nan if m is None else float(m) for m in primary]
  best = np.nanargmin(maes) if np.any(np.isfinite(maes)) else -1
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  for i, (method, values) in enumerate(rows):
    cells = [_cell(where(values), *c[1:]) for cols, where in groups for c in cols]
    if i == best:
      cells[0] = f"**{cells[0]}**"
    lines.append("| " + " | ".join([method] + cells) + " |")
  return lines


def write_report_md(path: PathLike, results: Mapping[str, Mapping[str, Mapping]], *,
                    title: str, notes: str | Sequence[str] = (),
                    comparisons: Sequence[Comparison] = (),
                    figures: Mapping[str, PathLike] | Sequence[tuple[str, PathLike]] = ()
                    ) -> pathlib.Path:
  """Writes a Markdown report: title, notes, a table and the paired comparisons a split, figures.

  Args:
    path: the report file (e.g. WORKDIR/report.md).
    results: as for `write_metrics_json`. Rows are methods (in the dict's order). When the
      split's dicts have a "video" dict (`metrics.video_metrics`), its MAE, RMSE, MAPE,
      Pearson r (± standard error over videos) and number of videos come first, then the
      per-window MAE, r, SNR and number of windows; without one, the per-window MAE, RMSE,
      MAPE, r, SNR and windows. The lowest MAE of the first column is in bold. Values that are
      NaN/None print as "n/a".
    title: the report's heading.
    notes: paragraphs (e.g. the setting).
    comparisons: paired comparisons over videos; those of a split follow its table, as a
      table and one verdict sentence each (`comparison_sentence`).
    figures: caption -> image path (or (caption, path) pairs); paths are written relative to
      the report's directory.
  """
  _check_results(results)
  path = pathlib.Path(path)
  notes = [notes] if isinstance(notes, str) else list(notes)
  figures = list(figures.items()) if isinstance(figures, Mapping) else list(figures)
  splits = list(dict.fromkeys(s for per_method in results.values() for s in per_method))
  orphans = sorted({c.split for c in comparisons} - set(splits))
  if orphans:
    raise errors.DataError(f"paired comparisons of the splits {orphans} have no results "
                           f"(results have {splits})")
  lines = [f"# {title}", ""]
  for note in notes:
    lines += [note, ""]
  for split in splits:
    lines += [f"## {split}", ""]
    if any(isinstance(r[split].get("video"), Mapping) for r in results.values() if split in r):
      lines += ["Per video first (the mean heart rate of each video against its truth; ± is "
                "one standard error over videos), then per HR window (overlapping windows of "
                "one video are not independent: their ± understates the uncertainty).", ""]
    lines += results_table(results, split) + [""]
    paired = [c for c in comparisons if c.split == split]
    if paired:
      lines += _comparison_lines(paired)
  if figures:
    lines += ["## Figures", ""]
    for caption, fig_path in figures:
      rel = os.path.relpath(pathlib.Path(fig_path).resolve(), path.parent.resolve())
      lines += [f"![{caption}]({pathlib.Path(rel).as_posix()})", "", f"*{caption}*", ""]
  text = "\n".join(lines).rstrip() + "\n"
  return _write_atomic(path, lambda tmp: pathlib.Path(tmp).write_text(text))


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

def _save(fig: mpl_figure.Figure, path: PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  fmt = path.suffix.lstrip(".") or "png"
  return _write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=100,
                                                     bbox_inches="tight"))


def _zscore(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, dtype=np.float64)
  std = np.nanstd(x)
  return (x - np.nanmean(x)) / (std if std > 0 else 1.0)


def plot_signal(path: PathLike, pred, true, fps: float, *, title: str = "rPPG signal",
                start_s: float = 0.0, spans: Sequence[tuple[float, float]] = ()
                ) -> pathlib.Path:
  """The predicted rPPG signal against the ground-truth PPG (both standardised) over time.

  pred: f[T]; true: f[T], or None when there is no ground truth (a prediction on one's own
  video); the legend gives each one's `hr_estimate` heart rate. start_s: the time of sample 0;
  spans: (start s, end s) intervals shaded behind the curves (e.g. the model's windows).
  """
  pred = np.asarray(pred, np.float64)
  true = None if true is None else np.asarray(true, np.float64)
  if pred.ndim != 1 or (true is not None and pred.shape != true.shape):
    shape = None if true is None else true.shape
    raise errors.DataError(f"pred {pred.shape} and true {shape} must both be f[T]")
  t = start_s + np.arange(pred.size) / fps
  fig = mpl_figure.Figure(figsize=(10, 3.2))
  ax = fig.add_subplot()
  for start, end in spans:
    ax.axvspan(start, end, color="C0", alpha=0.04)
  curves = ((true, "ground truth", "k-"), (pred, "rPPG", "C3-"))
  for sig, label, style in ((s, l, st) for s, l, st in curves if s is not None):
    hr = heart_rate.hr_estimate(sig, fps) if sig.size >= 4 else float("nan")
    ax.plot(t, _zscore(sig), style, lw=1.2, label=f"{label} ({hr:.1f} bpm)")
  ax.set(xlabel="time (s)", ylabel="standardised amplitude", title=title)
  ax.legend(loc="upper right")
  ax.grid(alpha=0.3)
  return _save(fig, path)


def plot_spectrum(path: PathLike, sig, fps: float, hr_true: float | None = None, *,
                  band: Sequence[float] = heart_rate.HR_BAND_HZ, title: str = "power spectrum"
                  ) -> pathlib.Path:
  """The power spectrum of one signal f[n] (bpm axis), the band shaded, estimated and true HR."""
  freqs, power = heart_rate.power_spectrum(np.asarray(sig, np.float64), fps)
  bpm = 60 * freqs
  keep = bpm <= 240
  fig = mpl_figure.Figure(figsize=(6, 3.2))
  ax = fig.add_subplot()
  peak = np.nanmax(power[keep]) if np.any(np.isfinite(power[keep])) else 0.0
  ax.plot(bpm[keep], power[keep] / (peak if peak > 0 else 1.0), "C0-", lw=1.2)
  ax.axvspan(60 * band[0], 60 * min(band[1], fps / 2), color="C0", alpha=0.08,
             label="heart-rate band")
  hr_est = heart_rate.hr_estimate(sig, fps, band=band)
  ax.axvline(hr_est, color="C3", ls="--", label=f"estimated {hr_est:.1f} bpm")
  if hr_true is not None and np.isfinite(hr_true):
    ax.axvline(hr_true, color="k", ls=":", label=f"true {hr_true:.1f} bpm")
  ax.set(xlabel="frequency (bpm)", ylabel="power (normalised)", title=title, xlim=(0, 240))
  ax.legend(loc="upper right", fontsize="small")
  return _save(fig, path)


def plot_bland_altman(path: PathLike, pred, true, unit_label: str = "window", *,
                      title: str | None = None) -> pathlib.Path:
  """Bland-Altman plot of predicted vs true heart rates f[K], one point per `unit_label`.

  The title says what a point is ("one point per window" / "per video") and how many there are;
  the bias and the 95 % limits of agreement (bias +- 1.96 sd) are drawn. Pairs with a NaN are
  left out (and counted in the title).
  """
  pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
  if pred.ndim != 1 or pred.shape != true.shape:
    raise errors.DataError(f"pred {pred.shape} and true {true.shape} must both be f[K]")
  ok = np.isfinite(pred) & np.isfinite(true)
  mean, diff = (pred[ok] + true[ok]) / 2, pred[ok] - true[ok]
  fig = mpl_figure.Figure(figsize=(5.5, 4))
  ax = fig.add_subplot()
  ax.scatter(mean, diff, s=14, alpha=0.7)
  if diff.size:
    bias = diff.mean()
    sd = diff.std(ddof=1) if diff.size > 1 else 0.0
    ax.axhline(bias, color="C3", label=f"bias {bias:+.2f} bpm")
    for lim in (bias - 1.96 * sd, bias + 1.96 * sd):
      ax.axhline(lim, color="C3", ls="--")
    ax.plot([], [], "C3--", label=f"95% limits ±{1.96 * sd:.2f} bpm")
    ax.legend(loc="upper right", fontsize="small")
  dropped = f", {int((~ok).sum())} without HR left out" if np.any(~ok) else ""
  caption = f"one point per {unit_label} (n = {int(ok.sum())}{dropped})"
  ax.set(xlabel="mean of predicted and true HR (bpm)", ylabel="predicted - true HR (bpm)",
         title=f"{title or 'Bland-Altman'}: {caption}")
  ax.grid(alpha=0.3)
  return _save(fig, path)


def plot_training_curves(path: PathLike, history: Mapping[str, Iterable[tuple[float, float]]]
                         ) -> pathlib.Path:
  """One panel a series: history maps name -> [(step, value), ...] (e.g. losses, val MAE)."""
  if not history:
    raise errors.DataError("training history is empty: nothing to plot")
  names = list(history)
  cols = min(3, len(names))
  rows = math.ceil(len(names) / cols)
  fig = mpl_figure.Figure(figsize=(4.2 * cols, 3 * rows))
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax, name in zip(axes, names):
    points = np.asarray(list(history[name]), dtype=np.float64).reshape(-1, 2)
    ax.plot(points[:, 0], points[:, 1], "C0-", marker="." if len(points) < 50 else None)
    ax.set(title=name, xlabel="step")
    ax.grid(alpha=0.3)
  for ax in axes[len(names):]:
    ax.set_visible(False)
  fig.tight_layout()
  return _save(fig, path)


def _normalise_saliency(s: np.ndarray) -> np.ndarray:
  """Scale a video's saliency to [0, 1] by its 99th percentile over all frames (comparable over
  time, robust to a few hot pixels)."""
  s = np.abs(np.asarray(s, np.float64))
  top = np.nanpercentile(s, 99) if s.size else 0.0
  return np.clip(s / top, 0, 1) if top > 0 else np.zeros_like(s)


def heatmap_animation(path: PathLike, crops, saliency_before, saliency_after, signal,
                      fps: float, hr_pred: float, hr_true: float, *,
                      labels: tuple[str, str] = ("no adaptation", "Meta-rPPG (adapted)"),
                      max_frames: int = 150) -> pathlib.Path:
  """Animated GIF of one video: the crop, both saliency maps over it, signal and spectrum.

  Args:
    path: the .gif file.
    crops: uint8[T, H, W, 3] face crops.
    saliency_before, saliency_after: f[T, H, W] (e.g. |d signal / d input| of the model without
      and with adaptation; computed by the evaluator); each is scaled by its own 99th
      percentile over the video and drawn over the crop.
    signal: f[T] the rPPG signal (of the adapted model); a cursor follows the frame.
    fps: frame rate of crops and signal; the GIF plays in real time.
    hr_pred, hr_true: heart rates (bpm) printed in the title and marked on the spectrum.
    labels: titles of the two saliency panels.
    max_frames: at most this many frames are drawn (every k-th frame, real-time playback kept).
  """
  crops = np.asarray(crops)
  sal = [_normalise_saliency(saliency_before), _normalise_saliency(saliency_after)]
  signal = np.asarray(signal, np.float64)
  num = crops.shape[0] if crops.ndim == 4 else -1
  if (crops.ndim != 4 or crops.shape[-1] != 3 or num < 1
      or any(s.shape != crops.shape[:3] for s in sal) or signal.shape != (num,)):
    raise errors.DataError(
        f"heat-map inputs must be crops [T, H, W, 3], saliencies [T, H, W], signal [T]; got "
        f"{crops.shape}, {sal[0].shape}, {sal[1].shape}, {signal.shape}")
  if crops.dtype != np.uint8:
    crops = np.clip(crops, 0, 255).astype(np.uint8)
  step = max(1, math.ceil(num / max_frames))
  rendered = _heatmap_frames(crops, sal, signal, fps, hr_pred, hr_true, labels,
                             np.arange(0, num, step))
  return _write_gif(path, rendered, duration_ms=max(20, int(round(1000 * step / fps))))


def _heatmap_frames(crops, sal, signal, fps, hr_pred, hr_true, labels, frames
                    ) -> list[np.ndarray]:
  """`heatmap_animation`'s figure drawn at each of `frames`: uint8[H', W', 3] images."""
  num = crops.shape[0]
  t = np.arange(num) / fps
  fig = mpl_figure.Figure(figsize=(9, 6), dpi=60)
  canvas = backend_agg.FigureCanvasAgg(fig)
  grid = fig.add_gridspec(2, 3, height_ratios=(1.1, 1))
  image_axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
  images = []
  for ax, name in zip(image_axes, ("input", *labels)):
    ax.set_title(name, fontsize="medium")
    ax.axis("off")
    images.append(ax.imshow(crops[0]))
  cmap = matplotlib.colormaps["jet"]
  overlays = [ax.imshow(s[0], cmap=cmap, vmin=0, vmax=1, alpha=0.45)
              for ax, s in zip(image_axes[1:], sal)]

  ax_sig = fig.add_subplot(grid[1, :2])
  ax_sig.plot(t, signal, "C3-", lw=1)
  cursor = ax_sig.axvline(0, color="k", lw=1)
  ax_sig.set(xlabel="time (s)", ylabel="rPPG", xlim=(0, t[-1] if num > 1 else 1))
  ax_spec = fig.add_subplot(grid[1, 2])
  if num >= 4:
    freqs, power = heart_rate.power_spectrum(signal, fps)
    keep = freqs * 60 <= 240
    ax_spec.plot(60 * freqs[keep], power[keep], "C0-", lw=1)
  ax_spec.axvline(hr_pred, color="C3", ls="--", label=f"pred {hr_pred:.1f}")
  ax_spec.axvline(hr_true, color="k", ls=":", label=f"true {hr_true:.1f}")
  ax_spec.set(xlabel="bpm", yticks=[], xlim=(0, 240), title="power spectrum")
  ax_spec.legend(fontsize="small")
  fig.suptitle(f"HR predicted {hr_pred:.1f} bpm, true {hr_true:.1f} bpm")
  fig.tight_layout()

  # Blitting: the axes, labels, curves and spectrum are drawn once; each frame redraws only
  # the images, overlays and cursor (an order of magnitude faster than a full draw a frame).
  dynamic = [*images, *overlays, cursor]
  for artist in dynamic:
    artist.set_animated(True)
  canvas.draw()
  background = canvas.copy_from_bbox(fig.bbox)
  rendered = []
  for i in frames:
    canvas.restore_region(background)
    for im in images:
      im.set_data(crops[i])
    for ov, s in zip(overlays, sal):
      ov.set_data(s[i])
    cursor.set_xdata([t[i], t[i]])
    for artist in dynamic:
      artist.axes.draw_artist(artist)
    rendered.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
  return rendered


def _write_gif(path: PathLike, rendered: list[np.ndarray], *, duration_ms: int) -> pathlib.Path:
  """A looping GIF of `rendered` frames, `duration_ms` each."""
  # One 256-colour palette from a few frames, shared by all: PIL's per-frame median-cut
  # quantisation (what PillowWriter does) took seconds a frame.
  sample = np.concatenate(rendered[::max(1, len(rendered) // 6)], axis=0)
  palette = Image.fromarray(sample).quantize(256, method=Image.Quantize.FASTOCTREE)
  gif = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE)
         for f in rendered]

  def write(tmp):
    gif[0].save(tmp, format="GIF", save_all=True, append_images=gif[1:], loop=0,
                duration=duration_ms)
  return _write_atomic(path, write)
