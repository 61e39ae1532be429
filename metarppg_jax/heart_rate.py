"""Heart rate from an rPPG signal: the original's `get_bpm` and the project's sound estimator.

Every function works on the last axis of `sig f[..., n]` and keeps the leading (batch) axes.

- `hr_reference`: the original release's `get_bpm`, bit for bit (the peak of one
  Welch segment over the whole window): no band limit, resolution `60 fps / n` bpm (30 bpm on a 2 s window).
- `hr_estimate` (the default everywhere): linear detrend, Hann window, a zero-padded FFT
  (or Welch for long signals), the largest peak inside the heart-rate band (0.7-3.5 Hz,
  42-210 bpm), refined by a parabola through the log power of the peak bin and its two
  neighbours: sub-bpm on 10 s windows.
- `snr`: de Haan's SNR in dB of a signal given its heart rate.
- `power_spectrum`: the one spectrum used by `hr_estimate`, `snr` and the plots.
- `levels_to_signal`: the rPPG signal from the ordinal head's outputs; `expected_level` and
  `decision_to_level`, its two forms, also take jax arrays (traced, inside jit).
- `signal_windows`: cut a long signal into the project's windows (`preprocess.window_starts`).

Windows whose signal is flat (zero power in the band) or not finite get a NaN heart rate
(and SNR) from `hr_estimate` / `snr`: there is no heart rate to read; `metrics.hr_metrics`
counts them as invalid.
"""

import math
from typing import Literal, Sequence

import numpy as np
from scipy import signal as sps

from metarppg_jax import errors
from metarppg_jax.data import preprocess

HR_BAND_HZ = (0.7, 3.5)          # 42-210 bpm
_TARGET_BIN_BPM = 0.25           # default zero-padding: FFT bins at most this far apart
_WELCH_SEGMENT_S = 10.0          # default Welch segment length

Method = Literal["fft", "welch"]


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------

def _as_signal(sig, min_len: int, what: str = "signal", dtype=np.float64) -> np.ndarray:
  x = np.asarray(sig, dtype=dtype)
  if x.ndim == 0 or x.shape[-1] < min_len:
    raise errors.DataError(
        f"{what} of shape {np.shape(sig)} is too short: need at least {min_len} samples on the "
        "last (time) axis")
  return x


def _check_fps(fps: float) -> float:
  fps = float(fps)
  if not math.isfinite(fps) or fps <= 0:
    raise errors.DataError(f"frame rate fps={fps} must be a positive number")
  return fps


def check_band(band: Sequence[float], fps: float) -> tuple[float, float]:
  """The band (Hz), its top clipped to the Nyquist frequency."""
  lo, hi = float(band[0]), float(band[1])
  nyquist = fps / 2
  if not (0 <= lo < hi) or lo >= nyquist:
    raise errors.ConfigError(
        f"heart-rate band {band} Hz must satisfy 0 <= low < high and low < Nyquist "
        f"({nyquist} Hz at {fps} fps)")
  return lo, min(hi, nyquist)


# --------------------------------------------------------------------------------------------
# The original estimator
# --------------------------------------------------------------------------------------------

def hr_reference(sig, fps: float = 30.0) -> np.ndarray:
  """The original release's `get_bpm(sig, fps)`: f[..., n] -> f64[...] bpm, exactly.

  Mean removal, times a symmetric Hann window (`scipy.signal.windows.hann(n)`), then
  `scipy.signal.welch(sig, fps, nperseg=n)` with its defaults (periodic Hann, one segment,
  constant detrend, one-sided density), HR = round(60 f[argmax]) with halves to even (Python's
  `round` on a float, as `np.round`). No band limit: a window with more power near DC than at
  the pulse gives a low HR, which is what the original reported.
  """
  fps = _check_fps(fps)
  x = np.asarray(sig)
  # The original subtracts the mean in the input's own precision (float32 from torch), then
  # the float64 window promotes: keep that order so float32 inputs match it exactly too.
  x = _as_signal(x, 2, dtype=x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)
  n = x.shape[-1]
  if x.size == 0:
    return np.zeros(x.shape[:-1])
  x = (x - x.mean(axis=-1, keepdims=True)) * sps.windows.hann(n)
  freqs, pxx = sps.welch(x, fps, nperseg=n, axis=-1)
  return np.round(freqs[np.argmax(pxx, axis=-1)] * 60.0)


# --------------------------------------------------------------------------------------------
# The spectrum
# --------------------------------------------------------------------------------------------

def default_pad_to(n: int, fps: float) -> int:
  """FFT length for `n` samples: a power of two with bins <= 0.25 bpm apart (8192 at 30 fps)."""
  need = max(n, math.ceil(60.0 * fps / _TARGET_BIN_BPM))
  return 1 << (need - 1).bit_length()


def power_spectrum(sig, fps: float, *, method: Method = "fft", pad_to: int | None = None,
                   segment_s: float = _WELCH_SEGMENT_S) -> tuple[np.ndarray, np.ndarray]:
  """One-sided power spectral density of the linearly detrended signal.

  Args:
    sig: f[..., n], n >= 4.
    fps: sampling rate (Hz).
    method: "fft": one Hann-windowed periodogram of the whole signal; "welch": Hann segments of
      `segment_s` seconds (or the whole signal if shorter), half overlapping, averaged (lower
      variance on long signals, coarser peak).
    pad_to: FFT length (zero padding; >= the segment length). Default `default_pad_to`.
    segment_s: Welch segment length in seconds.

  Returns:
    (freqs f64[F] in Hz, power f64[..., F]), F = pad_to // 2 + 1; units signal^2 / Hz; NaN
    rows for signals with a non-finite sample.
  """
  fps = _check_fps(fps)
  x = _as_signal(sig, 4)
  n = x.shape[-1]
  if method == "fft":
    nperseg = n
  elif method == "welch":
    nperseg = min(n, max(4, int(round(segment_s * fps))))
  else:
    raise errors.ConfigError(f"spectrum method {method!r} is not one of 'fft', 'welch'")
  nfft = default_pad_to(nperseg, fps) if pad_to is None else int(pad_to)
  if nfft < nperseg:
    raise errors.ConfigError(f"pad_to={pad_to} is shorter than the segment ({nperseg} samples)")
  if x.size == 0:                                # no windows (a video shorter than one)
    freqs = np.fft.rfftfreq(nfft, 1.0 / fps)
    return freqs, np.zeros(x.shape[:-1] + freqs.shape)
  # A signal with a NaN/inf has no spectrum: NaN power (not an exception from the batch).
  bad = ~np.all(np.isfinite(x), axis=-1, keepdims=True)
  x = np.where(bad, 0.0, x)
  # Linear detrend first (the whole signal), so slow drifts do not leak into the band; Welch
  # then removes each segment's own linear trend.
  x = sps.detrend(x, axis=-1, type="linear")
  freqs, power = sps.welch(x, fps, window="hann", nperseg=nperseg, noverlap=nperseg // 2,
                           nfft=nfft, detrend="linear" if method == "welch" else False, axis=-1)
  return freqs, np.where(bad, np.nan, power)


# --------------------------------------------------------------------------------------------
# The sound estimator
# --------------------------------------------------------------------------------------------

def _band_peak(freqs: np.ndarray, power: np.ndarray, band: tuple[float, float]) -> np.ndarray:
  """Peak frequency (Hz) in the band, refined by a parabola through log power; f64[...]."""
  inside = np.flatnonzero((freqs >= band[0]) & (freqs <= band[1]))
  if inside.size == 0:
    raise errors.ConfigError(f"no spectrum bin inside the band {band} Hz; raise pad_to")
  k = inside[0] + np.argmax(power[..., inside], axis=-1)
  # Neighbours may lie just outside the band: the full spectrum is there, use it.
  km, kp = np.maximum(k - 1, 0), np.minimum(k + 1, freqs.size - 1)
  take = lambda idx: np.take_along_axis(power, idx[..., None], axis=-1)[..., 0]
  with np.errstate(divide="ignore", invalid="ignore"):
    a, b, c = (np.log(take(i)) for i in (km, k, kp))
    denom = a - 2 * b + c
    delta = np.where((denom < 0) & np.isfinite(denom), 0.5 * (a - c) / denom, 0.0)
  delta = np.clip(delta, -0.5, 0.5)
  df = freqs[1] - freqs[0]
  f = np.clip(freqs[k] + delta * df, band[0], band[1])
  peak = take(k)
  # A flat or non-finite window has no heart rate.
  return np.where(np.isfinite(peak) & (peak > 0), f, np.nan)


def hr_estimate(sig, fps: float, *, band: Sequence[float] = HR_BAND_HZ, method: Method = "fft",
                pad_to: int | None = None, segment_s: float = _WELCH_SEGMENT_S) -> np.ndarray:
  """Heart rate (bpm) of each signal: f[..., n] -> f64[...], NaN for flat / non-finite ones.

  The largest peak of `power_spectrum` inside `band` (Hz), refined by quadratic interpolation
  on the log power (exact for a Gaussian-shaped peak; the Hann main lobe is close to one), so
  the error is well under the 0.25 bpm bin spacing of the default zero padding. Use
  method="welch" on signals much longer than `segment_s` seconds.
  """
  fps = _check_fps(fps)
  band = check_band(band, fps)
  freqs, power = power_spectrum(sig, fps, method=method, pad_to=pad_to, segment_s=segment_s)
  return 60.0 * _band_peak(freqs, power, band)


def snr(sig, fps: float, hr_bpm, *, band: Sequence[float] = HR_BAND_HZ, tol_bpm: float = 6.0,
        method: Method = "fft", pad_to: int | None = None) -> np.ndarray:
  """Signal-to-noise ratio in dB (de Haan & Jeanne 2013): f[..., n], hr f[...] -> f64[...].

  `10 log10(P_signal / P_noise)` over the band, where P_signal is the power within
  +-`tol_bpm` of the heart rate and of its first harmonic (2 HR; only the part inside the band
  counts) and P_noise the rest of the band. `hr_bpm` broadcasts against the leading axes; pass
  the true HR to score a signal, or its own `hr_estimate` for a reference-free SNR.
  NaN where the HR is NaN or the band holds no power; +inf where all of it is at the HR.
  """
  fps = _check_fps(fps)
  band = check_band(band, fps)
  freqs, power = power_spectrum(sig, fps, method=method, pad_to=pad_to)
  hr = np.asarray(hr_bpm, dtype=np.float64)
  try:
    np.broadcast_shapes(hr.shape, power.shape[:-1])
  except ValueError:
    raise errors.DataError(f"hr_bpm of shape {hr.shape} does not broadcast against the "
                           f"signals' leading axes {power.shape[:-1]}") from None
  hr_hz = hr[..., None] / 60.0
  tol_hz = tol_bpm / 60.0
  in_band = (freqs >= band[0]) & (freqs <= band[1])
  near = (np.abs(freqs - hr_hz) <= tol_hz) | (np.abs(freqs - 2 * hr_hz) <= tol_hz)
  p_sig = np.sum(np.where(near & in_band, power, 0.0), axis=-1)
  p_noise = np.sum(np.where(~near & in_band, power, 0.0), axis=-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    out = 10.0 * np.log10(p_sig / p_noise)
  hr_ok = np.isfinite(np.broadcast_to(hr_hz[..., 0], out.shape))
  return np.where(hr_ok & (p_sig + p_noise > 0), out, np.nan)


# The estimators by their config name (`config.eval.hr_estimator`): f(sig, fps) -> bpm.
HR_ESTIMATORS = {"sound": hr_estimate, "reference": hr_reference}


def estimator(name: str):
  """The heart-rate estimator called `name` ("sound" or "reference"): f(sig, fps) -> f64[...]."""
  if name not in HR_ESTIMATORS:
    raise errors.ConfigError(
        f"eval.hr_estimator={name!r} is not one of {sorted(HR_ESTIMATORS)}")
  return HR_ESTIMATORS[name]


# --------------------------------------------------------------------------------------------
# Signals from the model and windows
# --------------------------------------------------------------------------------------------

def expected_level(prob):
  """prob f[..., T, L] (P(signal above level k)) -> the expected level f[..., T]: sum_k p_k - 1
  (numpy or jax arrays; `levels_to_signal` says why the - 1)."""
  return prob.sum(axis=-1) - 1


def decision_to_level(decision):
  """Decoded levels i[..., T] in 0..L (perfect = target + 1) -> target levels 0..L - 1
  (numpy or jax arrays)."""
  return (decision - 1).clip(0, preprocess.NUM_LEVELS - 1)


def levels_to_signal(outputs, *, kind: Literal["prob", "decision"] = "prob") -> np.ndarray:
  """The rPPG signal (in target levels 0..39) from the ordinal head's outputs.

  kind="prob": `outputs` is prob f[..., T, L] (P(signal above level k)); the signal is the
    expected level `sum_k p_k - 1`: continuous, so much finer than the decision (the default
    for heart rate). With the `reference` head, pairs of negative logits give p_k = 0.5
    exactly (the clamp), which compresses the signal but keeps it monotone in the logits.
  kind="decision": `outputs` is decision i[..., T] in 0..L; the signal is
    `decision_to_level(decision)` = clip(decision - 1, 0, L - 1).
  The `- 1`: the ordinal loss counts levels k <= t as "above" (t + 1 of them), so a perfect
  model decodes target + 1; removing it puts the signal on the target's scale (heart rate is
  unaffected either way: the spectrum ignores the mean).

  Returns f32[..., T].
  """
  x = np.asarray(outputs)
  if kind == "prob":
    if x.ndim < 2:
      raise errors.DataError(f"prob must be f[..., T, L]; got shape {x.shape}")
    return expected_level(x.astype(np.float32)).astype(np.float32)
  if kind == "decision":
    return np.asarray(decision_to_level(x), dtype=np.float32)
  raise errors.ConfigError(f"levels_to_signal kind {kind!r} is not one of 'prob', 'decision'")


def signal_windows(sig, fps: float, window_s: float, stride_s: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Cut f[..., L] into windows of `window_s` seconds every `stride_s` (default: no overlap).

  The starts come from `preprocess.window_starts` (the project's one window maker).
  Returns (windows f[..., K, n], starts i64[K]), n = round(window_s fps).
  """
  fps = _check_fps(fps)
  x = np.asarray(sig)
  n = int(round(window_s * fps))
  stride = n if stride_s is None else int(round(stride_s * fps))
  if n < 1 or stride < 1:
    raise errors.ConfigError(
        f"window {window_s} s / stride {stride_s} s is under one frame at {fps} fps")
  starts = np.asarray(preprocess.window_starts(x.shape[-1], n, stride), dtype=np.int64)
  return x[..., starts[:, None] + np.arange(n)], starts
