"""Classical rPPG methods: mean skin colour per frame -> rPPG signal, as rPPG-Toolbox has them.

Input: RGB traces `f[..., T, 3]` (channels R, G, B; positive intensities), the masked mean
colour of each frame from `metarppg_jax.data.preprocess.masked_rgb_means`. Output: the rPPG
signal `f32[..., T]`, whose heart rate `heart_rate.hr_estimate` reads on the same windows as
the model's. Every method works on all leading (batch) axes at once, and a trace's signal never
depends on the other traces in its batch.

Each method computes what rPPG-Toolbox's unsupervised method of the same name computes (its
`unsupervised_methods/methods/*.py`), on the same windows, with the same filters:

- GREEN (Verkruysse et al. 2008): the green channel, here relative to its mean (`G / mean - 1`,
  an affine change of the toolbox's raw G).
- CHROM (de Haan & Jeanne 2013): per window of 1.6 s (an even number of frames, stride half a
  window): colour / window mean, X = 3R - 2G, Y = 1.5R + G - 1.5B, each band-passed
  (Butterworth order 3, 0.7-2.5 Hz, filtfilt), S = Xf - (std Xf / std Yf) Yf, Hann-windowed
  and overlap-added. The toolbox's output stops after its last full window (frames 0..887 of
  900 at 30 fps); here one more window ending at the last frame covers the rest, so every
  frame has a sample and frames before that window's start are the toolbox's.
- POS (Wang et al. 2017): for every window of 1.6 s that ends before the last frame (the
  toolbox's windows): Cn = colour / window mean, S1 = G - B, S2 = -2R + G + B,
  h = S1 + (std S1 / std S2) S2, h - mean(h) overlap-added; then the smoothness-prior detrend
  (lambda 100) and a Butterworth band-pass of order 1, 0.75-3 Hz, filtfilt.
- ICA (Poh et al. 2010): each channel smoothness-prior detrended (lambda 100) and
  standardised, unmixed by JADE (`jade`: deterministic, no random start), the component whose
  spectrum has the largest share of its power at one frequency (over the whole spectrum, DC
  excluded), band-passed by a Butterworth filter of order 3, 0.7-2.5 Hz, filtfilt. Its sign is
  JADE's (arbitrary with respect to the pulse, like the toolbox's).
- LGI (Pilz et al. 2018): the raw traces projected off their first left singular vector (the
  dominant colour direction over the video); the projected green channel.
- PBV (de Haan & van Leest 2014): the mean-normalised traces C, the pulse signature
  pbv = std(C) / |std(C)|, W = (C C^T)^-1 pbv, signal C^T W / (pbv . W).
- OMIT (Alvarez Casado & Bordallo Lopez 2023): the raw traces projected off the first column
  of Q in the QR decomposition of the 3 x T trace matrix, which is the first frame's colour
  direction; the projected green channel.

Signs follow each method's definition (they differ between methods). Windows come from
`preprocess.window_starts` (the project's one window maker).
"""

import math
from typing import Callable, Sequence

import numpy as np
from scipy import linalg as sla
from scipy import signal as sps
from scipy import sparse

from metarppg_jax import errors
from metarppg_jax import heart_rate
from metarppg_jax.data import preprocess

WINDOW_S = 1.6                   # CHROM and POS window length (both papers)
DETREND_LAMBDA = 100.0           # smoothness-prior detrend of POS and ICA (Tarvainen et al.)
CHROM_BAND_HZ = (0.7, 2.5)       # the toolbox's CHROM, ICA and POS band-passes
ICA_BAND_HZ = (0.7, 2.5)
POS_BAND_HZ = (0.75, 3.0)
_MAX_JADE_SWEEPS = 100           # Jacobi sweeps converge in about ten; a bound, not a budget


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


def _bandpass(x: np.ndarray, fps: float, band: Sequence[float], order: int) -> np.ndarray:
  """Butterworth band-pass (b, a form) applied forward and backward: f64[..., T] -> same.

  filtfilt's default padding (3 max(len a, len b) samples), shortened for signals that are
  not longer than it; the top edge kept below Nyquist at low frame rates.
  """
  lo, hi = heart_rate.check_band(band, fps)
  b, a = sps.butter(order, [lo, min(hi, 0.95 * fps / 2)], btype="bandpass", fs=fps)
  padlen = min(3 * max(len(a), len(b)), x.shape[-1] - 1)
  return sps.filtfilt(b, a, x, axis=-1, padlen=padlen)


def smoothness_detrend(sig, lam: float = DETREND_LAMBDA) -> np.ndarray:
  """Smoothness-prior detrend (Tarvainen et al. 2002): f[..., T] -> f64[..., T], T >= 3.

  x - (I + lam^2 D^T D)^-1 x with D the (T - 2) x T second-difference matrix: removes the
  trend a penalty lam^2 |D z|^2 on its curvature allows (constants and lines entirely). The
  system is pentadiagonal and positive definite: one banded Cholesky solve for all signals.
  """
  x = np.asarray(sig, dtype=np.float64)
  t = x.shape[-1]
  if t < 3:
    raise errors.DataError(f"smoothness-prior detrend needs at least 3 samples; got {t}")
  d = sparse.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(t - 2, t))
  a = (lam ** 2 * (d.T @ d) + sparse.identity(t)).tocsr()
  bands = np.zeros((3, t))                                     # upper form: bands[2 - k, k:]
  for k in range(3):
    bands[2 - k, k:] = a.diagonal(k)
  flat = x.reshape(-1, t)
  trend = sla.solveh_banded(bands, flat.T) if flat.size else flat.T
  return (flat - trend.T).reshape(x.shape)


def green(rgb, fps: float) -> np.ndarray:
  """GREEN: `G / mean(G) - 1` over the whole trace. f[..., T, 3] -> f32[..., T]."""
  x = _check_rgb(rgb, fps)
  g = x[..., 1]
  return (g / g.mean(axis=-1, keepdims=True) - 1).astype(np.float32)


def chrom(rgb, fps: float, *, window_s: float = WINDOW_S,
          band: Sequence[float] = CHROM_BAND_HZ) -> np.ndarray:
  """CHROM (de Haan & Jeanne 2013) on the toolbox's windows. f[..., T, 3] -> f32[..., T].

  Windows of `window_s` seconds rounded up to an even number of frames, stride half a window,
  plus one ending at the last frame; per window: colour / window mean, X = 3R - 2G,
  Y = 1.5R + G - 1.5B, each band-passed (Butterworth order 3 in `band`, filtfilt),
  S = Xf - (std Xf / std Yf) Yf, times a Hann window, overlap-added.
  """
  x = _check_rgb(rgb, fps)
  num_frames = x.shape[-2]
  n = math.ceil(window_s * fps)
  n = min(n + n % 2, num_frames - num_frames % 2)              # even: two equal halves
  starts = _covering_starts(num_frames, n, n // 2)
  w = _gather(x, starts, n)                                    # [..., K, n, 3]
  w = w / w.mean(axis=-2, keepdims=True)
  r, g, b = w[..., 0], w[..., 1], w[..., 2]
  xf = _bandpass(3 * r - 2 * g, fps, band, 3)
  yf = _bandpass(1.5 * r + g - 1.5 * b, fps, band, 3)
  s = xf - _ratio(xf, yf)[..., None] * yf
  return _overlap_add(s * sps.windows.hann(n), starts, num_frames).astype(np.float32)


def pos(rgb, fps: float, *, window_s: float = WINDOW_S,
        band: Sequence[float] = POS_BAND_HZ) -> np.ndarray:
  """POS (Wang et al. 2017, algorithm 1), the toolbox's post-filter. f[..., T, 3] -> f32[..., T].

  For every window of `window_s` seconds (stride one frame) that ends before the last frame:
  Cn = colour / window mean, S1 = G - B, S2 = -2R + G + B, h = S1 + (std S1 / std S2) S2,
  and h - mean(h) is added to the output over the window's frames; the sum is
  smoothness-prior detrended (lambda 100) and band-passed (Butterworth order 1 in `band`,
  filtfilt).
  """
  x = _check_rgb(rgb, fps)
  num_frames = x.shape[-2]
  n = min(math.ceil(window_s * fps), num_frames - 1)
  starts = preprocess.window_starts(num_frames - 1, n, 1)
  w = _gather(x, starts, n)
  w = w / w.mean(axis=-2, keepdims=True)
  s1 = w[..., 1] - w[..., 2]
  s2 = -2 * w[..., 0] + w[..., 1] + w[..., 2]
  h = s1 + _ratio(s1, s2)[..., None] * s2
  h = h - h.mean(axis=-1, keepdims=True)
  out = smoothness_detrend(_overlap_add(h, starts, num_frames))
  return _bandpass(out, fps, band, 1).astype(np.float32)


def jade(x, *, max_sweeps: int = _MAX_JADE_SWEEPS) -> np.ndarray:
  """Independent components of real mixtures x f[..., m, T] (each stack alone): f64[..., m, T].

  JADE (Cardoso & Souloumiac 1993) as Poh et al. and the toolbox use it, for as many sources
  as mixtures: whiten by the inverse square root of the covariance; the m eigenmatrices of
  the fourth-order cumulant tensor with the largest |eigenvalue|, scaled by it; Jacobi
  (Givens) rotations that jointly diagonalise them, swept over all pairs until a sweep
  rotates by no sine above 1 / (100 sqrt T). The mixtures' means are removed first. No random
  start: the result is a function of x alone. Components have unit variance; their order and
  signs are the rotations'.
  """
  x = np.asarray(x, dtype=np.float64)
  x = x - x.mean(axis=-1, keepdims=True)
  m, num_t = x.shape[-2:]
  cov = (x[..., :, None, :] * x[..., None, :, :]).mean(axis=-1)
  d, e = np.linalg.eigh(cov)
  # A rank-deficient stack (a flat or repeated channel) keeps its null direction at zero.
  d = np.maximum(d, 1e-12 * np.max(d, axis=-1, keepdims=True) + np.finfo(np.float64).tiny)
  # Sums of elementwise products (not batched matmuls) keep each stack's arithmetic the same
  # whatever else is in the batch.
  whiten = ((e / np.sqrt(d)[..., None, :])[..., :, None, :] * e[..., None, :, :]).sum(axis=-1)
  y = (whiten[..., :, :, None] * x[..., None, :, :]).sum(axis=-2)       # [..., m, T]
  yy = y[..., :, None, :] * y[..., None, :, :]                            # [..., m, m, T]
  r = yy.mean(axis=-1)
  # Cumulant Q[l, k, j, i] = E[y_l y_k y_j y_i] - R_ij R_lk - R_ik R_lj - R_il R_jk.
  q = (yy[..., :, :, None, None, :] * yy[..., None, None, :, :, :]).mean(axis=-1)
  q = q - (np.einsum("...ij,...lk->...lkji", r, r) + np.einsum("...ik,...lj->...lkji", r, r)
           + np.einsum("...il,...jk->...lkji", r, r))
  lam, u = np.linalg.eigh(q.reshape(q.shape[:-4] + (m * m, m * m)))
  top = np.argsort(-np.abs(lam), axis=-1, kind="stable")[..., :m]
  weight = np.abs(np.take_along_axis(lam, top, axis=-1))
  vecs = np.take_along_axis(u, top[..., None, :], axis=-1) * weight[..., None, :]
  mats = np.moveaxis(vecs, -1, -2).reshape(vecs.shape[:-2] + (m, m, m))  # [..., m mats, m, m]

  v = np.broadcast_to(np.eye(m), x.shape[:-2] + (m, m)).copy()
  threshold = 1 / math.sqrt(num_t) / 100
  done = np.zeros(x.shape[:-2], dtype=bool)
  for _ in range(max_sweeps):
    rotated = np.zeros_like(done)
    for p in range(m - 1):
      for k in range(p + 1, m):
        g0 = mats[..., p, p] - mats[..., k, k]                   # [..., m mats]
        g1 = mats[..., p, k] + mats[..., k, p]
        ton = (g0 * g0).sum(axis=-1) - (g1 * g1).sum(axis=-1)
        toff = 2 * (g0 * g1).sum(axis=-1)
        theta = 0.5 * np.arctan2(toff, ton + np.hypot(ton, toff))
        c, s = np.cos(theta), np.sin(theta)
        turn = (np.abs(s) > threshold) & ~done
        c, s = np.where(turn, c, 1.0)[..., None], np.where(turn, s, 0.0)[..., None]
        rotated |= turn
        vp, vk = v[..., :, p].copy(), v[..., :, k].copy()
        v[..., :, p], v[..., :, k] = c * vp + s * vk, c * vk - s * vp
        cm = c[..., None]
        sm = s[..., None]
        mp, mk = mats[..., p, :].copy(), mats[..., k, :].copy()
        mats[..., p, :], mats[..., k, :] = cm * mp + sm * mk, cm * mk - sm * mp
        mp, mk = mats[..., :, p].copy(), mats[..., :, k].copy()
        mats[..., :, p], mats[..., :, k] = cm * mp + sm * mk, cm * mk - sm * mp
    done |= ~rotated
    if done.all():
      break
  return (v[..., :, :, None] * y[..., :, None, :]).sum(axis=-3)


def ica(rgb, fps: float, *, band: Sequence[float] = ICA_BAND_HZ) -> np.ndarray:
  """ICA (Poh et al. 2010) as the toolbox's ICA_POH. f[..., T, 3] -> f32[..., T].

  Each channel smoothness-prior detrended (lambda 100) and standardised, unmixed by `jade`;
  the component with the largest single-frequency share of its power (frequency bins
  1 .. floor((T - 1) / 2)) is band-passed (Butterworth order 3 in `band`, filtfilt).
  """
  x = _check_rgb(rgb, fps)
  c = smoothness_detrend(np.swapaxes(x, -1, -2))               # [..., 3, T]
  c = c - c.mean(axis=-1, keepdims=True)
  std = c.std(axis=-1, keepdims=True)
  # A flat channel detrends to rounding noise, which standardising would blow up to unit
  # variance: it stays zero.
  level = np.swapaxes(x, -1, -2).mean(axis=-1, keepdims=True)
  c = np.divide(c, std, out=np.zeros_like(c), where=std > 1e-10 * level)
  comps = jade(c)
  num_t = comps.shape[-1]
  power = np.abs(np.fft.rfft(comps, axis=-1)[..., 1:(num_t - 1) // 2 + 1]) ** 2
  total = power.sum(axis=-1)
  share = np.divide(power.max(axis=-1), total, out=np.zeros_like(total), where=total > 0)
  best = np.argmax(share, axis=-1)
  out = np.take_along_axis(comps, best[..., None, None], axis=-2)[..., 0, :]
  return _bandpass(out, fps, band, 3).astype(np.float32)


def _project_off(x: np.ndarray, direction: np.ndarray) -> np.ndarray:
  """Green channel of traces x f[..., 3, T] projected off unit vectors direction f[..., 3]."""
  along = (direction[..., :, None] * x).sum(axis=-2)          # [..., T]
  return x[..., 1, :] - direction[..., 1, None] * along


def lgi(rgb, fps: float) -> np.ndarray:
  """LGI (Pilz et al. 2018) as the toolbox's. f[..., T, 3] -> f32[..., T].

  The raw traces (3 x T) minus their projection on the first left singular vector; the green
  row of the result.
  """
  x = np.swapaxes(_check_rgb(rgb, fps), -1, -2)               # [..., 3, T]
  u = np.linalg.svd(x, full_matrices=False)[0]
  return _project_off(x, u[..., :, 0]).astype(np.float32)


def pbv(rgb, fps: float) -> np.ndarray:
  """PBV (de Haan & van Leest 2014) as the toolbox's. f[..., T, 3] -> f32[..., T].

  C = traces / their mean (3 x T), pbv = std(C) / sqrt(sum var(C)) per channel,
  W = (C C^T)^-1 pbv, signal C^T W / (pbv . W). Traces with a flat colour give zeros.
  """
  c = np.swapaxes(_check_rgb(rgb, fps), -1, -2)
  c = c / c.mean(axis=-1, keepdims=True)                      # [..., 3, T]
  sd = c.std(axis=-1)
  norm = np.sqrt((sd * sd).sum(axis=-1, keepdims=True))
  sig = np.divide(sd, norm, out=np.zeros_like(sd), where=norm > 0)    # [..., 3]
  gram = (c[..., :, None, :] * c[..., None, :, :]).sum(axis=-1)
  # C C^T is singular only for linearly dependent channels (a flat or grey trace): the
  # pseudo-inverse keeps that stack from failing the batch; elsewhere it is the solve.
  w = (np.linalg.pinv(gram) * sig[..., None, :]).sum(axis=-1)
  num = (w[..., :, None] * c).sum(axis=-2)
  den = (sig * w).sum(axis=-1, keepdims=True)
  return np.divide(num, den, out=np.zeros_like(num), where=den != 0).astype(np.float32)


def omit(rgb, fps: float) -> np.ndarray:
  """OMIT (Alvarez Casado & Bordallo Lopez 2023) as the toolbox's. f[..., T, 3] -> f32[..., T].

  The raw traces (3 x T) projected off Q's first column in their QR decomposition, which is
  the first frame's colour over its norm; the green row of the result.
  """
  x = np.swapaxes(_check_rgb(rgb, fps), -1, -2)
  first = x[..., :, 0]
  return _project_off(x, first / np.linalg.norm(first, axis=-1, keepdims=True)
                      ).astype(np.float32)


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "green": green,
    "chrom": chrom,
    "pos": pos,
    "ica": ica,
    "lgi": lgi,
    "pbv": pbv,
    "omit": omit,
}


def rppg_signal(method: str, rgb, fps: float, **kwargs) -> np.ndarray:
  """The rPPG signal f32[..., T] of RGB traces f[..., T, 3] by a method named in `METHODS`."""
  if method not in METHODS:
    raise errors.ConfigError(
        f"unknown classical rPPG method {method!r}; choose one of {sorted(METHODS)}")
  return METHODS[method](rgb, fps, **kwargs)
