r"""Heart rate from one video file with a trained Meta-rPPG model.

  python -m metarppg_jax.predict VIDEO                        # the packaged pretrained model
  python -m metarppg_jax.predict VIDEO --workdir DIR          # DIR: a training workdir
  python -m metarppg_jax.predict VIDEO --workdir DIR --checkpoint best
  python -m metarppg_jax.predict VIDEO --checkpoint model.pth --config configs/default.py

Reads the video (any container/codec FFmpeg knows: mp4, avi, mov, mkv, ...), resamples it to
the config's frame rate, detects and crops the face (`faces.face_crops`), cuts 2 s windows
(`input_pipeline.load_windows`), adapts a copy of the model to this video on its first
`meta.fewshots` windows (transductive, no labels), predicts the rPPG signal of the rest and
reads the heart rate per window (`eval.hr_window_s` every `eval.hr_stride_s`, shorter videos:
one window) and overall (`heart_rate.hr_estimate`).

Without --workdir and --checkpoint it uses the pretrained model shipped in the package
(`pretrained.load`). Writes to --out (default WORKDIR/predictions/<video name>/, or
./predictions/<video name>/ without a workdir): signal.csv (time_s, rppg), prediction.json
(overall and per-window HR, the signal, what was done), signal.png and spectrum.png. The last
line on stdout is one JSON object summarising the prediction (`hr_bpm`: the overall HR). Unreadable files, videos without a face and videos too short for one support
and one query window end with a message and exit status 1, never a traceback.
"""

import json
import os
import pathlib
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np

from metarppg_jax import configuration
from metarppg_jax.errors import ConfigError, DataError, MetaRPPGError

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The CLI's flags, defined only when run as a program (importing this module must not add
  flags that clash with another program's, e.g. main's --config)."""
  flags.DEFINE_string("workdir", None, "Training workdir (its config.json and checkpoints); "
                      "default: the packaged pretrained model.")
  flags.DEFINE_string("checkpoint", None, "latest | best | a checkpoint path (orbax step or "
                      "workdir, or an original .pth/.npz); default: the workdir's latest.")
  flags.DEFINE_string("config", None, "Config file; default: WORKDIR/config.json.")
  flags.DEFINE_string("out", None, "Output directory; default WORKDIR/predictions/<video> "
                      "(./predictions/<video> without a workdir).")


def model(*, workdir: str | None = None, checkpoint: str | None = None,
          config_file: str | None = None):
  """The model a prediction uses: (config, restore), restore() -> (TrainState, where from).

  Neither workdir nor checkpoint: the packaged pretrained model. Otherwise the workdir's
  checkpoint (`checkpoint`: latest, best or a path; default latest) with the workdir's
  config.json, or a checkpoint path with `config_file`. Restoring is deferred so that a bad
  video fails before the model is read.
  """
  from metarppg_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from metarppg_jax import pretrained  # pylint: disable=g-import-not-at-top
  if not workdir and not checkpoint:
    if config_file:
      raise ConfigError("--config needs --checkpoint PATH (or give --workdir); without any "
                        "of them the packaged pretrained model is used with its own config")
    config, state = pretrained.load()
    return config, lambda: (state, f"pretrained ({pretrained.WEIGHTS_DIR})")
  if not workdir and checkpoint in ("latest", "best"):
    raise ConfigError(f"--checkpoint {checkpoint} needs --workdir")
  if config_file:
    config = configuration.from_file(config_file)
  elif workdir:
    config = configuration.read(workdir)
  else:
    raise ConfigError("--checkpoint PATH needs --config (a config file) or --workdir")
  with config.unlocked():
    config.restore_from = checkpoint or ""

  def restore():
    restored = checkpoints.restore(config, workdir or ".", checkpoints.target_state(config))
    return restored.state, restored.path

  return config, restore


def load_clip(path: str | os.PathLike, config) -> dict:
  """The video's face crops as model windows.

  Returns:
    {"x": f32[W, T, 64, 64, 3] normalised windows, "path", "fps", "num_frames" (after
     resampling), "face_fraction" (of the detection frames with a face)}.
  Raises:
    DataError: unreadable file, no face, or fewer than meta.fewshots + 1 windows.
  """
  from metarppg_jax.data import faces  # pylint: disable=g-import-not-at-top
  from metarppg_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from metarppg_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  from metarppg_jax.data import video as video_lib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  video = video_lib.read_video(path)
  for warning in video.warnings:
    logging.warning("%s: %s", path, warning)
  fps = float(config.data.fps)
  frames = video.frames
  if abs(video.fps - fps) > 0.05 * fps:
    frames, _ = preprocess.resample_video(frames, video.timestamps, fps)
  window, fewshots = preprocess.WINDOW, config.meta.fewshots
  need = (fewshots + 1) * window
  if frames.shape[0] < need:
    raise DataError(
        f"{path}: too short: {frames.shape[0]} frames ({frames.shape[0] / fps:.1f} s at "
        f"{fps:g} fps); needs at least {need} frames ({need / fps:.0f} s): {fewshots} "
        f"adaptation window(s) and one window to predict, {window} frames each")
  crops = faces.face_crops(frames, source=str(path))
  starts = preprocess.window_starts(frames.shape[0], window, window)
  record = {"frames": crops.crops, "mask": crops.masks,
            "ppg": np.zeros(frames.shape[0], np.float32),
            "hr": np.full(frames.shape[0], np.nan, np.float32), "has_ppg": False}
  w = input_pipeline.load_windows(record, starts, window=window,
                                  normalization=config.data.normalization)
  return {"x": w["x"], "fps": fps, "path": str(path),
          "num_frames": int(frames.shape[0]),
          "face_fraction": float(np.mean(crops.detected)) if len(crops.detected) else 0.0}


def predict_clip(clip: dict, config, state) -> dict[str, Any]:
  """rPPG signal and heart rates of one video's clip (`load_clip`; module docstring).

  Returns:
    {"signal": f32[L] (expected level per predicted frame), "time_s": f64[L] (from the
     video's start), "hr_bpm": overall HR, "windows": [{start_s, end_s, hr_bpm}], "fps",
     "support_s", ...}.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from metarppg_jax import heart_rate  # pylint: disable=g-import-not-at-top
  from metarppg_jax import inference  # pylint: disable=g-import-not-at-top
  from metarppg_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  fps, window, fewshots = clip["fps"], preprocess.WINDOW, config.meta.fewshots
  out = inference.evaluate_videos(config, state, jnp.asarray(clip["x"][None]), adapt=True)
  signal = np.asarray(out["expected_level"][0]).reshape(-1).astype(np.float32)
  offset_s = fewshots * window / fps
  time_s = offset_s + np.arange(signal.size) / fps
  hr_fn = heart_rate.estimator(config.eval.hr_estimator)
  window_s = min(config.eval.hr_window_s, signal.size / fps)
  wins, starts = heart_rate.signal_windows(signal, fps, window_s, config.eval.hr_stride_s)
  hrs = hr_fn(wins, fps)
  n = wins.shape[-1]
  return {
      "video": clip["path"], "fps": fps, "num_frames": clip["num_frames"],
      "support_s": offset_s, "face_detected_fraction": clip["face_fraction"],
      "hr_bpm": float(hr_fn(signal, fps)),
      "windows": [{"start_s": float(offset_s + s / fps), "end_s": float(offset_s + (s + n) / fps),
                   "hr_bpm": float(h)} for s, h in zip(starts, hrs)],
      "hr_window_s": float(window_s), "signal": signal, "time_s": time_s,
  }


def write_outputs(result: dict, out_dir: str | os.PathLike) -> dict[str, str]:
  """signal.csv, prediction.json, signal.png, spectrum.png in `out_dir`; returns the paths."""
  from metarppg_jax import reports  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  csv = out / "signal.csv"
  np.savetxt(csv, np.stack([result["time_s"], result["signal"]], axis=1), delimiter=",",
             header="time_s,rppg", comments="", fmt=["%.4f", "%.6f"])
  summary = {k: v for k, v in result.items() if k not in ("signal", "time_s")}
  summary["signal"] = {"time_s": np.round(result["time_s"], 4).tolist(),
                       "rppg": result["signal"].astype(float).tolist()}
  js = out / "prediction.json"
  js.write_text(json.dumps(summary, indent=2) + "\n")
  png = reports.plot_signal(
      out / "signal.png", result["signal"], None, result["fps"],
      title=f"{pathlib.Path(result['video']).name}: {result['hr_bpm']:.1f} bpm overall",
      start_s=result["support_s"], spans=[(w["start_s"], w["end_s"]) for w in result["windows"]])
  spectrum = reports.plot_spectrum(out / "spectrum.png", result["signal"], result["fps"],
                                   title="power spectrum of the rPPG signal")
  return {"csv": str(csv), "json": str(js), "plot": str(png), "spectrum": str(spectrum)}


def run(video: str, *, workdir: str | None = None, checkpoint: str | None = None,
        config_file: str | None = None, out: str | None = None) -> dict:
  """Restores the model, predicts, writes the outputs; returns the result and file paths."""
  if not pathlib.Path(video).exists():
    raise DataError(f"{video}: file not found")
  config, restore = model(workdir=workdir, checkpoint=checkpoint, config_file=config_file)
  clip = load_clip(video, config)  # bad videos fail here, before the model is restored
  state, result_source = restore()
  result = predict_clip(clip, config, state)
  result["checkpoint"] = result_source
  if out is None:
    base = pathlib.Path(workdir) if workdir else pathlib.Path(".")
    out = base / "predictions" / pathlib.Path(video).stem
  result["files"] = write_outputs(result, out)
  return result


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m metarppg_jax.predict VIDEO [--workdir DIR] "
                         "[--checkpoint PATH] [--config FILE] [--out DIR]")
  try:
    result = run(argv[1], workdir=FLAGS.workdir, checkpoint=FLAGS.checkpoint,
                 config_file=FLAGS.config, out=FLAGS.out)
  except MetaRPPGError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"{argv[1]}: {result['hr_bpm']:.1f} bpm overall "
        f"({len(result['windows'])} window(s) of {result['hr_window_s']:g} s)")
  for w in result["windows"]:
    print(f"  {w['start_s']:7.1f} - {w['end_s']:7.1f} s: {w['hr_bpm']:6.1f} bpm")
  print(f"outputs: {result['files']['json']}, {result['files']['csv']}, "
        f"{result['files']['plot']}")
  summary = {"video": argv[1], "hr_bpm": round(result["hr_bpm"], 2),
             "windows": len(result["windows"]), "hr_window_s": result["hr_window_s"],
             "checkpoint": result["checkpoint"], "prediction": result["files"]["json"]}
  print(json.dumps(summary))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
