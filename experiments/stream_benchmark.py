r"""Live heart rate (`metarppg_jax.stream`) on synthetic videos: speed, drops, latency, accuracy.

  python experiments/stream_benchmark.py --json experiments/results/stream.json \
      [--workdir DIR | --checkpoint PATH --config FILE] [--seconds 60] [--size 240x320]

Writes a 60 s synthetic "source" video and a "clean" one (lossless FFV1, `--size` H x W) and
streams them in-process:
- pos, --realtime on the source video: frames dropped, median latency (newest frame's arrival
  to the reading), and the share of readings after warm-up within 3 bpm of the truth (the
  generator's mean instantaneous HR over the reading's window);
- pos unpaced: processing speed as a multiple of real time (video seconds / wall seconds);
- pos unpaced on the clean video: SDNN and RMSSD of every reading with HRV against the
  generator's (`SyntheticVideo.beats` within the reading's HRV span): share within 20 %
  (target: 90 % of the readings); the respiration rate against `hrv.respiration_rate` of the
  true beats (the generator does not report its respiration rate);
- meta_rppg, --realtime and unpaced, with the model of --workdir / --checkpoint, else the
  packaged pretrained one, else a freshly initialised model of configs/default.py (untrained:
  its HR figures measure the plumbing, not the method): drops after adaptation, latency,
  speed, HR accuracy.

Every figure goes to --json with the unit in the key; `targets` says which pass.
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metarppg_jax import hrv  # pylint: disable=g-import-not-at-top,wrong-import-position
from metarppg_jax import stream  # pylint: disable=g-import-not-at-top,wrong-import-position
from metarppg_jax.data import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position
from metarppg_jax.data import video as video_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def _video(directory: pathlib.Path, domain: str, seed: int, seconds: float, size) -> tuple:
  v = synthetic.generate_video(seed, seconds=seconds, fps=30.0, domain=domain, size=size)
  path = directory / f"{domain}{seed}.avi"
  video_lib.write_video(path, v.frames, v.fps)
  return path, v


def _stream(path, opts, model=None) -> tuple[list[dict], dict, float]:
  lines: list[str] = []
  start = time.monotonic()
  summary = stream.run(str(path), opts, model=model, emit=lines.append)
  wall = time.monotonic() - start
  return [json.loads(x) for x in lines[:-1]], summary, wall


def _hr_accuracy(readings: list[dict], v, window_s: float) -> dict:
  """Share of readings after warm-up (t >= window_s) within 3 bpm of the truth (a reading
  without an HR counts as a miss), and the same share among the readings with an HR."""
  late = [r for r in readings if r["t"] >= window_s]
  errors = []
  for r in late:
    k = int(round(r["t"] * v.fps))
    truth = float(np.mean(v.hr[max(k - int(window_s * v.fps), 0):k + 1]))
    errors.append(abs(r["hr"] - truth) if r["hr"] is not None else np.inf)
  errors = np.asarray(errors)
  return {"readings_after_warmup": int(len(late)),
          "readings_with_hr": int(np.isfinite(errors).sum()),
          "within_3bpm_fraction": float(np.mean(errors <= 3.0)) if len(late) else None,
          "within_3bpm_of_readings_with_hr": float(np.mean(errors[np.isfinite(errors)] <= 3.0))
                                             if np.isfinite(errors).any() else None,
          "hr_mae_bpm": float(np.mean(errors[np.isfinite(errors)]))
                        if np.isfinite(errors).any() else None}


def _hrv_accuracy(readings: list[dict], v) -> dict:
  """SDNN / RMSSD of each reading with HRV against the generator's beats in its span."""
  rel = {"sdnn_ms": [], "rmssd_ms": []}
  resp = []
  for r in readings:
    if r["hrv"] is None:
      continue
    end = r["t"] + 1.0 / v.fps
    truth_beats = v.beats[(v.beats >= end - r["hrv"]["span_s"]) & (v.beats < end)]
    truth = hrv.hrv_time(truth_beats)
    for key in rel:
      rel[key].append(abs(r["hrv"][key] - truth[key]) / truth[key])
    if r["hrv"]["resp_rate_bpm"] is not None:
      resp.append(abs(r["hrv"]["resp_rate_bpm"] - hrv.respiration_rate(truth_beats)))
  out = {"readings_with_hrv": len(rel["sdnn_ms"]),
         # the rPPG beats' respiration rate against the same estimate from the true beats
         "resp_rate_vs_true_beats_median_abs_bpm": float(np.nanmedian(resp)) if resp else None}
  for key, errs in rel.items():
    name = key.replace("_ms", "")
    out[f"{name}_within_20pct_fraction"] = float(np.mean(np.asarray(errs) <= 0.2)) if errs else None
    out[f"{name}_median_rel_error"] = float(np.median(errs)) if errs else None
  return out


def _model(args):
  if args.workdir or args.checkpoint or args.config:
    return stream.load_model(args.workdir, args.checkpoint, args.config), "given"
  try:
    return stream.load_model(None, None, None), "pretrained"
  except stream.MetaRPPGError:     # no packaged model (or its weights are missing)
    from metarppg_jax import checkpoints  # pylint: disable=g-import-not-at-top
    from metarppg_jax import configuration  # pylint: disable=g-import-not-at-top
    config = configuration.from_file(REPO / "configs" / "default.py")
    return (config, checkpoints.target_state(config)), "untrained (initialised, configs/default.py)"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", default=str(REPO / "experiments" / "results" / "stream.json"))
  p.add_argument("--workdir")
  p.add_argument("--checkpoint")
  p.add_argument("--config")
  p.add_argument("--seconds", type=float, default=60.0)
  p.add_argument("--size", default="240x320", help="H x W of the synthetic videos")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--skip_meta", action="store_true")
  args = p.parse_args(argv)
  size = tuple(int(x) for x in args.size.split("x"))
  opts = stream.Options(method="pos")
  result: dict = {"video_s": args.seconds, "size": list(size), "fps": 30.0,
                  "window_s": opts.window_s, "hrv_window_s": opts.hrv_window_s}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    t0 = time.monotonic()
    src_path, src = _video(tmp, "source", args.seed, args.seconds, size)
    clean_path, clean = _video(tmp, "clean", args.seed, args.seconds, size)
    result["generate_s"] = round(time.monotonic() - t0, 1)

    readings, summary, wall = _stream(src_path, dataclasses.replace(opts, realtime=True))
    result["pos_realtime"] = {"frames_dropped": summary["frames_dropped"],
                              "median_latency_s": summary["median_latency_s"],
                              "processing_fps": summary["processing_fps"], "wall_s": round(wall, 1),
                              **_hr_accuracy(readings, src, opts.window_s)}
    print("pos realtime", result["pos_realtime"], flush=True)
    readings, summary, wall = _stream(src_path, opts)
    result["pos_unpaced"] = {"wall_s": round(wall, 2), "processing_fps": summary["processing_fps"],
                             "realtime_factor": round(summary["video_s"] / wall, 2),
                             **_hr_accuracy(readings, src, opts.window_s)}
    print("pos unpaced", result["pos_unpaced"], flush=True)
    readings, summary, wall = _stream(clean_path, opts)
    result["pos_clean_hrv"] = {**_hrv_accuracy(readings, clean),
                               **_hr_accuracy(readings, clean, opts.window_s)}
    print("pos clean hrv", result["pos_clean_hrv"], flush=True)

    if not args.skip_meta:
      model, which = _model(args)
      meta_opts = dataclasses.replace(opts, method="meta_rppg")
      result["meta_model"] = which
      readings, summary, wall = _stream(src_path, dataclasses.replace(meta_opts, realtime=True),
                                        model)
      result["meta_realtime"] = {
          "frames_dropped": summary["frames_dropped"],
          "dropped_after_adaptation": summary["dropped_after_adaptation"],
          "median_latency_s": summary["median_latency_s"], "compile_s": summary["compile_s"],
          "processing_fps": summary["processing_fps"], "wall_s": round(wall, 1),
          **_hr_accuracy(readings, src, opts.window_s)}
      print("meta realtime", result["meta_realtime"], flush=True)
      readings, summary, wall = _stream(src_path, meta_opts, model)
      result["meta_unpaced"] = {
          "wall_s": round(wall, 2), "compile_s": summary["compile_s"],
          "realtime_factor": round(summary["video_s"] / (wall - summary["compile_s"]), 2),
          **_hr_accuracy(readings, src, opts.window_s)}
      print("meta unpaced", result["meta_unpaced"], flush=True)

  pr, pu, ph = result["pos_realtime"], result["pos_unpaced"], result["pos_clean_hrv"]
  targets = {
      "pos_no_drop_realtime": pr["frames_dropped"] == 0,
      "pos_median_latency_under_0.5s": pr["median_latency_s"] < 0.5,
      "pos_unpaced_at_least_2x_realtime": pu["realtime_factor"] >= 2.0,
      "pos_hr_within_3bpm_90pct": (pr["within_3bpm_fraction"] or 0) >= 0.9,
      "sdnn_within_20pct": (ph["sdnn_within_20pct_fraction"] or 0) >= 0.9,
      "rmssd_within_20pct": (ph["rmssd_within_20pct_fraction"] or 0) >= 0.9,
  }
  if "meta_realtime" in result:
    mr, mu = result["meta_realtime"], result["meta_unpaced"]
    targets.update({
        "meta_no_drop_after_adaptation": mr["dropped_after_adaptation"] == 0,
        "meta_median_latency_under_0.5s": mr["median_latency_s"] < 0.5,
        "meta_unpaced_at_least_2x_realtime": mu["realtime_factor"] >= 2.0,
        "meta_hr_within_3bpm_90pct": (mr["within_3bpm_fraction"] or 0) >= 0.9,
    })
  result["targets"] = targets
  out = pathlib.Path(args.json)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(targets, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
