"""Signal quality, beats, heart-rate variability and respiration from an rPPG signal.

- `quality`: a 0..1 score of how clearly the heart rate stands out, from de Haan's SNR
  (`heart_rate.snr`, dB) at the signal's own spectral peak, mapped linearly from
  `SNR_FLOOR_DB` (0: what a window of white noise scores: measured median -5.3 dB, 99th
  percentile -1.3 dB over 2000 windows of 10 s at 30 fps) to `SNR_GOOD_DB` (1: a clearly
  periodic pulse; clean synthetic videos score 10..13 dB through POS, compressed and noisy
  ones 4..8 dB). On harder videos it separates poorly: over 252 windows of 10 s of POS on
  12 synthetic "source" and "shifted" videos, those within 3 bpm of the truth had a median
  SNR of -0.1 dB (5th percentile -5.5 dB), the others -2.9 dB (95th percentile 0.0 dB).
- `find_beats`: systolic peak times. The rule: orient the signal so that blood volume is up
  (`orient`), band-pass it (Butterworth order 2, zero phase) from 0.5 Hz to 1.8 times the
  heart rate read from its spectrum (keeps the beat-to-beat and respiratory modulation, which
  are sidebands of at most +-0.5 Hz, and drops the dicrotic wave and the harmonics that make
  a second peak a beat), upsample it 8 times (`scipy.signal.resample_poly`), then NeuroKit2's
  Elgendi detector (`ppg_findpeaks`) and its Kubios artefact correction (`signal_fixpeaks`:
  missed, extra and misplaced beats, Lipponen & Tarvainen 2019). Each beat is then placed to
  a fraction of a frame by template matching (`_refine`): the signal band-passed only from
  0.5 Hz to 0.45 fps (the beat's whole shape), upsampled 8 times, each beat's +-0.3 periods
  cross-correlated with the mean beat over +-60 ms, the best lag refined by a parabola. The
  peak's tip alone, 1..2 samples at 30 fps, moves with the sampling phase and the neighbouring
  beats by a few ms, which is the size of the synthetic videos' RMSSD (4..15 ms): measured on 5
  clean 30 s videos (128 x 128, known face box) through POS, RMSSD errors of 9..26 % from the
  tips and -1..16 % with the template (the generator's own PPG: 6..25 % and 0..3 %) when this
  was written; -1..9 % with the template on the generator as committed since.
- `hrv_time`: SDNN, RMSSD (ms) and pNN50 (%) of the beat intervals (NeuroKit2 `hrv_time`).
- `respiration_rate`: breaths a minute from respiratory sinus arrhythmia: the instantaneous
  heart rate at the beats, interpolated to 4 Hz, high-passed at 0.08 Hz (heart-rate drifts
  slower than the slowest breathing would otherwise take the peak), and its spectral peak in
  0.1..0.5 Hz (6..30 breaths a minute) by `heart_rate.hr_estimate`'s refined peak picking.
  From the generator's own beats (`synthetic.pulse_signal`, 30 pulses of 60 s, 3 spans of
  30 s each), 94 % of the estimates were within 1 breath a minute of its respiration rate.

Signal layer: imports no model code.
"""

import warnings

import neurokit2 as nk
import numpy as np
from scipy import interpolate
from scipy import signal as sps

from metarppg_jax import heart_rate

SNR_FLOOR_DB = -5.0           # quality 0: the SNR of white noise at its own peak
SNR_GOOD_DB = 5.0             # quality 1
BEAT_BAND_LOW_HZ = 0.5
BEAT_BAND_HR_MULTIPLE = 1.8   # upper edge of the beat band, in multiples of the heart rate
UPSAMPLE = 8
RESP_BAND_HZ = (0.1, 0.5)
RESP_RATE_HZ = 4.0            # resampling rate of the instantaneous heart rate
RESP_HIGHPASS_HZ = 0.08       # below the slowest breathing (0.1 Hz)
TEMPLATE_HALF_PERIODS = 0.3   # a beat's half-width in the template match, in periods
TEMPLATE_MAX_LAG_S = 0.06     # how far the template match may move a beat
MIN_BEATS = 5                 # fewer beats give no HRV (4 intervals, 3 successive differences)


def quality(snr_db) -> np.ndarray:
  """SNR (dB) -> quality in 0..1 (module docstring); NaN SNR -> 0. f[...] -> f64[...]."""
  q = (np.asarray(snr_db, np.float64) - SNR_FLOOR_DB) / (SNR_GOOD_DB - SNR_FLOOR_DB)
  return np.where(np.isfinite(q), np.clip(q, 0.0, 1.0), 0.0)


def assess(sig, fps: float) -> tuple[float, float, float]:
  """Heart rate (bpm), SNR (dB) and quality of one signal f[n]; NaN HR / SNR for a flat one."""
  hr = float(heart_rate.hr_estimate(sig, fps))
  snr_db = float(heart_rate.snr(sig, fps, hr)) if np.isfinite(hr) else float("nan")
  return hr, snr_db, float(quality(snr_db))


def orient(sig, blood_down, fps: float) -> np.ndarray:
  """The signal f[n] at `fps` with its sign chosen so that it rises with blood volume.

  `blood_down` f[n] is a trace that falls when blood volume rises (e.g. the skin's green
  level: blood absorbs green light); the signal is flipped when it correlates positively
  with it after both are band-passed to the heart-rate band. rPPG methods differ in sign
  (POS, CHROM and GREEN fall with blood volume, a model trained on PPG rises), and the
  systolic peak is the sharp extremum only on the right side up.
  """
  x = np.asarray(sig, np.float64)
  ref = np.asarray(blood_down, np.float64)
  if x.shape != ref.shape or x.ndim != 1:
    raise ValueError(f"signal {x.shape} and reference {ref.shape} must both be f[n]")
  if x.size < 16:
    return x
  band = (heart_rate.HR_BAND_HZ[0], min(heart_rate.HR_BAND_HZ[1], 0.45 * fps))
  sos = sps.butter(2, band, btype="bandpass", fs=fps, output="sos")
  return -x if np.dot(sps.sosfiltfilt(sos, x), sps.sosfiltfilt(sos, ref)) > 0 else x


def find_beats(sig, fps: float, hr_bpm: float) -> np.ndarray:
  """Systolic peak times f64[B] (s from the signal's first sample) of a signal that rises
  with blood volume, f[n] at `fps`, whose heart rate is about `hr_bpm` (module docstring)."""
  x = np.asarray(sig, np.float64)
  if x.ndim != 1 or x.size < 4 or not np.isfinite(hr_bpm) or hr_bpm <= 0:
    return np.zeros(0)
  high = min(BEAT_BAND_HR_MULTIPLE * hr_bpm / 60.0, 0.45 * fps)
  if high <= BEAT_BAND_LOW_HZ:
    return np.zeros(0)
  sos = sps.butter(2, [BEAT_BAND_LOW_HZ, high], btype="bandpass", fs=fps, output="sos")
  y = sps.sosfiltfilt(sos, x, padlen=min(3 * (2 * len(sos) + 1), x.size - 1))
  up = sps.resample_poly(y, UPSAMPLE, 1)
  rate = fps * UPSAMPLE
  with warnings.catch_warnings():   # NeuroKit2 warns on short signals; too few beats is
    warnings.simplefilter("ignore")  # handled by the callers
    peaks = np.asarray(nk.ppg_findpeaks(up, sampling_rate=rate)["PPG_Peaks"], np.int64)
    if peaks.size >= MIN_BEATS:
      _, peaks = nk.signal_fixpeaks(peaks, sampling_rate=rate, method="Kubios")
  peaks = np.unique(np.asarray(peaks, np.int64))
  if peaks.size < MIN_BEATS:
    return peaks / rate
  broad = sps.butter(2, [BEAT_BAND_LOW_HZ, 0.45 * fps], btype="bandpass", fs=fps, output="sos")
  wide = sps.resample_poly(sps.sosfiltfilt(broad, x, padlen=min(15, x.size - 1)), UPSAMPLE, 1)
  return _refine(wide, peaks, int(TEMPLATE_HALF_PERIODS * 60.0 / hr_bpm * rate),
                 int(TEMPLATE_MAX_LAG_S * rate)) / rate


def _refine(x: np.ndarray, peaks: np.ndarray, half: int, lag: int) -> np.ndarray:
  """Peak positions f64[B] (samples) of x f[n] moved to the best match with the mean beat.

  peaks i[B]: first guesses; each beat is x[p - half .. p + half], the template their mean;
  lags up to +-`lag` samples, refined by a parabola through the correlation's maximum. Beats
  too near the ends to compare keep their first guess.
  """
  out = peaks.astype(np.float64)
  ok = (peaks - half - lag >= 0) & (peaks + half + lag < x.size)
  if ok.sum() < 2 or half < 1:
    return out
  p = peaks[ok]
  template = np.mean([x[q - half:q + half + 1] for q in p], axis=0)
  # Correlation of each beat's neighbourhood with the template at every lag: f[B', 2 lag + 1].
  segments = np.stack([x[q - half - lag:q + half + lag + 1] for q in p])
  corr = np.lib.stride_tricks.sliding_window_view(segments, 2 * half + 1, axis=1) @ template
  k = np.argmax(corr, axis=1)
  inner = (k > 0) & (k < corr.shape[1] - 1)
  kk = np.clip(k, 1, corr.shape[1] - 2)
  rows = np.arange(len(p))
  a, b, c = corr[rows, kk - 1], corr[rows, kk], corr[rows, kk + 1]
  denom = a - 2 * b + c
  delta = np.where(inner & (denom < 0), 0.5 * (a - c) / np.where(denom < 0, denom, -1.0), 0.0)
  out[ok] = p + (k - lag) + np.clip(delta, -0.5, 0.5)
  return out


def hrv_time(beats) -> dict[str, float] | None:
  """{"sdnn_ms", "rmssd_ms", "pnn50_pct"} of beat times f[B] (s), or None under MIN_BEATS."""
  b = np.asarray(beats, np.float64)
  if b.size < MIN_BEATS:
    return None
  ms = np.round(b * 1000).astype(np.int64)       # peaks as sample indices at 1000 Hz
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    table = nk.hrv_time(ms, sampling_rate=1000)
  return {"sdnn_ms": float(table["HRV_SDNN"].iloc[0]),
          "rmssd_ms": float(table["HRV_RMSSD"].iloc[0]),
          "pnn50_pct": float(table["HRV_pNN50"].iloc[0])}


def respiration_rate(beats) -> float:
  """Breaths a minute from the beat times f[B] (s) by respiratory sinus arrhythmia (module
  docstring); NaN when the beats span less than two slowest breaths (20 s) or are too few."""
  b = np.asarray(beats, np.float64)
  if b.size < MIN_BEATS or b[-1] - b[0] < 2.0 / RESP_BAND_HZ[0]:
    return float("nan")
  mid = (b[1:] + b[:-1]) / 2
  rate = 60.0 / np.diff(b)
  t = np.arange(mid[0], mid[-1], 1.0 / RESP_RATE_HZ)
  if t.size < 8:
    return float("nan")
  series = interpolate.CubicSpline(mid, rate)(t)
  sos = sps.butter(2, RESP_HIGHPASS_HZ, btype="highpass", fs=RESP_RATE_HZ, output="sos")
  series = sps.sosfiltfilt(sos, series, padlen=min(9, series.size - 1))
  return float(heart_rate.hr_estimate(series, RESP_RATE_HZ, band=RESP_BAND_HZ))
