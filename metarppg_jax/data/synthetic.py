"""Synthetic face videos with a known pulse: the embedded default dataset.

A video is made in four steps, driven by independent random streams spawned from
`np.random.SeedSequence([seed, domain])` (pulse; face and scene; sensor noise), so the face and
the nuisance parameters of a seed do not depend on the video's duration:

1. A face (`_photo_face`, `_rendered_face`): either the real photo `skimage.data.astronaut()` under a random
   non-uniform scale, mirror and skin-tone change, or a rendered face of random geometry (face
   ellipse, eyes, brows, nose, mouth, hair, neck, background) with skin texture and shading.
   Both give an RGB image, a soft skin map (where blood volume modulates colour) and the face
   box that a frontal-face detector reports.
2. A physiological pulse (`pulse_signal`): instantaneous heart rate = base rate + slow drift +
   respiratory sinus arrhythmia + beat-to-beat variability, clipped to 45..150 bpm; each beat
   has a systolic peak and a dicrotic wave; respiration modulates amplitude and baseline.
3. Skin colour follows the blood volume: relative change per channel
   `-amplitude * PBV / PBV_G * pulse(t)` with PBV = (0.33, 0.77, 0.53) (de Haan & van Leest
   2014; more blood absorbs more light), amplitude 0.1..1 % of skin intensity (green,
   peak to peak), varied over the skin by a smooth perfusion map.
4. Nuisances: illumination level, slow drift and flicker; colour temperature; head motion
   (translation, rotation, scale: smooth random paths, one cv2.warpAffine a frame); sensor
   noise (shot + read); JPEG round trip. Their distributions are what make a domain.

Domains (`DOMAINS`): "source" (training: light to medium skin, bright, little motion, mild
noise, light or no compression, HR 50..120, pulse 0.3..1 %) and "shifted" (testing: medium to
dark skin, dim and warm or cool light, stronger flicker, more motion, more noise, JPEG 80..95,
HR 45..150, pulse 0.3..0.8 %); a plain FFT of the masked green mean of 20 s recovers the mean
HR within 2 bpm for seeds 0..19 of each from the known face box, and through Haar detection
and tracking for 19 of 20 (source) and 20 of 20 (shifted). "hard" pushes every nuisance further (pulse 0.1..0.4 %, dimmer, more motion,
JPEG 65..85), where that plain method fails about half the time (4 of 10 seeds within
2 bpm); "clean" has no nuisances (for tests of the
signal path).

Ground truth: `ppg` is the finger-PPG-like blood-volume waveform (higher = more blood, so the
skin darkens when it rises) and `hr` the instantaneous rate, both per frame, aligned with the
frames (no pulse transit delay).

CLI: `python -m metarppg_jax.data.synthetic --out DIR --num_videos N --seconds S --domain D
--seed K` writes `DIR/subject<K+i>/vid.avi` (lossless FFV1 by default, the nuisances already
applied) and `ground_truth.txt` in UBFC-rPPG DATASET_2 format (3 lines: PPG, HR, time in s).
"""

import argparse
import dataclasses
import os
import pathlib
import sys
import time
from typing import NamedTuple

import cv2
import numpy as np

from metarppg_jax.data import faces as faces_lib
from metarppg_jax.data import video as video_lib

PBV = np.array([0.33, 0.77, 0.53], np.float32)   # blood-volume pulse direction in RGB
HR_RANGE = (45.0, 150.0)
ASTRONAUT_FACE = (177.0, 66.0, 95.0, 95.0)       # Haar box of skimage.data.astronaut(), 512 px
OPTICAL_BLUR = 1.0                               # Gaussian sigma, output pixels
HAIR_COLORS = np.array([[20, 16, 14], [45, 32, 24], [70, 48, 32], [105, 72, 45],
                        [150, 110, 70], [120, 55, 30], [130, 130, 130]], np.float64)


@dataclasses.dataclass(frozen=True)
class Domain:
  """Distributions of one domain: each pair is a uniform range (low, high)."""
  hr: tuple[float, float]                 # base heart rate, bpm
  amplitude: tuple[float, float]          # pulse, relative green peak to peak
  melanin: tuple[float, float]            # 0 light .. 1 dark skin
  photo: float                            # probability of the astronaut photo
  light: tuple[float, float]              # illumination gain
  light_drift: float                      # max relative drift over the video
  temperature: tuple[float, float]        # -1 cool .. +1 warm
  flicker: tuple[float, float]            # relative flicker amplitude
  translation: float                      # max translation, fraction of the frame
  rotation: float                         # max rotation, degrees
  scale: float                            # max relative scale change
  read_noise: tuple[float, float]         # DN (0..255)
  shot_noise: tuple[float, float]         # variance per DN of signal
  jpeg: tuple[int, int] | None            # JPEG quality range, None: no compression
  jpeg_probability: float


DOMAINS = {
    "clean": Domain(hr=(50, 120), amplitude=(0.005, 0.01), melanin=(0.0, 0.4), photo=0.3,
                    light=(1.0, 1.0), light_drift=0.0, temperature=(0.0, 0.0),
                    flicker=(0.0, 0.0), translation=0.0, rotation=0.0, scale=0.0,
                    read_noise=(0.0, 0.0), shot_noise=(0.0, 0.0), jpeg=None,
                    jpeg_probability=0.0),
    "source": Domain(hr=(50, 120), amplitude=(0.003, 0.01), melanin=(0.0, 0.5), photo=0.3,
                     light=(0.8, 1.1), light_drift=0.05, temperature=(-0.2, 0.2),
                     flicker=(0.0, 0.002), translation=0.02, rotation=2.0, scale=0.02,
                     read_noise=(0.5, 1.5), shot_noise=(0.02, 0.08), jpeg=(90, 97),
                     jpeg_probability=0.5),
    "shifted": Domain(hr=(45, 150), amplitude=(0.003, 0.008), melanin=(0.4, 1.0), photo=0.3,
                      light=(0.45, 0.8), light_drift=0.15, temperature=(-0.8, 0.8),
                      flicker=(0.001, 0.005), translation=0.03, rotation=4.0, scale=0.03,
                      read_noise=(1.0, 2.5), shot_noise=(0.05, 0.15), jpeg=(80, 95),
                      jpeg_probability=1.0),
    "hard": Domain(hr=(45, 150), amplitude=(0.001, 0.004), melanin=(0.3, 1.0), photo=0.3,
                   light=(0.35, 0.7), light_drift=0.2, temperature=(-1.0, 1.0),
                   flicker=(0.002, 0.01), translation=0.05, rotation=6.0, scale=0.05,
                   read_noise=(1.5, 3.0), shot_noise=(0.08, 0.2), jpeg=(65, 85),
                   jpeg_probability=1.0),
}
DOMAIN_IDS = {"clean": 0, "source": 1, "shifted": 2, "hard": 3}


class SyntheticVideo(NamedTuple):
  """One generated video.

  frames: uint8[T, H, W, 3] RGB.
  ppg: f32[T] blood-volume waveform at the frame times (arbitrary units, ~0..1).
  hr: f32[T] instantaneous heart rate, bpm.
  fps: frame rate.
  face_box: f32[T, 4] (x, y, w, h) of the face as a frontal-face detector reports it.
  """
  frames: np.ndarray
  ppg: np.ndarray
  hr: np.ndarray
  fps: float
  face_box: np.ndarray


def _rngs(seed: int, domain: str) -> list[np.random.Generator]:
  """Independent streams (pulse, face and scene, sensor noise) for one (seed, domain)."""
  if domain not in DOMAINS:
    raise ValueError(f"unknown domain {domain!r}; choose one of {sorted(DOMAINS)}")
  sequence = np.random.SeedSequence([int(seed), DOMAIN_IDS[domain]])
  return [np.random.default_rng(s) for s in sequence.spawn(3)]


def _smooth_noise(rng: np.random.Generator, n: int, correlation: float) -> np.ndarray:
  """Zero-mean unit-std noise f64[n] low-passed with a Gaussian of `correlation` samples."""
  sigma = max(correlation, 1e-3)
  half = int(4 * sigma) + 1
  kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
  x = np.convolve(rng.standard_normal(n + 2 * half), kernel / kernel.sum(), mode="valid")
  x = x[:n] - x[:n].mean()
  return x / max(x.std(), 1e-12)


def _smooth_path(rng: np.random.Generator, t: np.ndarray, max_amplitude: float) -> np.ndarray:
  """A smooth random path f64[T] in [-max_amplitude, max_amplitude]: three slow sinusoids."""
  if max_amplitude == 0:
    return np.zeros_like(t)
  freqs = rng.uniform(0.03, 0.4, 3)
  phases = rng.uniform(0, 2 * np.pi, 3)
  weights = rng.dirichlet(np.ones(3))
  return max_amplitude * (weights[:, None] * np.sin(
      2 * np.pi * freqs[:, None] * t[None] + phases[:, None])).sum(0)


def pulse_signal(rng: np.random.Generator, t: np.ndarray, hr_range: tuple[float, float]
                 ) -> tuple[np.ndarray, np.ndarray]:
  """A physiological PPG waveform and its instantaneous heart rate.

  Args:
    rng: the generator.
    t: f64[T] sample times, seconds, uniform.
    hr_range: range of the base heart rate, bpm.

  Returns:
    (ppg f32[T] ~0..1, higher = more blood; hr f32[T] bpm within 45..150).
  """
  n = t.shape[0]
  dt = float(t[1] - t[0]) if n > 1 else 1 / 30
  # Every scalar first, the noise last: a longer video has the same pulse parameters.
  hr0 = rng.uniform(*hr_range)
  resp_rate = rng.uniform(0.15, 0.4)                       # Hz, 9..24 breaths a minute
  resp_phase = rng.uniform(0, 2 * np.pi)
  drift_amp, drift_period, drift_phase = rng.uniform(1, 5), rng.uniform(40, 120), rng.uniform(
      0, 2 * np.pi)
  rsa_amp = rng.uniform(1, 4)                              # respiratory sinus arrhythmia
  b2b_amp = rng.uniform(0.5, 2.0)                          # beat-to-beat variability
  phase0 = rng.uniform(0, 1)
  # One beat: systolic peak and a dicrotic wave (Gaussians on the beat's phase, wrapped).
  systolic_at, systolic_width = rng.uniform(0.15, 0.25), rng.uniform(0.07, 0.1)
  dicrotic_at, dicrotic_width = systolic_at + rng.uniform(0.25, 0.35), rng.uniform(0.08, 0.12)
  dicrotic = rng.uniform(0.2, 0.5)
  resp_am, resp_baseline = rng.uniform(0.05, 0.15), rng.uniform(0.05, 0.2)
  b2b = b2b_amp * _smooth_noise(rng, n, 0.8 / dt)

  respiration = np.sin(2 * np.pi * resp_rate * t + resp_phase)
  drift = drift_amp * np.sin(2 * np.pi * t / drift_period + drift_phase)
  hr = np.clip(hr0 + drift + rsa_amp * respiration + b2b, *HR_RANGE)
  frac = np.mod(np.cumsum(hr / 60.0 * dt) + phase0, 1.0)

  def bump(at, width):
    d = np.mod(frac - at + 0.5, 1.0) - 0.5
    return np.exp(-0.5 * (d / width) ** 2)

  beat = bump(systolic_at, systolic_width) + dicrotic * bump(dicrotic_at, dicrotic_width)
  beat = (beat - beat.min()) / max(np.ptp(beat), 1e-12)
  ppg = beat * (1 + resp_am * respiration) + resp_baseline * np.sin(
      2 * np.pi * resp_rate * t + resp_phase + 1.0)
  return ppg.astype(np.float32), hr.astype(np.float32)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
  return cv2.GaussianBlur(image, (0, 0), max(sigma, 0.3))


def _skin_color(melanin: float) -> np.ndarray:
  """RGB 0..255 of skin from light (0) to dark (1)."""
  light = np.array([232.0, 190.0, 165.0])
  dark = np.array([100.0, 64.0, 46.0])
  return light + (dark - light) * melanin


def _rendered_face(rng: np.random.Generator, height: int, width: int, melanin: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A drawn face of random geometry: (f32[H, W, 3] RGB, f32[H, W] skin, f32[4] box)."""
  s = min(height, width)
  cx = width / 2 + rng.uniform(-0.04, 0.04) * width
  cy = height * rng.uniform(0.48, 0.54)
  a = s * rng.uniform(0.15, 0.185)                    # face half width (box 2.6 a)
  b = a * rng.uniform(1.2, 1.4)                       # face half height
  skin = _skin_color(melanin) * rng.uniform(0.95, 1.05, 3)
  image = np.empty((height, width, 3), np.float32)
  bg = rng.uniform(30, 220, 3)
  gradient = np.linspace(-1, 1, width)[None, :, None] * rng.uniform(-30, 30, 3)
  image[:] = bg + gradient
  mask = np.zeros((height, width), np.float32)
  hair = HAIR_COLORS[rng.integers(len(HAIR_COLORS))] * rng.uniform(0.8, 1.1)

  def ell(img, c, axes, color, angle=0.0, start=0, end=360):
    cv2.ellipse(img, (int(round(c[0] * 16)), int(round(c[1] * 16))),
                (int(round(axes[0] * 16)), int(round(axes[1] * 16))), angle, start, end,
                color, -1, cv2.LINE_AA, 4)

  # neck and hair behind the face, then the face, then its features
  neck = (int(cx - 0.55 * a), int(cy + 0.6 * b), int(cx + 0.55 * a), height)
  cv2.rectangle(image, neck[:2], neck[2:], tuple(float(v) for v in skin * 0.85), -1)
  cv2.rectangle(mask, neck[:2], neck[2:], 1.0, -1)
  ell(image, (cx, cy - 0.12 * b), (1.12 * a, 1.0 * b), tuple(hair.tolist()))
  ell(image, (cx, cy), (a, b), tuple(skin.tolist()))
  ell(mask, (cx, cy), (a, b), 1.0)
  fringe = rng.uniform(0.55, 0.8)
  ell(image, (cx, cy - b * fringe), (1.02 * a, 0.42 * b), tuple(hair.tolist()), 0, 180, 360)
  ell(mask, (cx, cy - b * fringe), (1.02 * a, 0.42 * b), 0.0, 0, 180, 360)
  eye_dx = a * rng.uniform(0.36, 0.44)
  eye_y = cy - b * rng.uniform(0.15, 0.22)
  iris = tuple((rng.uniform(20, 90) * rng.uniform(0.5, 1.0, 3)).tolist())
  brow = tuple(np.minimum(hair, skin * 0.45).tolist())    # brows darker than skin
  socket = np.zeros((height, width), np.float32)
  for side in (-1, 1):
    ell(socket, (cx + side * eye_dx, eye_y - 0.02 * b), (0.3 * a, 0.16 * b), 1.0)
  # Eye sockets are in shadow: the dark eye band is what frontal-face detectors key on (a
  # bright sclera at this scale breaks it up and loses dark-skinned faces).
  image = image * (1 - 0.5 * _blur(socket, a / 10))[..., None]
  for side in (-1, 1):
    ex = cx + side * eye_dx
    ell(mask, (ex, eye_y), (0.24 * a, 0.13 * b), 0.0)
    cv2.circle(image, (int(ex), int(eye_y)), max(int(0.1 * a), 1), iris, -1, cv2.LINE_AA)
    brow_y = eye_y - b * rng.uniform(0.11, 0.15)
    p0 = (int(ex - 0.25 * a), int(brow_y + side * 0.01 * b))
    p1 = (int(ex + 0.23 * a), int(brow_y - side * 0.01 * b))
    cv2.line(image, p0, p1, brow, max(int(0.08 * a), 1), cv2.LINE_AA)
    cv2.line(mask, p0, p1, 0.0, max(int(0.1 * a), 1))
  ell(image, (cx, cy + 0.1 * b), (0.13 * a, 0.2 * b), tuple((skin * 0.82).tolist()))
  lips = np.array([skin[0] * 0.8 + 30, skin[1] * 0.45, skin[2] * 0.5])
  mouth = (cx, cy + b * rng.uniform(0.38, 0.46))
  mouth_axes = (a * rng.uniform(0.28, 0.4), b * rng.uniform(0.06, 0.1))
  ell(image, mouth, mouth_axes, tuple(lips.tolist()))
  ell(mask, mouth, (mouth_axes[0] * 1.15, mouth_axes[1] * 1.4), 0.0)
  # skin texture and side light, then a slight blur (camera optics)
  texture = 1 + 0.04 * _blur(rng.standard_normal((height, width)).astype(np.float32), s / 40)
  light_dir = rng.uniform(-0.15, 0.15)
  shading = 1 + light_dir * (np.arange(width, dtype=np.float32) - cx)[None] / a
  image = image * (texture * shading)[..., None]
  image = _blur(np.clip(image, 0, 255).astype(np.float32), s / 200)
  mask = _blur(mask, s / 120)
  box = np.array([cx - 1.3 * a, cy - 0.05 * b - 1.3 * a, 2.6 * a, 2.6 * a], np.float32)
  return image, mask, box


def _photo_face(rng: np.random.Generator, height: int, width: int, melanin: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """skimage's astronaut photo, resized, stretched, maybe mirrored, skin tone changed."""
  from skimage import data as skimage_data  # pylint: disable=g-import-not-at-top
  photo = skimage_data.astronaut()
  fx, fy, fw, fh = ASTRONAUT_FACE
  s = min(height, width)
  zoom = s * rng.uniform(0.38, 0.46) / fw               # face box side over frame side
  sx, sy = zoom * rng.uniform(0.92, 1.08), zoom * rng.uniform(0.92, 1.08)
  mirror = rng.uniform() < 0.5
  fcx, fcy = fx + fw / 2, fy + fh / 2
  tx = width / 2 + rng.uniform(-0.04, 0.04) * width
  ty = height * rng.uniform(0.42, 0.48)
  m = np.array([[-sx if mirror else sx, 0, 0], [0, sy, 0]], np.float64)
  m[:, 2] = [tx, ty] - m[:, :2] @ [fcx, fcy]
  image = cv2.warpAffine(photo.astype(np.float32), m, (width, height),
                         flags=cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT101)
  ellipse = (0.65 * sx * fw / width, 0.85 * sy * fh / height)
  inside = _ellipse_map(height, width, (tx, ty + 0.1 * sy * fh), ellipse)
  skin = faces_lib.skin_mask(np.clip(image, 0, 255).astype(np.uint8)[None], adaptive=False)[0]
  skin = skin * inside
  skin = _blur(skin.astype(np.float32), s / 100)
  base_skin = np.array([226.0, 168.0, 140.0])             # the photo's own skin colour
  gain = _skin_color(melanin) / base_skin
  image = image * (1 + skin[..., None] * (gain - 1))
  box = np.array([tx - sx * fw / 2, ty - sy * fh / 2, sx * fw, sy * fh], np.float32)
  side = np.sqrt(box[2] * box[3])
  box = np.array([tx - side / 2, ty - side / 2, side, side], np.float32)
  return image.astype(np.float32), skin, box


def _ellipse_map(height, width, center, semi_axes) -> np.ndarray:
  y = (np.arange(height) + 0.5)[:, None] / height - center[1] / height
  x = (np.arange(width) + 0.5)[None, :] / width - center[0] / width
  return ((x / semi_axes[0]) ** 2 + (y / semi_axes[1]) ** 2 <= 1).astype(np.float32)


def _temperature_gain(warmth: float) -> np.ndarray:
  """Per-channel RGB gain of light from cool (-1) to warm (+1), green fixed."""
  return np.array([1 + 0.25 * warmth, 1.0, 1 - 0.35 * warmth], np.float32)


def generate_video(seed: int, *, seconds: float, fps: float = 30.0, domain: str = "source",
                   size: tuple[int, int] = (128, 128), chunk: int = 256) -> SyntheticVideo:
  """Generates one synthetic face video with its ground truth.

  Args:
    seed: the video's seed; (seed, domain) determines everything.
    seconds: duration.
    fps: frame rate.
    domain: a key of `DOMAINS`.
    size: (H, W) of the frames.
    chunk: frames rendered at once (bounds memory: chunk * H * W * 3 float32).

  Returns:
    SyntheticVideo.
  """
  rng_pulse, rng, rng_noise = _rngs(seed, domain)
  d = DOMAINS[domain]
  height, width = size
  n = int(round(seconds * fps))
  if n < 1:
    raise ValueError(f"seconds * fps must give at least one frame, got {seconds} * {fps}")
  t = np.arange(n, dtype=np.float64) / fps
  ppg, hr = pulse_signal(rng_pulse, t, d.hr)

  # Face and nuisances from their own stream, scalars only: the same for any duration.
  melanin = rng.uniform(*d.melanin)
  if rng.uniform() < d.photo:
    base, skin, box = _photo_face(rng, height, width, melanin)
  else:
    base, skin, box = _rendered_face(rng, height, width, melanin)
  # Perfusion varies over the face (forehead and cheeks strongest): a smooth map 0.5..1.5.
  perfusion = _blur(rng.standard_normal((height, width)).astype(np.float32), min(size) / 12)
  perfusion = 1 + 0.5 * np.tanh(perfusion / max(perfusion.std(), 1e-6))
  # Camera optics: a point spread of ~1 pixel. It also keeps the image band-limited, so that
  # the sub-pixel warps of head motion do not change the local sharpness from frame to frame
  # (which would leak into the skin colour at the speed of the motion).
  base = _blur(base, OPTICAL_BLUR)
  amplitude = rng.uniform(*d.amplitude)
  pulse_map = base * (skin * perfusion)[..., None] * (PBV / PBV[1]) * amplitude   # [H, W, 3]
  pulse = ppg - ppg.mean()

  light = rng.uniform(*d.light) * (1 + rng.uniform(-1, 1) * d.light_drift * t / max(t[-1], 1))
  flicker_freq = rng.choice([rng.uniform(9.5, 10.5), rng.uniform(0.02, 0.3)])
  light = light * (1 + rng.uniform(*d.flicker) * np.sin(
      2 * np.pi * flicker_freq * t + rng.uniform(0, 6.3)))
  tint = _temperature_gain(rng.uniform(*d.temperature))
  dx = _smooth_path(rng, t, d.translation * width)
  dy = _smooth_path(rng, t, d.translation * height)
  angle = _smooth_path(rng, t, d.rotation)
  scale = 1 + _smooth_path(rng, t, d.scale)
  read_noise = rng.uniform(*d.read_noise)
  shot_noise = rng.uniform(*d.shot_noise)
  quality = (int(rng.integers(d.jpeg[0], d.jpeg[1] + 1))
             if d.jpeg is not None and rng.uniform() < d.jpeg_probability else None)

  center = (box[0] + box[2] / 2, box[1] + box[3] / 2)
  frames = np.empty((n, height, width, 3), np.uint8)
  boxes = np.empty((n, 4), np.float32)
  moving = bool(d.translation or d.rotation or d.scale)
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    k = slice(start, stop)
    images = np.multiply.outer(-pulse[k], pulse_map)         # f32[chunk, H, W, 3], in place
    images += base
    if moving:
      for i in range(stop - start):
        m = cv2.getRotationMatrix2D(center, float(angle[start + i]), float(scale[start + i]))
        m[:, 2] += (dx[start + i], dy[start + i])
        images[i] = cv2.warpAffine(images[i], m, (width, height), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT101)
    images *= (light[k, None, None, None] * tint).astype(np.float32)
    if read_noise or shot_noise:
      std = np.maximum(images, 0)                          # shot noise variance ~ signal
      std *= shot_noise
      std += read_noise ** 2
      np.sqrt(std, out=std)
      std *= rng_noise.standard_normal(images.shape, dtype=np.float32)
      images += std
    np.rint(images, out=images)
    np.clip(images, 0, 255, out=images)
    frames[k] = images
    if quality is not None:
      for i in range(start, stop):
        _, buf = cv2.imencode(".jpg", frames[i, ..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        frames[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    side = box[2] * scale[k]
    boxes[k] = np.stack([center[0] + dx[k] - side / 2, center[1] + dy[k] - side / 2,
                         side, side], axis=1)
  return SyntheticVideo(frames, ppg, hr, float(fps), boxes)


def generate_face_crops(seed: int, *, seconds: float, fps: float = 30.0,
                        domain: str = "source", size: tuple[int, int] = (128, 128),
                        crop_size: int = 64, enlarge: float = 1.6
                        ) -> tuple[SyntheticVideo, faces_lib.FaceCrops]:
  """Generates a video and crops its face from the known box (no detection: the fast path).

  The crop and mask follow `faces.face_crops` exactly (square box `enlarge` times the face
  box, moved inside the frame, INTER_AREA resize, YCrCb mask with the same face prior), so
  the two paths differ only in where the box comes from.

  Returns:
    (the SyntheticVideo, FaceCrops with `detected` all False).
  """
  v = generate_video(seed, seconds=seconds, fps=fps, domain=domain, size=size)
  height, width = v.frames.shape[1:3]
  centers = v.face_box[:, :2] + v.face_box[:, 2:] / 2
  sides = enlarge * np.sqrt(v.face_box[:, 2] * v.face_box[:, 3])
  boxes = faces_lib.square_boxes(centers, sides, height, width)
  crops = faces_lib.crop_boxes(v.frames, boxes, crop_size)
  masks = faces_lib.skin_mask(crops, ellipse=faces_lib.face_ellipse(enlarge))
  return v, faces_lib.FaceCrops(crops, masks, boxes, np.zeros(len(crops), bool))


def write_ubfc(directory: str | os.PathLike, v: SyntheticVideo, *, codec: str = "ffv1"
               ) -> pathlib.Path:
  """Writes `directory/vid.avi` and `directory/ground_truth.txt` (UBFC-rPPG DATASET_2)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  video_lib.write_video(directory / "vid.avi", v.frames, v.fps, codec=codec)
  t = np.arange(len(v.ppg), dtype=np.float64) / v.fps
  with open(directory / "ground_truth.txt", "w") as f:
    for row in (v.ppg, v.hr, t):
      f.write(" ".join(f"{x:.7e}" for x in np.asarray(row, np.float64)) + "\n")
  return directory


def benchmark_generation(seconds: float = 60.0, domain: str = "shifted",
                         size: tuple[int, int] = (128, 128), repeats: int = 2) -> dict:
  """Time to generate one minute of video (median over `repeats` videos).

  Returns wall-clock and process CPU seconds per minute of video (CPU time is the steadier
  figure on a shared machine), keys with units as experiments/benchmark.py expects.
  """
  wall, cpu = [], []
  for r in range(repeats):
    w0, c0 = time.perf_counter(), time.process_time()
    generate_video(r, seconds=seconds, domain=domain, size=size)
    wall.append(time.perf_counter() - w0)
    cpu.append(time.process_time() - c0)
  per_minute = 60.0 / seconds
  return {"synthetic_s_per_video_minute": float(np.median(wall)) * per_minute,
          "synthetic_cpu_s_per_video_minute": float(np.median(cpu)) * per_minute,
          "synthetic_frame_size": f"{size[0]}x{size[1]}", "synthetic_domain": domain}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m metarppg_jax.data.synthetic",
      description="Write synthetic face videos in the UBFC-rPPG DATASET_2 layout.")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--num_videos", type=int, default=1)
  parser.add_argument("--seconds", type=float, default=30.0)
  parser.add_argument("--fps", type=float, default=30.0)
  parser.add_argument("--domain", default="source", choices=sorted(DOMAINS))
  parser.add_argument("--seed", type=int, default=0,
                      help="video i has seed K + i and goes to subject<K + i>")
  parser.add_argument("--height", type=int, default=128)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--codec", default="ffv1", choices=["ffv1", "rawvideo", "mjpeg"],
                      help="ffv1/rawvideo store the frames exactly; mjpeg adds compression")
  args = parser.parse_args(argv)
  if args.num_videos < 1 or args.seconds <= 0 or args.fps <= 0:
    parser.error("--num_videos, --seconds and --fps must be positive")
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(args.out)
  for i in tqdm(range(args.num_videos), desc=f"synthetic {args.domain}", unit="video"):
    seed = args.seed + i
    v = generate_video(seed, seconds=args.seconds, fps=args.fps, domain=args.domain,
                       size=(args.height, args.width))
    write_ubfc(out / f"subject{seed}", v, codec=args.codec)
  return 0


if __name__ == "__main__":
  sys.exit(main())
