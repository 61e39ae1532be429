"""Evaluation: every method on the same windows, metrics, report, plots, heat maps.

`evaluate(config, workdir, state=None)` takes the first `meta.fewshots + eval.queries`
consecutive windows of every video of `data.eval_split`: the first `fewshots` are Meta-rPPG's
support (unlabelled adaptation), the `queries` after them are what every method is scored on:

- "meta_rppg": transductive adaptation on the support, then prediction
  (`inference.evaluate_videos`);
- "no_adaptation": the same trained model without adaptation;
- "green", "chrom", "pos", "ica", "lgi", "pbv", "omit": the classical methods
  (`baselines.rppg_signal`, as rPPG-Toolbox has them) on the masked
  mean colour of the same query frames.

A model's rPPG signal is its expected ordinal level per frame. Each method's signal over the
query frames is cut into HR windows of `eval.hr_window_s` seconds every `eval.hr_stride_s`
(`heart_rate.signal_windows`), the heart rate of each is `heart_rate.hr_estimate` (or the
original's `hr_reference`, `eval.hr_estimator`), the truth the mean ground-truth HR over the
window (or the HR of the ground-truth PPG where a dataset has none); `metrics.hr_metrics`
scores the windows (`metrics.signal_metrics`: per window, per video, SNR of the signal).

`config.method` picks what is evaluated: "meta_rppg" (the default) evaluates all six methods
for the comparison; any other name only that method (a classical one needs no checkpoint).

The windows of one video are not independent, so the videos are the samples: with both
Meta-rPPG and another method evaluated, `metrics.paired_comparison` compares their per-video
absolute errors (Meta-rPPG against the same model without adaptation, and against the
classical method with the lowest per-video MAE), and the report names a better method only
where that comparison supports it.

Outputs in the workdir: metrics.json (`{method: {split: {mae, rmse, mape, pearson, snr,
num_windows, ..., "video": {...}}}}`; Meta-rPPG's split also holds `"paired": {other method:
metrics.paired_comparison(...) plus "a", "b", "videos", "role"}`), report.md, plots/ (signal
vs ground truth, spectrum, Bland-Altman per window and per video, training curves) and
plots/heatmap_*.gif (saliency |d expected level / d input| of the model without and with
adaptation).
"""

import functools
import os
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from metarppg_jax import baselines
from metarppg_jax import checkpoints
from metarppg_jax import compile_options
from metarppg_jax import configuration
from metarppg_jax import console
from metarppg_jax import heart_rate
from metarppg_jax import history as history_lib
from metarppg_jax import inference
from metarppg_jax import metrics as metrics_lib
from metarppg_jax import reports
from metarppg_jax import sharding
from metarppg_jax.data import input_pipeline
from metarppg_jax.data import preprocess
from metarppg_jax.data import splits
from metarppg_jax.errors import DataError
from metarppg_jax.state import TrainState

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
VIDEOS_PER_CALL = 2     # videos a jitted evaluation call adapts at once (bounds memory)
HEATMAP_VIDEOS = 1
HEATMAP_WINDOWS = 2     # query windows animated (4 s)
# The paired comparisons' interval: level, bootstrap resamples and seed (fixed: the same
# errors always give the same interval).
PAIRED_CONFIDENCE = 0.95
PAIRED_RESAMPLES = 10_000
PAIRED_SEED = 0
METHOD_TITLES = {"meta_rppg": "Meta-rPPG", "no_adaptation": "no adaptation",
                 "green": "GREEN", "chrom": "CHROM", "pos": "POS", "ica": "ICA", "lgi": "LGI",
                 "pbv": "PBV", "omit": "OMIT"}


class EvalData(NamedTuple):
  """The evaluated windows of one split, V videos, S support + Q query windows of T frames.

  x: f32[V, S + Q, T, 64, 64, 3] normalised crops (the models' input); ppg, hr: f32[V, Q T]
  ground truth over the query frames; rgb: f32[V, Q T, 3] masked mean colour of the query
  frames (the classical methods' input; None when not loaded); fps; video_ids [V]; split;
  domain (of video 0).
  """
  x: np.ndarray
  ppg: np.ndarray
  hr: np.ndarray
  rgb: np.ndarray | None
  fps: float
  video_ids: list
  split: str
  domain: str


# --------------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------------

def load_eval_data(config: ml_collections.ConfigDict, source, split: str, *,
                   rgb: bool = True) -> EvalData:
  """The support and query windows of every video of `source` (EvalData); rgb=False leaves
  out the classical methods' colour traces (EvalData.rgb None), which validation never uses."""
  s, q, t = config.meta.fewshots, config.eval.queries, preprocess.WINDOW
  videos = list(input_pipeline.eval_videos(source, window=t, num_windows=s + q,
                                           normalization=config.data.normalization, rgb=rgb))
  if not videos:
    raise DataError(f"{config.data.dataset} split {split!r} has no video with a full window")
  shortest = min(v["x"].shape[0] for v in videos)
  configuration.check_against_data(config, split=split, num_frames=shortest * t,
                                   purpose="eval", source=config.data.dataset)
  fps = {round(v["fps"], 3) for v in videos}
  if len(fps) != 1:
    raise DataError(f"{config.data.dataset} split {split!r} mixes frame rates {sorted(fps)}; "
                    "HR windows need one rate (rebuild with one target_fps)")
  stack = lambda key: np.stack([v[key] for v in videos])
  query = lambda a: a[:, s:].reshape((a.shape[0], q * t) + a.shape[3:])
  hr = query(stack("hr")).astype(np.float32)
  no_hr = ~np.array([v["has_hr"] for v in videos])
  hr[no_hr] = np.nan  # filled from the PPG per HR window (`true_hr`)
  return EvalData(x=stack("x"), ppg=query(stack("ppg")), hr=hr,
                  rgb=query(stack("rgb")) if rgb else None,
                  fps=float(videos[0]["fps"]), video_ids=[v["video_id"] for v in videos],
                  split=split, domain=videos[0]["domain"])


# --------------------------------------------------------------------------------------------
# Signals.
# --------------------------------------------------------------------------------------------

def model_signal(config: ml_collections.ConfigDict, state: TrainState, x: np.ndarray, *,
                 adapt: bool, mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
  """Expected ordinal level per query frame: x f32[V, S + Q, T, H, W, C] -> f32[V, Q T].

  Videos go through `sharding.sharded_evaluate` VIDEOS_PER_CALL per device at a time,
  split over the mesh's devices (`sharding.make_mesh(config)` unless given; each video adapts
  alone, so grouping changes nothing but memory); the last group is padded to keep one
  compiled shape.
  """
  mesh = sharding.make_mesh(config) if mesh is None else mesh
  devices = mesh.shape[sharding.DATA]
  v = x.shape[0]
  chunk = min(VIDEOS_PER_CALL * devices, -(-v // devices) * devices)
  pad = (-v) % chunk
  xs = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
  state = sharding.shard_train_state(state, mesh)
  run = sharding.sharded_evaluate(config, mesh, adapt=adapt)
  level = np.concatenate([run(state, xs[i:i + chunk])["expected_level"]
                          for i in range(0, xs.shape[0], chunk)])[:v]
  return level.reshape(v, -1).astype(np.float32)


def signals(config: ml_collections.ConfigDict, state, data: EvalData,
            methods: tuple[str, ...]) -> dict[str, np.ndarray]:
  """{method: f32[V, Q T]} rPPG signals over the query frames."""
  out = {}
  for method in tqdm.tqdm(methods, desc=f"evaluate {data.split}", unit="method",
                          disable=None, leave=False):
    if method in configuration.LEARNED_METHODS:
      out[method] = model_signal(config, state, data.x, adapt=method == "meta_rppg")
    else:
      out[method] = baselines.rppg_signal(method, data.rgb, data.fps)
  return out


# --------------------------------------------------------------------------------------------
# Heart rate and scores.
# --------------------------------------------------------------------------------------------

def _windows(config, sig: np.ndarray, fps: float) -> np.ndarray:
  return heart_rate.signal_windows(sig, fps, config.eval.hr_window_s, config.eval.hr_stride_s)[0]


def true_hr(config, data: EvalData) -> np.ndarray:
  """Ground-truth HR f64[V, K] per HR window: the mean HR trace, else the HR of the PPG."""
  hr_w = _windows(config, data.hr, data.fps)
  with np.errstate(invalid="ignore"):
    from_trace = np.mean(hr_w, axis=-1)
  from_ppg = heart_rate.hr_estimate(_windows(config, data.ppg, data.fps), data.fps)
  return np.where(np.isfinite(from_trace), from_trace, from_ppg)


def score(config, sig: np.ndarray, truth: np.ndarray, data: EvalData) -> dict[str, Any]:
  """Metrics of one method's signal f[V, Q T] against truth f[V, K] (`metrics.signal_metrics`
  on its HR windows): per HR window (top level) and per video ("video"), the mean SNR (dB, at
  the true HR), and the per-window HRs."""
  win = _windows(config, sig, data.fps)
  v, k = truth.shape
  ids = np.repeat(np.arange(len(data.video_ids)), k)
  out, pred = metrics_lib.signal_metrics(win.reshape(v * k, -1), truth.ravel(), data.fps,
                                         video_ids=ids, estimator=config.eval.hr_estimator)
  out["hr_window_s"] = float(config.eval.hr_window_s)
  out["hr_stride_s"] = float(config.eval.hr_stride_s)
  out["hr_pred"] = pred.reshape(v, k).tolist()
  out["hr_true"] = truth.tolist()
  return out


def validation_mae(config: ml_collections.ConfigDict, state: TrainState, data: EvalData, *,
                   mesh: jax.sharding.Mesh | None = None) -> float:
  """Meta-rPPG's per-window MAE (bpm) on a split's `load_eval_data`: what picks the best
  checkpoint."""
  sig = model_signal(config, state, data.x, adapt=True, mesh=mesh)
  return float(score(config, sig, true_hr(config, data), data)["mae"])


# --------------------------------------------------------------------------------------------
# Saliency for the heat maps.
# --------------------------------------------------------------------------------------------

def saliency(config: ml_collections.ConfigDict, state: TrainState, video: np.ndarray, *,
             adapt: bool) -> np.ndarray:
  """|d (sum of the expected level) / d input| summed over colour: video f32[S + Q', T, H, W, C]
  (support and the query windows to show) -> f32[Q' T, H, W], for the model with or without
  adaptation. The queries are one batch (batch norm in train mode, as in evaluation)."""
  s = config.meta.fewshots
  video = jnp.asarray(video)
  params, stats = state.params, state.batch_stats
  theta, theta_stats = params["theta"], stats["theta"]
  if adapt:
    adapt_fn = compile_options.jit(functools.partial(inference.adapt, config))
    theta, theta_stats, _ = adapt_fn(params, stats, state.prototype, video[:s])
  queries = video[s:]
  lstm0 = inference.initial_lstm_state(config.meta.lstm_state_rule, state.lstm_state,
                                       queries.shape[0])

  def expected_level(q):
    out = inference.predict({"theta": theta, "phi": params["phi"]}, {"theta": theta_stats}, q,
                            lstm0, head=config.model.ordinal_head)
    return jnp.sum(out.prob)

  grad = compile_options.jit(jax.grad(expected_level))(queries)
  g = np.asarray(jnp.sum(jnp.abs(grad), axis=-1))
  return g.reshape((-1,) + g.shape[2:])


def _raw_query_crops(config, source, video_id: str) -> np.ndarray | None:
  """uint8[Q T, 64, 64, 3] crops of the query frames of a video (from its record)."""
  s, q, t = config.meta.fewshots, config.eval.queries, preprocess.WINDOW
  for r in range(len(source)):
    record = source[r]
    vid = record["video_id"]
    if (vid.decode() if isinstance(vid, bytes) else str(vid)) == video_id:
      return np.asarray(record["frames"][s * t:(s + q) * t])
  return None


# --------------------------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------------------------

def _methods(config) -> tuple[str, ...]:
  if config.method == "meta_rppg":
    return configuration.METHODS
  return (config.method,)


def _video_errors(results: dict, method: str, split: str) -> np.ndarray:
  """f64[V] per-video absolute errors of a method (`metrics.video_abs_errors`)."""
  r = results[method][split]
  pred, true = np.asarray(r["hr_pred"]), np.asarray(r["hr_true"])
  ids = np.repeat(np.arange(pred.shape[0]), pred.shape[1])
  return metrics_lib.video_abs_errors(pred.ravel(), true.ravel(), ids)


def best_classical(results: dict, split: str) -> str | None:
  """The classical method with the lowest finite per-video MAE on `split`, None if none."""
  maes = {m: r[split]["video"]["mae"] for m, r in results.items()
          if m in configuration.CLASSICAL_METHODS and np.isfinite(r[split]["video"]["mae"])}
  return min(maes, key=maes.get) if maes else None


def paired(results: dict, data: EvalData) -> dict[str, dict]:
  """Meta-rPPG against the model without adaptation and against the best classical method,
  each a `metrics.paired_comparison` of per-video errors on the same videos, plus "a", "b"
  (method names), "videos" (ids, the errors' order) and "role" ("adaptation" or
  "best_classical"): {other method: that}. Empty without Meta-rPPG or another method."""
  split = data.split
  if "meta_rppg" not in results:
    return {}
  others = {"no_adaptation": "adaptation", best_classical(results, split): "best_classical"}
  err_a = _video_errors(results, "meta_rppg", split)
  out = {}
  for b, role in others.items():
    if b is None or b not in results:
      continue
    stats = metrics_lib.paired_comparison(
        err_a, _video_errors(results, b, split), confidence=PAIRED_CONFIDENCE,
        num_resamples=PAIRED_RESAMPLES, seed=PAIRED_SEED)
    out[b] = dict(stats, a="meta_rppg", b=b, videos=list(data.video_ids), role=role)
  return out


def _comparisons(table: dict, split: str) -> list[reports.Comparison]:
  """The report's paired comparisons, from Meta-rPPG's "paired" results."""
  pairs = table.get("meta_rppg", {}).get(split, {}).get("paired", {})
  return [reports.Comparison(
      split, METHOD_TITLES[s["a"]], METHOD_TITLES[s["b"]], s,
      subject="Transductive adaptation" if s["role"] == "adaptation" else None)
          for s in pairs.values()]


def _notes(config, results: dict, data: EvalData, checkpoint: str | None) -> list[str]:
  split = data.split
  notes = [
      f"Dataset `{config.data.dataset}` (config `{config.data.builder_config or 'default'}`), "
      f"split `{split}` (domain `{data.domain}`): {len(data.video_ids)} videos. Every method is "
      f"scored on the same {config.eval.queries} query windows of {preprocess.WINDOW} frames "
      f"a video ({config.eval.queries * preprocess.WINDOW / data.fps:.0f} s, after "
      f"{config.meta.fewshots} unlabelled support window(s) that only Meta-rPPG adapts on). "
      f"HR per window of {config.eval.hr_window_s:g} s every {config.eval.hr_stride_s:g} s, "
      f"estimator `{config.eval.hr_estimator}`; a video's HR is the mean of its windows'. ± is "
      f"one standard error.",
  ]
  if checkpoint:
    notes.append(f"Model checkpoint: `{checkpoint}`.")
  maes = {m: r[split]["video"]["mae"] for m, r in results.items()}
  finite = {m: v for m, v in maes.items() if np.isfinite(v)}
  if len(finite) >= 2:
    ranked = sorted(finite, key=finite.get)
    notes.append(
        "Per-video MAE, lowest first: " + ", ".join(
            f"{METHOD_TITLES[m]} {finite[m]:.2f}" for m in ranked) + " bpm. A ranking of "
        f"point estimates over {len(data.video_ids)} videos, not a verdict: which differences "
        "these videos resolve is in the paired comparisons below the table.")
  pairs = results.get("meta_rppg", {}).get(split, {}).get("paired", {})
  picked = [s["b"] for s in pairs.values() if s["role"] == "best_classical"]
  if picked:
    notes.append(
        f"The classical method Meta-rPPG is paired with, {METHOD_TITLES[picked[0]]}, is the one "
        f"with the lowest per-video MAE on these same {len(data.video_ids)} videos: chosen on "
        "them, so that comparison leans its way.")
  return notes


def _plots(config, workdir: pathlib.Path, data: EvalData, sigs: dict, results: dict
           ) -> list[tuple[str, pathlib.Path]]:
  plots = workdir / "plots"
  figures = []
  split = data.split
  for method, sig in sigs.items():
    r = results[method][split]
    title = METHOD_TITLES[method]
    path = reports.plot_signal(plots / f"signal_{method}.png", sig[0], data.ppg[0], data.fps,
                               title=f"{title}: video {data.video_ids[0]}")
    figures.append((f"{title}: rPPG signal vs ground-truth PPG, video {data.video_ids[0]}",
                    path))
    n = int(round(config.eval.hr_window_s * data.fps))
    truth0 = r["hr_true"][0][0]
    path = reports.plot_spectrum(plots / f"spectrum_{method}.png", sig[0, :n], data.fps,
                                 truth0, title=f"{title}: first HR window")
    figures.append((f"{title}: power spectrum of the first {config.eval.hr_window_s:g} s "
                    "window", path))
    pred, true = np.ravel(r["hr_pred"]), np.ravel(r["hr_true"])
    path = reports.plot_bland_altman(plots / f"bland_altman_{method}_window.png", pred, true,
                                     "window", title=title)
    figures.append((f"{title}: Bland-Altman, one point per window", path))
    ids = np.repeat(np.arange(len(data.video_ids)), np.shape(r["hr_pred"])[1])
    vp, vt, _ = metrics_lib.per_video(pred, true, ids)
    path = reports.plot_bland_altman(plots / f"bland_altman_{method}_video.png", vp, vt,
                                     "video", title=title)
    figures.append((f"{title}: Bland-Altman, one point per video", path))
  curves = history_lib.curves(history_lib.read(workdir))
  if curves:
    path = reports.plot_training_curves(plots / "training_curves.png", curves)
    figures.append(("Training curves (losses per step, validation MAE per epoch)", path))
  return figures


def _heatmaps(config, workdir: pathlib.Path, state, source, data: EvalData, sigs: dict,
              results: dict) -> list[tuple[str, pathlib.Path]]:
  scores = results["meta_rppg"][data.split]
  figures = []
  for i in range(min(HEATMAP_VIDEOS, len(data.video_ids))):
    crops = _raw_query_crops(config, source, data.video_ids[i])
    if crops is None:
      continue
    # The first HEATMAP_WINDOWS query windows (a gradient per input pixel is costly).
    shown = config.meta.fewshots + min(HEATMAP_WINDOWS, config.eval.queries)
    frames = (shown - config.meta.fewshots) * preprocess.WINDOW
    before = saliency(config, state, data.x[i, :shown], adapt=False)
    after = saliency(config, state, data.x[i, :shown], adapt=True)
    crops, sig = crops[:frames], sigs["meta_rppg"][i, :frames]
    path = reports.heatmap_animation(
        workdir / "plots" / f"heatmap_{data.video_ids[i]}.gif", crops, before, after, sig,
        data.fps, float(np.nanmean(scores["hr_pred"][i])),  # the video's mean window HRs
        float(np.nanmean(scores["hr_true"][i])))
    figures.append((f"Saliency |d expected level / d input| without and with adaptation, "
                    f"video {data.video_ids[i]}", path))
  return figures


# --------------------------------------------------------------------------------------------
# The entry point.
# --------------------------------------------------------------------------------------------

def restore_state(config: ml_collections.ConfigDict, workdir: str | os.PathLike
                  ) -> checkpoints.Restored:
  """The state `config.restore_from` names (checkpoints.restore), for evaluation."""
  return checkpoints.restore(config, workdir, checkpoints.target_state(config))


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, state=None, *,
             sources: dict | None = None, plots: bool = True) -> dict:
  """Evaluates the methods `config.method` selects on `config.data.eval_split`.

  Args:
    config: the experiment config (validated here).
    workdir: outputs go here; checkpoints are restored from here unless
      `config.restore_from` names another source.
    state: the TrainState to evaluate (training passes its final state); None: restored.
    sources: {split: data source} already loaded (training passes its own).
    plots: write plots and heat maps (metrics.json and report.md are always written).

  Returns:
    {"metrics": {method: {split: {...}}}, "checkpoint": path or None, "files": {...}}.
  """
  configuration.validate(config)
  workdir = configuration.prepare_workdir(workdir)  # ConfigError if it cannot be written
  if jax.process_index() == 0 and not (workdir / configuration.CONFIG_FILE).exists():
    configuration.write(config, workdir)
  methods = _methods(config)
  learned = any(m in configuration.LEARNED_METHODS for m in methods)
  checkpoint = None
  if learned and state is None:
    restored = restore_state(config, workdir)
    state, checkpoint = restored.state, restored.path
    console.say("evaluating the checkpoint %s (step %d)", restored.path, restored.step)
  elif learned:
    checkpoint = "the final training state (saved as the last checkpoint)"
  sources = sources if sources is not None else splits.load(config, workdir)
  source = splits.source(config, sources, config.data.eval_split)
  data = load_eval_data(config, source, config.data.eval_split)
  sigs = signals(config, state, data, methods)
  truth = true_hr(config, data)
  results = {m: {data.split: score(config, sig, truth, data)} for m, sig in sigs.items()}

  table = {m: {data.split: {k: v for k, v in r[data.split].items()
                            if k not in ("hr_pred", "hr_true")}} for m, r in results.items()}
  pairs = paired(results, data)
  if pairs:
    table["meta_rppg"][data.split]["paired"] = pairs
  if jax.process_index() != 0:  # every process computed (collectives); process 0 writes
    return {"metrics": table, "checkpoint": checkpoint, "files": {}}
  metrics_path = reports.write_metrics_json(workdir / METRICS_FILE, table)
  notes = _notes(config, table, data, checkpoint)
  write_report = lambda figures: reports.write_report_md(
      workdir / REPORT_FILE, {METHOD_TITLES[m]: r for m, r in table.items()},
      title="Meta-rPPG evaluation", notes=notes,
      comparisons=_comparisons(table, data.split), figures=figures)
  report_path = write_report([])  # the table first: plots take a while
  figures = []
  if plots:
    figures += _plots(config, workdir, data, sigs, results)
    if "meta_rppg" in methods:
      figures += _heatmaps(config, workdir, state, source, data, sigs, results)
    report_path = write_report(figures)
  return {"metrics": table, "checkpoint": checkpoint,
          "files": {"metrics": str(metrics_path), "report": str(report_path),
                    "figures": [str(p) for _, p in figures]}}
