"""Ground-truth readers of the public rPPG datasets, with errors that name the file.

Each reader returns a `GroundTruth`: samples of the reference signal on their own clock
(seconds, relative to the first video frame where the dataset says when that was). The
builders resample it onto frame times (`preprocess.resample_signal`) and check its length
against the video's. The formats, as each dataset ships them:

- UBFC-rPPG DATASET_2 `ground_truth.txt`: 3 whitespace-separated lines PPG / HR / time (s);
  a 1-line PPG-only variant (one sample per frame, no times) is accepted.
- UBFC-rPPG DATASET_1 `gtdump.xmp`: CSV rows `ms, HR, SpO2, PPG`.
- PURE `NN-MM.json`: `/FullPackage[].Value.waveform|pulseRate`, `/FullPackage[].Timestamp`,
  `/Image[].Timestamp` (ns).
- MAHNOB-HCI `Part_*.bdf`: ECG leads EXG1-3 -> R peaks -> instantaneous HR; the `Status`
  channel's first and last non-zero samples mark video start and end.
- The original release's `example.pth`: dict of lists `image`, `mask`, `ppg` (torch tensors),
  loaded with `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np
from scipy import signal as sp_signal

from metarppg_jax.errors import DataError

# Instantaneous heart rates outside this range (bpm) are detector errors, not hearts.
HR_RANGE_BPM = (30.0, 240.0)
ECG_CHANNELS = ("EXG1", "EXG2", "EXG3")


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  """Reference signal samples of one video.

  Attributes:
    time: f64[S] sample times in seconds on the video's clock (0 = first frame), or None
      when the file has one sample per video frame and no times.
    ppg: f32[S] pulse wave (arbitrary units), or None (ECG-derived ground truth).
    hr: f32[S] heart rate (bpm) at the same times, or None.
    frame_time: f64[T] video frame times in seconds on the same clock, when the file has
      them (PURE), else None.
    source: the file it came from (for error messages).
  """
  time: Optional[np.ndarray]
  ppg: Optional[np.ndarray]
  hr: Optional[np.ndarray]
  frame_time: Optional[np.ndarray] = None
  source: str = ""


def _require_file(path: str) -> None:
  if not os.path.isfile(path):
    raise DataError(f"{path}: ground-truth file is missing")
  if os.path.getsize(path) == 0:
    raise DataError(f"{path}: ground-truth file is empty")


def _check_finite(path: str, what: str, values: np.ndarray) -> None:
  bad = ~np.isfinite(values)
  if bad.any():
    raise DataError(
        f"{path}: {what} has {int(bad.sum())} non-finite values (NaN/inf), first at "
        f"sample {int(np.argmax(bad))}")


def _check_increasing(path: str, what: str, t: np.ndarray) -> None:
  if t.size >= 2 and not np.all(np.diff(t) > 0):
    i = int(np.argmax(np.diff(t) <= 0))
    raise DataError(f"{path}: {what} are not strictly increasing (sample {i + 1}: "
                    f"{t[i + 1]!r} after {t[i]!r})")


def _parse_floats(path: str, line: str, lineno: int) -> np.ndarray:
  try:
    return np.array([float(v) for v in line.replace(",", " ").split()], np.float64)
  except ValueError as e:
    raise DataError(f"{path}: line {lineno} is not numeric ({e})") from None


def read_ubfc2(path: str) -> GroundTruth:
  """UBFC-rPPG DATASET_2 `ground_truth.txt`: lines PPG, HR (bpm), time (s).

  A single line is read as PPG with one sample per video frame (`time` None).
  """
  _require_file(path)
  with open(path, "r", errors="replace") as f:
    lines = [ln for ln in f.read().splitlines() if ln.strip()]
  if not lines:
    raise DataError(f"{path}: ground-truth file has no values")
  if len(lines) not in (1, 3):
    raise DataError(f"{path}: expected 3 lines (PPG, HR, time) or 1 line (PPG), found "
                    f"{len(lines)}")
  rows = [_parse_floats(path, ln, i + 1) for i, ln in enumerate(lines)]
  if len(rows) == 1:
    _check_finite(path, "PPG (line 1)", rows[0])
    return GroundTruth(time=None, ppg=rows[0].astype(np.float32), hr=None, source=path)
  lengths = {len(r) for r in rows}
  if len(lengths) != 1:
    raise DataError(f"{path}: lines have different lengths {[len(r) for r in rows]}")
  ppg, hr, t = rows
  for what, v in (("PPG (line 1)", ppg), ("HR (line 2)", hr), ("time (line 3)", t)):
    _check_finite(path, what, v)
  _check_increasing(path, "times (line 3)", t)
  return GroundTruth(time=t - t[0], ppg=ppg.astype(np.float32), hr=hr.astype(np.float32),
                     source=path)


def read_ubfc1(path: str) -> GroundTruth:
  """UBFC-rPPG DATASET_1 `gtdump.xmp`: CSV rows `time_ms, HR, SpO2, PPG`, no header."""
  _require_file(path)
  rows = []
  with open(path, "r", errors="replace") as f:
    for i, line in enumerate(f):
      if not line.strip():
        continue
      values = _parse_floats(path, line, i + 1)
      if values.size < 4:
        raise DataError(f"{path}: line {i + 1} has {values.size} columns, expected 4 "
                        "(ms, HR, SpO2, PPG)")
      rows.append(values[:4])
  if not rows:
    raise DataError(f"{path}: ground-truth file has no rows")
  table = np.stack(rows)
  _check_finite(path, "values", table)
  t = table[:, 0] / 1000.0
  _check_increasing(path, "times (column 1)", t)
  return GroundTruth(time=t - t[0], ppg=table[:, 3].astype(np.float32),
                     hr=table[:, 1].astype(np.float32), source=path)


def read_pure(path: str) -> GroundTruth:
  """PURE `NN-MM.json`: oximeter waveform and pulse rate, image timestamps (ns).

  Times are relative to the first image's timestamp.
  """
  _require_file(path)
  try:
    with open(path, "r") as f:
      doc = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(doc, dict):
    raise DataError(f"{path}: expected a JSON object with '/FullPackage' and '/Image'")
  package, images = doc.get("/FullPackage"), doc.get("/Image")
  if not package:
    raise DataError(f"{path}: no '/FullPackage' entries (no pulse waveform)")
  if not images:
    raise DataError(f"{path}: no '/Image' entries (no frame timestamps)")
  try:
    # ns since 1970 need int64: float64 would round them to ~256 ns.
    ts = np.array([int(p["Timestamp"]) for p in package], np.int64)
    wave = np.array([p["Value"]["waveform"] for p in package], np.float64)
    rate = np.array([p["Value"].get("pulseRate", np.nan) for p in package], np.float64)
    frame_ts = np.array([int(im["Timestamp"]) for im in images], np.int64)
  except (KeyError, TypeError) as e:
    raise DataError(f"{path}: missing field {e} in '/FullPackage' or '/Image' "
                    "(need Timestamp and Value.waveform)") from None
  except (ValueError, OverflowError) as e:
    raise DataError(f"{path}: non-numeric value ({e})") from None
  _check_finite(path, "waveform", wave)
  _check_increasing(path, "/FullPackage timestamps", ts)
  _check_increasing(path, "/Image timestamps", frame_ts)
  t0 = frame_ts[0]
  hr = rate.astype(np.float32) if np.all(np.isfinite(rate)) else None
  return GroundTruth(time=(ts - t0).astype(np.float64) / 1e9, ppg=wave.astype(np.float32),
                     hr=hr, frame_time=(frame_ts - t0).astype(np.float64) / 1e9, source=path)


def ecg_r_peaks(ecg: np.ndarray, fs: float) -> np.ndarray:
  """R-peak sample indices of one ECG lead (Pan-Tompkins-like; either polarity).

  Band-pass 5-15 Hz (the QRS band), differentiate, square, integrate over 150 ms, then peaks
  at least 250 ms apart (240 bpm) above 30 % of the 99th percentile of the integrated energy.

  Args:
    ecg: f[S] one lead.
    fs: sampling rate (Hz).
  Returns:
    i64[P] peak indices into `ecg`.
  """
  ecg = np.asarray(ecg, np.float64)
  if ecg.size < int(2 * fs):
    return np.zeros((0,), np.int64)
  b, a = sp_signal.butter(3, [5.0, min(15.0, 0.45 * fs)], btype="band", fs=fs)
  band = sp_signal.filtfilt(b, a, ecg - ecg.mean())
  energy = np.gradient(band) ** 2
  width = max(1, int(round(0.15 * fs)))
  integrated = np.convolve(energy, np.ones(width) / width, mode="same")
  threshold = 0.3 * np.percentile(integrated, 99)
  if not threshold > 0:
    return np.zeros((0,), np.int64)
  peaks, _ = sp_signal.find_peaks(integrated, height=threshold,
                                  distance=max(1, int(round(0.25 * fs))))
  return peaks.astype(np.int64)


def heart_rate_from_peaks(peak_times: np.ndarray):
  """Instantaneous HR (bpm) at beat midpoints; implausible intervals dropped.

  Args:
    peak_times: f64[P] beat times (s).
  Returns:
    (f64[B] times, f64[B] bpm), B <= P - 1.
  """
  rr = np.diff(peak_times)
  bpm = 60.0 / np.where(rr > 0, rr, np.inf)
  keep = (bpm > HR_RANGE_BPM[0]) & (bpm < HR_RANGE_BPM[1])
  mid = 0.5 * (peak_times[1:] + peak_times[:-1])
  return mid[keep], bpm[keep]


def _rr_irregularity(bpm: np.ndarray) -> float:
  # Relative median successive difference: small for a clean lead, large for noise.
  if bpm.size < 3:
    return np.inf
  return float(np.median(np.abs(np.diff(bpm))) / np.median(bpm))


def read_mahnob_bdf(path: str, *, ecg_channels: Sequence[str] = ECG_CHANNELS,
                    status_channel: str = "Status") -> GroundTruth:
  """MAHNOB-HCI `Part_*.bdf`: ECG-derived heart rate on the video's clock.

  The `Status` channel's first and last non-zero samples mark the video's start and end (as
  bob.db.hci_tagging does). R peaks are found on each available ECG lead (EXG1-3); the lead
  with the most regular beat-to-beat intervals is used.

  Returns:
    GroundTruth with `ppg` None, `hr` f32[B] at beat midpoints `time` f64[B] (s since video
    start), covering the video's duration.
  """
  _require_file(path)
  import pyedflib  # pylint: disable=g-import-not-at-top

  try:
    reader = pyedflib.EdfReader(path)
  except OSError as e:
    raise DataError(f"{path}: not a readable BDF/EDF file ({e})") from None
  try:
    labels = [l.strip() for l in reader.getSignalLabels()]
    if status_channel not in labels:
      raise DataError(f"{path}: no '{status_channel}' channel to synchronise with the video "
                      f"(channels: {labels})")
    leads = [c for c in ecg_channels if c in labels]
    if not leads:
      raise DataError(f"{path}: no ECG channels {list(ecg_channels)} (channels: {labels})")
    si = labels.index(status_channel)
    status = np.rint(reader.readSignal(si)).astype(np.int64)
    fs_status = reader.getSampleFrequency(si)
    active = np.flatnonzero(status != 0)
    if active.size == 0:
      raise DataError(f"{path}: '{status_channel}' channel is all zero: no video trigger")
    start_s, end_s = active[0] / fs_status, active[-1] / fs_status
    best = None
    for lead in leads:
      li = labels.index(lead)
      fs = reader.getSampleFrequency(li)
      ecg = reader.readSignal(li)
      _check_finite(path, f"ECG channel {lead}", ecg)
      lo, hi = int(np.floor(start_s * fs)), int(np.ceil(end_s * fs)) + 1
      # A margin of 2 s around the video so the first and last beats are found.
      margin = int(2 * fs)
      seg_start = max(0, lo - margin)
      peaks = ecg_r_peaks(ecg[seg_start:hi + margin], fs)
      t, bpm = heart_rate_from_peaks((peaks + seg_start) / fs - start_s)
      score = _rr_irregularity(bpm)
      if best is None or score < best[0]:
        best = (score, lead, t, bpm)
  finally:
    reader.close()
  score, lead, t, bpm = best
  if not np.isfinite(score):
    raise DataError(f"{path}: no usable R peaks in ECG channels {leads} between the video "
                    f"trigger marks ({start_s:.2f} s .. {end_s:.2f} s)")
  return GroundTruth(time=t, ppg=None, hr=bpm.astype(np.float32), source=path)


def read_meta_rppg_example(path: str) -> dict:
  """The original release's `example.pth`: per-video image, mask, ppg.

  Loaded with `torch.load(weights_only=True)`; a file holding pickled objects (anything but
  tensors and plain containers) is refused, never unpickled.

  Returns:
    {"image": [f32[T, 3, 64, 64]], "mask": [f32[T, 3, 64, 64] (0/255)], "ppg": [f32[T]]},
    lists of numpy arrays, one entry per video.
  """
  _require_file(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError(f"{path}: reading the original example.pth needs torch "
                    "(pip install 'metarppg_jax[torch]')") from None
  try:
    doc = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    # weights_only refuses arbitrary objects (pickle.UnpicklingError) -- never retry unsafe.
    raise DataError(f"{path}: cannot be read safely with torch.load(weights_only=True): "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
  if not isinstance(doc, dict):
    raise DataError(f"{path}: expected a dict with keys 'image', 'mask', 'ppg', found "
                    f"{type(doc).__name__}")
  missing = [k for k in ("image", "mask", "ppg") if k not in doc]
  if missing:
    raise DataError(f"{path}: missing keys {missing} (found {sorted(map(str, doc))})")
  out = {}
  for key in ("image", "mask", "ppg"):
    values = doc[key]
    if isinstance(values, torch.Tensor):
      values = list(values)
    if not isinstance(values, (list, tuple)):
      raise DataError(f"{path}: '{key}' should be a list of tensors, found "
                      f"{type(values).__name__}")
    arrays = []
    for i, v in enumerate(values):
      if not isinstance(v, torch.Tensor):
        raise DataError(f"{path}: '{key}'[{i}] is {type(v).__name__}, not a tensor")
      arrays.append(v.detach().to(torch.float32).numpy())
    out[key] = arrays
  n = {k: len(v) for k, v in out.items()}
  if len(set(n.values())) != 1:
    raise DataError(f"{path}: lists have different lengths {n}")
  if n["image"] == 0:
    raise DataError(f"{path}: no videos in the file")
  return out
