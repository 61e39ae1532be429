"""Classical rPPG methods: mean skin colour per frame -> rPPG signal.

Input: RGB traces `f[..., T, 3]` (channels R, G, B; positive intensities), the masked mean
colour of each frame from `metarppg_jax.data.preprocess.masked_rgb_means`. Output: the rPPG
signal `f32[..., T]`, whose heart rate `heart_rate.hr_estimate` reads on the same windows as
the model's. Every method works on all leading (batch) axes at once.

- GREEN (Verkruysse et al. 2008): the green channel relative to its mean.
- CHROM (de Haan & Jeanne 2013): chrominance signals X = 3R - 2G, Y = 1.5R + G - 1.5B of the
  colour normalised per window, band-passed, `S = Xf - (std Xf / std Yf) Yf`, Hann-windowed
  and overlap-added (windows of 1.6 s, half overlapping).
- POS (Wang et al. 2017): plane orthogonal to skin, `h = S1 + (std S1 / std S2) S2` with
  S1 = G - B, S2 = -2R + G + B on the colour normalised per window (1.6 s windows, every
  frame), mean-removed and overlap-added, as the paper's algorithm 1.
- ICA (Poh et al. 2010): the three detrended, standardised traces unmixed by FastICA
  (symmetric, log-cosh contrast, seeded), the component with the highest spectral peak in
  the heart-rate band.

Signs follow each method's definition (they differ between methods); only ICA's, which is
arbitrary, is fixed to correlate positively with GREEN. Windows come from
`preprocess.window_starts` (the project's one window maker).
"""

from typing import Callable, Sequence

import numpy as np
from scipy import signal as sps

from metarppg_jax import errors
from metarppg_jax import heart_rate
from metarppg_jax.data import preprocess

WINDOW_S = 1.6            # CHROM and POS window length (both papers)
_FILTER_ORDER = 3


def _check_rgb(rgb, fps: float, min_frames: int = 4) -> np.ndarray:
  x = np.asarray(rgb, dtype=np.float64)
  if x.ndim < 2 or x.shape[-1] != 3:
    raise errors.DataError(f"RGB trace must be f[..., T, 3]; got shape {x.shape}")
  if x.shape[-2] < min_frames:
    raise errors.DataError(
        f"RGB trace has {x.shape[-2]} frames; the method needs at least {min_frames}")
  if not np.all(np.isfinite(x)):
    bad = np.argwhere(~np.isfinite(x))[:3].tolist()
    raise errors.DataError(f"RGB trace has NaN/inf values (first at indices {bad})")
  if np.any(x.mean(axis=-2) <= 0):
    raise errors.DataError("RGB trace has a colour channel with mean <= 0 (an empty or black "
                           "face region?); the methods divide by the mean colour")
  if not (np.isfinite(fps) and fps > 0):
    raise errors.DataError(f"frame rate fps={fps} must be a positive number")
  return x


def _window_len(fps: float, num_frames: int, window_s: float) -> int:
  return int(min(max(int(np.ceil(window_s * fps)), 2), num_frames))


def _covering_starts(num_frames: int, n: int, stride: int) -> np.ndarray:
  """`window_starts`, plus a last window ending at the last frame if the stride misses it."""
  starts = preprocess.window_starts(num_frames, n, stride)
  if starts[-1] + n < num_frames:
    starts = np.append(starts, num_frames - n)
  return starts


def _gather(x: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
  """x f[..., T, C] -> f[..., K, n, C], window k = frames starts[k] .. starts[k] + n - 1."""
  return x[..., starts[:, None] + np.arange(n), :]


def _overlap_add(values: np.ndarray, starts: np.ndarray, num_frames: int) -> np.ndarray:
  """values f[..., K, n] summed into f[..., T] at frames starts[k] + j."""
  n = values.shape[-1]
  idx = (starts[:, None] + np.arange(n)).ravel()
  flat = np.moveaxis(values.reshape(values.shape[:-2] + (-1,)), -1, 0)   # [K n, ...]
  out = np.zeros((num_frames,) + flat.shape[1:])
  np.add.at(out, idx, flat)
  return np.moveaxis(out, 0, -1)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """std(a) / std(b) over the last axis; 0 where b is flat (no second signal to mix in)."""
  sa, sb = a.std(axis=-1), b.std(axis=-1)
  return np.divide(sa, sb, out=np.zeros_like(sa), where=sb > 0)


def green(rgb, fps: float) -> np.ndarray:
  """GREEN: `G / mean(G) - 1` over the whole trace. f[..., T, 3] -> f32[..., T]."""
  x = _check_rgb(rgb, fps)
  g = x[..., 1]
  return (g / g.mean(axis=-1, keepdims=True) - 1).astype(np.float32)


def chrom(rgb, fps: float, *, window_s: float = WINDOW_S,
          band: Sequence[float] = heart_rate.HR_BAND_HZ) -> np.ndarray:
  """CHROM (de Haan & Jeanne 2013). f[..., T, 3] -> f32[..., T].

  Per window of `window_s` seconds (stride half a window): colour / window mean - 1,
  X = 3R - 2G, Y = 1.5R + G - 1.5B, each band-passed (Butterworth order 3, zero phase),
  S = Xf - (std Xf / std Yf) Yf, times a Hann window, overlap-added.
  """
  x = _check_rgb(rgb, fps)
  num_frames = x.shape[-2]
  n = _window_len(fps, num_frames, window_s)
  starts = _covering_starts(num_frames, n, max(n // 2, 1))
  w = _gather(x, starts, n)                                    # [..., K, n, 3]
  w = w / w.mean(axis=-2, keepdims=True) - 1
  r, g, b = w[..., 0], w[..., 1], w[..., 2]
  xs, ys = 3 * r - 2 * g, 1.5 * r + g - 1.5 * b
  lo, hi = heart_rate.check_band(band, fps)
  sos = sps.butter(_FILTER_ORDER, [lo, min(hi, 0.95 * fps / 2)], btype="bandpass", fs=fps,
                   output="sos")
  padlen = min(3 * (2 * len(sos) + 1), n - 1)                 # short windows at low fps
  xf = sps.sosfiltfilt(sos, xs, axis=-1, padlen=padlen)
  yf = sps.sosfiltfilt(sos, ys, axis=-1, padlen=padlen)
  s = xf - _ratio(xf, yf)[..., None] * yf
  return _overlap_add(s * sps.windows.hann(n), starts, num_frames).astype(np.float32)


def pos(rgb, fps: float, *, window_s: float = WINDOW_S) -> np.ndarray:
  """POS (Wang et al. 2017, algorithm 1). f[..., T, 3] -> f32[..., T].

  For every window of `window_s` seconds (stride one frame): Cn = colour / window mean,
  S1 = G - B, S2 = -2R + G + B, h = S1 + (std S1 / std S2) S2, and h - mean(h) is added to
  the output over the window's frames.
  """
  x = _check_rgb(rgb, fps)
  num_frames = x.shape[-2]
  n = _window_len(fps, num_frames, window_s)
  starts = preprocess.window_starts(num_frames, n, 1)
  w = _gather(x, starts, n)
  w = w / w.mean(axis=-2, keepdims=True)
  s1 = w[..., 1] - w[..., 2]
  s2 = -2 * w[..., 0] + w[..., 1] + w[..., 2]
  h = s1 + _ratio(s1, s2)[..., None] * s2
  h = h - h.mean(axis=-1, keepdims=True)
  return _overlap_add(h, starts, num_frames).astype(np.float32)


def _sym_decorrelate(w: np.ndarray) -> np.ndarray:
  """(W W^T)^(-1/2) W for a stack of square matrices."""
  s, u = np.linalg.eigh(w @ np.swapaxes(w, -1, -2))
  s = np.maximum(s, np.finfo(np.float64).tiny)
  return (u * (1 / np.sqrt(s))[..., None, :]) @ np.swapaxes(u, -1, -2) @ w


def fastica(x: np.ndarray, *, seed: int = 0, max_iter: int = 200, tol: float = 1e-6
            ) -> np.ndarray:
  """Independent components of mixtures x f[..., C, T] (each stack on its own): f64[..., C, T].

  Symmetric FastICA (Hyvarinen 1999) with the log-cosh contrast (g = tanh) on the whitened
  data; the same seeded random start for every stack; stops when every stack has converged
  (|diag(W_new W^T)| within `tol` of 1) or after `max_iter` iterations. Components have unit
  variance; their order and signs are arbitrary.
  """
  x = x - x.mean(axis=-1, keepdims=True)
  num_c, num_t = x.shape[-2:]
  cov = x @ np.swapaxes(x, -1, -2) / num_t
  d, e = np.linalg.eigh(cov)
  # A rank-deficient stack (two identical channels) keeps its zero direction at zero.
  d = np.maximum(d, 1e-12 * np.max(d, axis=-1, keepdims=True) + np.finfo(np.float64).tiny)
  whiten = (e * (1 / np.sqrt(d))[..., None, :]) @ np.swapaxes(e, -1, -2)
  z = whiten @ x
  rng = np.random.default_rng(seed)
  w = _sym_decorrelate(np.broadcast_to(rng.standard_normal((num_c, num_c)),
                                       x.shape[:-2] + (num_c, num_c)).copy())
  for _ in range(max_iter):
    y = np.tanh(w @ z)
    w_new = (y @ np.swapaxes(z, -1, -2)) / num_t - np.mean(1 - y * y, axis=-1)[..., None] * w
    w_new = _sym_decorrelate(w_new)
    change = np.max(np.abs(np.abs(np.einsum("...ij,...ij->...i", w_new, w)) - 1))
    w = w_new
    if change < tol:
      break
  return w @ z


def ica(rgb, fps: float, *, band: Sequence[float] = heart_rate.HR_BAND_HZ, seed: int = 0
        ) -> np.ndarray:
  """ICA (Poh et al. 2010). f[..., T, 3] -> f32[..., T].

  The traces are linearly detrended and standardised per channel, unmixed by `fastica`, and
  the component whose power spectrum has the largest share of its power at one frequency
  inside `band` is returned (unit variance, sign chosen to correlate positively with GREEN).
  """
  x = _check_rgb(rgb, fps)
  band = heart_rate.check_band(band, fps)
  c = sps.detrend(np.swapaxes(x, -1, -2), axis=-1, type="linear")     # [..., 3, T]
  std = c.std(axis=-1, keepdims=True)
  c = np.divide(c, std, out=np.zeros_like(c), where=std > 0)
  comps = fastica(c, seed=seed)
  freqs, power = heart_rate.power_spectrum(comps, fps)
  inside = (freqs >= band[0]) & (freqs <= band[1])
  total = power.sum(axis=-1)
  peak_share = np.divide(power[..., inside].max(axis=-1), total, out=np.zeros_like(total),
                         where=total > 0)
  best = np.argmax(peak_share, axis=-1)
  out = np.take_along_axis(comps, best[..., None, None], axis=-2)[..., 0, :]
  g = c[..., 1, :]
  sign = np.where(np.sum(out * g, axis=-1) < 0, -1.0, 1.0)
  return (sign[..., None] * out).astype(np.float32)


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "green": green,
    "chrom": chrom,
    "pos": pos,
    "ica": ica,
}


def rppg_signal(method: str, rgb, fps: float, **kwargs) -> np.ndarray:
  """The rPPG signal f32[..., T] of RGB traces f[..., T, 3] by a method named in `METHODS`."""
  if method not in METHODS:
    raise errors.ConfigError(
        f"unknown classical rPPG method {method!r}; choose one of {sorted(METHODS)}")
  return METHODS[method](rgb, fps, **kwargs)
