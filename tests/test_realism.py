"""The synthetic benchmark ranks the classical methods as real data does.

On real recordings (UBFC-rPPG, rPPG-Toolbox) POS and CHROM are about 4 bpm and GREEN about
20 bpm: what reaches the pulse band is mostly intensity (motion, shading, specular, light)
common to the colour channels, which colour-difference methods cancel. This test checks the
generator against that with its own trace extractor (the mean RGB of a fixed box inside the
known face box) and textbook POS (Wang et al. 2017), CHROM (de Haan & Jeanne 2013) and GREEN
(Verkruysse et al. 2008) written here, independent of the project's signal code.
`experiments/realism.py` prints the same table over more videos.
"""

import cv2
import numpy as np
import pytest
from scipy import signal as scipy_signal

from metarppg_jax.data import synthetic

BAND = (0.7, 3.5)        # Hz, 42..210 bpm
WINDOW_S = 1.6           # POS and CHROM window (both papers)
ROI = (0.22, 0.48, 0.78, 0.70)   # (x0, y0, x1, y1) as fractions of the face box: nose, cheeks


def box_trace(frames: np.ndarray, boxes: np.ndarray, roi=ROI) -> np.ndarray:
  """f64[T, 3] mean RGB of the `roi` part of each frame's face box, at sub-pixel positions
  (a box snapped to whole pixels would jump as the face moves).

  frames: uint8[T, H, W, 3]; boxes: f[T, 4] (x, y, w, h)."""
  boxes = np.asarray(boxes, np.float64)
  size = (int(round((roi[2] - roi[0]) * np.median(boxes[:, 2]))),
          int(round((roi[3] - roi[1]) * np.median(boxes[:, 3]))))
  cx = boxes[:, 0] + (roi[0] + roi[2]) / 2 * boxes[:, 2]
  cy = boxes[:, 1] + (roi[1] + roi[3]) / 2 * boxes[:, 3]
  return np.array([cv2.getRectSubPix(frame, size, (float(x), float(y))).reshape(-1, 3).mean(0)
                   for frame, x, y in zip(frames, cx, cy)], np.float64)


def green(rgb: np.ndarray, fps: float) -> np.ndarray:
  del fps
  return rgb[:, 1]


def pos(rgb: np.ndarray, fps: float) -> np.ndarray:
  """Plane-orthogonal-to-skin (Wang et al. 2017, Algorithm 1): overlap-added windows."""
  n, length = len(rgb), int(round(WINDOW_S * fps))
  windows = np.lib.stride_tricks.sliding_window_view(rgb, length, axis=0)  # [N, 3, L]
  cn = windows / windows.mean(-1, keepdims=True)
  s1, s2 = cn[:, 1] - cn[:, 2], -2 * cn[:, 0] + cn[:, 1] + cn[:, 2]
  h = s1 + (s1.std(-1) / s2.std(-1))[:, None] * s2
  h -= h.mean(-1, keepdims=True)
  out = np.zeros(n)
  for start, piece in enumerate(h):
    out[start:start + length] += piece
  return out


def chrom(rgb: np.ndarray, fps: float) -> np.ndarray:
  """Chrominance method (de Haan & Jeanne 2013): band-passed X, Y per Hann window."""
  length = 2 * (int(round(WINDOW_S * fps)) // 2)
  b, a = scipy_signal.butter(3, BAND, btype="bandpass", fs=fps)
  out = np.zeros(len(rgb))
  for start in range(0, len(rgb) - length + 1, length // 2):
    c = rgb[start:start + length]
    r, g, bl = (c / c.mean(0)).T
    x = scipy_signal.filtfilt(b, a, 3 * r - 2 * g)
    y = scipy_signal.filtfilt(b, a, 1.5 * r + g - 1.5 * bl)
    out[start:start + length] += (x - x.std() / y.std() * y) * np.hanning(length)
  return out


METHODS = {"POS": pos, "CHROM": chrom, "GREEN": green}


def spectral_hr(x: np.ndarray, fps: float) -> float:
  """HR (bpm) at the periodogram peak in BAND of the detrended, band-passed signal."""
  x = scipy_signal.detrend(np.asarray(x, np.float64))
  sos = scipy_signal.butter(2, BAND, btype="bandpass", fs=fps, output="sos")
  x = scipy_signal.sosfiltfilt(sos, x)
  f, p = scipy_signal.periodogram(x, fs=fps, nfft=max(8192, len(x)))
  band = (f >= BAND[0]) & (f <= BAND[1])
  return float(f[band][np.argmax(p[band])] * 60)


def video_errors(domain: str, seeds, seconds: float) -> dict[str, np.ndarray]:
  """{method: f64[V] |HR error| in bpm} over whole videos, HR against the mean true HR."""
  errors = {m: [] for m in METHODS}
  for seed in seeds:
    v = synthetic.generate_video(seed, seconds=seconds, domain=domain)
    rgb = box_trace(v.frames, v.face_box)
    for name, method in METHODS.items():
      errors[name].append(abs(spectral_hr(method(rgb, v.fps), v.fps) - float(v.hr.mean())))
  return {m: np.array(e) for m, e in errors.items()}


def test_textbook_methods_on_a_known_trace():
  """The methods here find a pulse along PBV under a strong common intensity change."""
  fps, t = 30.0, np.arange(600) / 30.0
  rng = np.random.default_rng(0)
  pulse = np.sin(2 * np.pi * 1.2 * t)                  # 72 bpm
  intensity = 0.02 * np.sin(2 * np.pi * 0.9 * t)       # 54 bpm, ten times the pulse
  rgb = np.array([180.0, 130.0, 110.0]) * (1 + intensity[:, None]) * (
      1 - 0.002 * pulse[:, None] * synthetic.PBV / synthetic.PBV[1])
  rgb += 0.01 * rng.standard_normal(rgb.shape)
  assert abs(spectral_hr(pos(rgb, fps), fps) - 72) < 1
  assert abs(spectral_hr(chrom(rgb, fps), fps) - 72) < 1
  assert abs(spectral_hr(green(rgb, fps), fps) - 54) < 1   # GREEN follows the intensity


@pytest.mark.parametrize("domain, seeds", [("source", range(6)), ("shifted", range(6))])
def test_classical_ranking_matches_real_data(domain, seeds):
  errors = video_errors(domain, seeds, seconds=20.0)
  mae = {m: float(e.mean()) for m, e in errors.items()}
  best = min(mae["POS"], mae["CHROM"])
  if domain == "source":
    assert mae["POS"] <= 3 and mae["CHROM"] <= 3, mae
    assert mae["GREEN"] >= 2 * max(mae["POS"], mae["CHROM"]), mae
  else:
    assert best <= 10, mae
    assert mae["GREEN"] > best, mae
