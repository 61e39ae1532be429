"""Synthetic face videos with a known pulse: the embedded default dataset.

Each frame follows the skin reflection model of Wang et al. (2017, "Algorithmic principles of
remote PPG"): `C(x, t) = I(t) c(t) * (v_s(x, t) + v_d(x, t)) + v_n(x, t)`, with the light's
intensity I and colour c, a specular term v_s in the light's colour, a diffuse term v_d that
carries the pulse, and camera noise v_n. A video is made in five steps, driven by independent
random streams spawned from `np.random.SeedSequence([seed, domain])` (pulse; face and scene;
sensor noise), so the face and the nuisance parameters of a seed do not depend on the duration:

1. A face with 3-D shape (`_photo_face`, `_rendered_face`): an albedo image, a soft skin map
   (where blood volume modulates colour), a gloss map (where skin reflects specularly: forehead,
   nose, cheeks), a height field (ellipsoid head, nose ridge, brow ridge, eye sockets, cheeks)
   and the face box a frontal-face detector reports. Faces are either the real photo
   `skimage.data.astronaut()` (NASA, public domain; the only colour face photo shipped by an
   installed package) under a random non-uniform scale, mirror and skin-tone change, its
   albedo the photo divided by the rest-pose shading, or a rendered face of random geometry
   (face ellipse, eyes, brows, nose, mouth, hair, neck, background) with skin texture.
2. A physiological pulse (`pulse_signal`): instantaneous heart rate = base rate + slow drift +
   respiratory sinus arrhythmia + beat-to-beat variability, clipped to 45..150 bpm; each beat
   has a systolic peak and a dicrotic wave; respiration modulates amplitude and baseline. The
   times of the systolic peaks are `beats` (heart-rate-variability ground truth).
3. Pulse in the diffuse reflectance: relative change per channel
   `-amplitude * PBV / PBV_G * pulse(t)` with PBV = (0.33, 0.77, 0.53) (de Haan & van Leest
   2014; more blood absorbs more light), amplitude 0.3..1 % of skin intensity (green, peak to
   peak), varied over the skin by a smooth perfusion map.
4. Pose, then light (`_render`): head rotation (yaw, pitch, roll) and translation follow slow
   paths plus in-band jitter (0.5..3 Hz: talking, breathing, sway). The albedo, skin, normal and
   gloss maps are warped to the pose and the normals rotated; only then is the frame lit by a
   directional + ambient source (Lambert) and a Blinn-Phong specular lobe in the light's
   colour, so head motion changes the light falling on the skin frame by frame. The light's
   intensity drifts slowly and fluctuates in the pulse band (relative std `light_band`:
   ambient, screen content), with mains flicker aliased to ~10 Hz; its colour drifts slowly
   (`chroma_drift`) and a screen adds small in-band chromatic changes (`screen`).
5. Camera: the frame stands for a sensor on which the face is `face_width` pixels wide (a
   640x480 recording: 110..220), binned to the rendered size, so per-pixel shot + read noise
   is divided by the binning (the skin-averaged SNR of the real recording); 8-bit
   quantisation; H.264 (`h264_round_trip`: libx264 through PyAV, yuv420p, CRF `crf`, x264's
   perceptual shortcuts off) with probability `codec_probability`.

Why this matters: what reaches the 0.7..3.5 Hz band in real videos is mostly intensity
(motion-driven shading, specular, light) common to all colour channels, which the
colour-difference methods (CHROM, POS) cancel and GREEN does not. Measured with
`experiments/realism.py` (textbook POS/CHROM/GREEN on a fixed box inside the known face box,
one HR per 30 s video, 16 videos a domain; MAE in bpm with its standard error): source POS
0.29 +- 0.06, CHROM 0.31 +- 0.06, GREEN 15.7 +- 5.1; shifted POS 4.1 +- 3.7, CHROM 11.3 +- 5.0,
GREEN 28.8 +- 6.0 (rPPG-Toolbox on real UBFC-rPPG: POS 4.0, CHROM 4.0, GREEN 19.8).

Domains (`DOMAINS`, each range uniform):
- "source" (training; a lab recording like UBFC-rPPG or PURE, stored uncompressed): light to
  medium skin (melanin 0..0.5), light level 0.7..0.95 from the front (azimuth within 35 deg,
  elevation 10..40 deg, ambient 30..50 %) with 0.4..1.2 % in-band fluctuation, warmth
  -0.2..0.2, a still subject (1.5 deg, 1.5 % translation) with 0.05..0.2 deg jitter, specular
  0.04..0.1, face 150..220 sensor pixels wide, read noise 1..2 DN, shot 0.03..0.08 DN/DN, no
  codec, HR 55..120, pulse 0.3..1 %.
- "shifted" (testing; a webcam at home like MAHNOB-HCI): medium to dark skin (0.3..0.9), dim
  light (0.5..0.85) from the side (azimuth up to 60 deg), less ambient (20..40 %), warm or cool
  (-0.8..0.8) with a colour drift (0.2) and a screen's in-band colour (0.01..0.05 % a channel),
  stronger mains flicker, more motion (3 deg, 2.5 %) and jitter (0.15..0.45 deg), oilier skin
  (specular 0.06..0.15), a smaller face (110..170 sensor pixels), noisier sensor (read
  1.5..2.5 DN, shot 0.06..0.15 DN/DN), H.264 CRF 0..3 always, HR 45..150, pulse 0.3..0.8 %.
  The CRF is low because the codec runs on the 128x128 frame, where a macroblock covers a
  fifth of the face: CRF 6 already erased the pulse for POS on 3 of 4 videos, CRF 12 on 4 of 4
  (heavy compression destroys the pulse on real recordings too).
- "hard" pushes every nuisance further (pulse 0.2..0.6 %, dimmer, in-band light 0.8..2 %,
  more motion and jitter, a smaller face, CRF 2..6): POS within 5 bpm on 4 of 8 videos,
  CHROM on 1, GREEN on none (`experiments/realism.py --videos 8 --seconds 20 --domains
  hard`).
- "clean" has no nuisances (a still face under constant white light, no noise, no codec): for
  tests of the signal path.

Ground truth: `ppg` is the finger-PPG-like blood-volume waveform (higher = more blood, so the
skin darkens when it rises), `hr` the instantaneous rate, both per frame, aligned with the
frames (no pulse transit delay), and `beats` the systolic peak times.

Not modelled: subsurface scattering and the depth profile of the pulse, ballistocardiographic
head motion at the heart rate, facial expressions and blinks, non-rigid motion, camera
auto-exposure and white balance, rolling shutter, occlusions, multiple light sources in
different colours on different sides of the face.

CLI: `python -m metarppg_jax.data.synthetic --out DIR --num_videos N --seconds S --domain D
--seed K` writes `DIR/subject<K+i>/vid.avi` (lossless FFV1 by default, the nuisances already
applied) and `ground_truth.txt` in UBFC-rPPG DATASET_2 format (3 lines: PPG, HR, time in s).
"""

import argparse
import dataclasses
import fractions
import io
import os
import pathlib
import sys
from typing import NamedTuple

import av
import cv2
import numpy as np
from scipy import ndimage
from scipy import signal as scipy_signal

from metarppg_jax.data import faces as faces_lib
from metarppg_jax.data import video as video_lib

PBV = np.array([0.33, 0.77, 0.53], np.float32)   # blood-volume pulse direction in RGB
HR_RANGE = (45.0, 150.0)
ASTRONAUT_FACE = (177.0, 66.0, 95.0, 95.0)       # Haar box of skimage.data.astronaut(), 512 px
OPTICAL_BLUR = 1.0                               # Gaussian sigma, output pixels
BAND = (0.5, 3.0)                                # Hz, in-band nuisances (motion, light)
SHININESS = 12.0
# A camera's encoder codes what it sees, without x264's perceptual shortcuts (adaptive
# quantisation, psycho-visual rate-distortion, dead zones, trellis zeroing, skipping blocks
# that barely change): those erase a sub-level colour change that lasts seconds.
X264_PARAMS = ("aq-mode=0:no-mbtree=1:no-fast-pskip=1:deadzone-inter=0:deadzone-intra=0:"
               "trellis=0:psy-rd=0,0")                                 # Blinn-Phong exponent of skin
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
  azimuth: float                          # max horizontal angle of the light, degrees
  elevation: tuple[float, float]          # light above the camera axis, degrees
  ambient: tuple[float, float]            # ambient fraction of the light
  light_drift: float                      # max relative slow drift over the video
  light_band: tuple[float, float]         # relative std of in-band light fluctuation
  flicker: tuple[float, float]            # relative mains flicker (aliased to ~10 Hz)
  temperature: tuple[float, float]        # -1 cool .. +1 warm
  chroma_drift: float                     # max slow change of warmth over the video
  screen: tuple[float, float]             # relative std of in-band chromatic light (per channel)
  specular: tuple[float, float]           # peak specular reflectance of glossy skin
  translation: float                      # max slow translation, fraction of the frame
  rotation: float                         # max slow rotation (yaw, pitch, roll), degrees
  scale: float                            # max relative scale change
  jitter: tuple[float, float]             # in-band head rotation, std in degrees
  face_width: tuple[float, float]         # face width in sensor pixels (noise binning)
  read_noise: tuple[float, float]         # DN (0..255) per sensor pixel
  shot_noise: tuple[float, float]         # variance per DN of signal, per sensor pixel
  crf: tuple[int, int] | None             # H.264 CRF range, None: no compression
  codec_probability: float


def _domain(**overrides) -> Domain:
  """The clean domain with `overrides`: no nuisance unless named."""
  clean = dict(hr=(50, 120), amplitude=(0.005, 0.01), melanin=(0.0, 0.4), photo=0.3,
               light=(1.0, 1.0), azimuth=0.0, elevation=(20.0, 20.0), ambient=(0.4, 0.4),
               light_drift=0.0, light_band=(0.0, 0.0), flicker=(0.0, 0.0),
               temperature=(0.0, 0.0), chroma_drift=0.0, screen=(0.0, 0.0),
               specular=(0.0, 0.0), translation=0.0, rotation=0.0, scale=0.0,
               jitter=(0.0, 0.0), face_width=(200.0, 200.0), read_noise=(0.0, 0.0),
               shot_noise=(0.0, 0.0), crf=None, codec_probability=0.0)
  return Domain(**{**clean, **overrides})


DOMAINS = {
    "clean": _domain(),
    "source": _domain(
        hr=(55, 120), amplitude=(0.003, 0.01), melanin=(0.0, 0.5), light=(0.7, 0.95),
        azimuth=35.0, elevation=(10.0, 40.0), ambient=(0.3, 0.5), light_drift=0.05,
        light_band=(0.004, 0.012), flicker=(0.0, 0.002), temperature=(-0.2, 0.2),
        chroma_drift=0.05, screen=(0.0, 0.0), specular=(0.04, 0.1), translation=0.015,
        rotation=1.5, scale=0.015, jitter=(0.05, 0.2), face_width=(150.0, 220.0),
        read_noise=(1.0, 2.0), shot_noise=(0.03, 0.08), crf=(0, 0),
        codec_probability=0.0),                       # stored uncompressed
    "shifted": _domain(
        hr=(45, 150), amplitude=(0.003, 0.008), melanin=(0.3, 0.9), light=(0.5, 0.85),
        azimuth=60.0, elevation=(0.0, 40.0), ambient=(0.2, 0.4), light_drift=0.15,
        light_band=(0.004, 0.012), flicker=(0.001, 0.005), temperature=(-0.8, 0.8),
        chroma_drift=0.2, screen=(0.0001, 0.0005), specular=(0.06, 0.15), translation=0.025,
        rotation=3.0, scale=0.025, jitter=(0.15, 0.45), face_width=(110.0, 170.0),
        read_noise=(1.5, 2.5), shot_noise=(0.06, 0.15), crf=(0, 3), codec_probability=1.0),
    "hard": _domain(
        hr=(45, 150), amplitude=(0.002, 0.006), melanin=(0.3, 1.0), light=(0.4, 0.75),
        azimuth=70.0, elevation=(-10.0, 40.0), ambient=(0.15, 0.3), light_drift=0.2,
        light_band=(0.008, 0.02), flicker=(0.002, 0.01), temperature=(-1.0, 1.0),
        chroma_drift=0.3, screen=(0.0003, 0.001), specular=(0.08, 0.2), translation=0.04,
        rotation=5.0, scale=0.04, jitter=(0.3, 0.8), face_width=(80.0, 130.0),
        read_noise=(2.0, 3.5), shot_noise=(0.1, 0.25), crf=(2, 6), codec_probability=1.0),
}
DOMAIN_IDS = {"clean": 0, "source": 1, "shifted": 2, "hard": 3}


class SyntheticVideo(NamedTuple):
  """One generated video.

  frames: uint8[T, H, W, 3] RGB.
  ppg: f32[T] blood-volume waveform at the frame times (arbitrary units, ~0..1).
  hr: f32[T] instantaneous heart rate, bpm.
  fps: frame rate.
  face_box: f32[T, 4] (x, y, w, h) of the face as a frontal-face detector reports it.
  beats: f64[B] times (s, from the first frame) of the systolic peaks within the video.
  """
  frames: np.ndarray
  ppg: np.ndarray
  hr: np.ndarray
  fps: float
  face_box: np.ndarray
  beats: np.ndarray


class Pulse(NamedTuple):
  """ppg: f32[T] ~0..1 (higher = more blood); hr: f32[T] bpm; beats: f64[B] systolic peaks, s."""
  ppg: np.ndarray
  hr: np.ndarray
  beats: np.ndarray


class Face(NamedTuple):
  """A face at rest pose, f32 maps of the frame: albedo [H, W, 3] (DN at unit light), skin
  [H, W] (0..1, where the pulse shows), gloss [H, W] (0..1), height [H, W] (pixels toward the
  camera), box [4] (x, y, w, h)."""
  albedo: np.ndarray
  skin: np.ndarray
  gloss: np.ndarray
  height: np.ndarray
  box: np.ndarray


def _rngs(seed: int, domain: str) -> list[np.random.Generator]:
  """Independent streams (pulse, face and scene, sensor noise) for one (seed, domain)."""
  if domain not in DOMAINS:
    raise ValueError(f"unknown domain {domain!r}; choose one of {sorted(DOMAINS)}")
  sequence = np.random.SeedSequence([int(seed), DOMAIN_IDS[domain]])
  return [np.random.default_rng(s) for s in sequence.spawn(3)]


def _smooth_noise(rng: np.random.Generator, n: int, correlation: float) -> np.ndarray:
  """Zero-mean unit-std noise f64[n] low-passed with a Gaussian of `correlation` samples."""
  x = ndimage.gaussian_filter1d(rng.standard_normal(n), max(correlation, 1e-3), mode="wrap")
  x = x - x.mean()
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
                 ) -> Pulse:
  """A physiological PPG waveform, its instantaneous heart rate and its beat times.

  Args:
    rng: the generator.
    t: f64[T] sample times, seconds, uniform.
    hr_range: range of the base heart rate, bpm.

  Returns:
    Pulse(ppg f32[T] ~0..1, hr f32[T] bpm within 45..150, beats f64[B] systolic peak times).
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
  phase = np.cumsum(hr / 60.0 * dt) + phase0
  frac = np.mod(phase, 1.0)

  def bump(at, width):
    d = np.mod(frac - at + 0.5, 1.0) - 0.5
    return np.exp(-0.5 * (d / width) ** 2)

  beat = bump(systolic_at, systolic_width) + dicrotic * bump(dicrotic_at, dicrotic_width)
  beat = (beat - beat.min()) / max(np.ptp(beat), 1e-12)
  ppg = beat * (1 + resp_am * respiration) + resp_baseline * np.sin(
      2 * np.pi * resp_rate * t + resp_phase + 1.0)
  # A systolic peak where the beat phase passes systolic_at; the phase is linear between
  # samples, so interpolating it gives the peak times between frames.
  first, last = np.ceil(phase[0] - systolic_at), np.floor(phase[-1] - systolic_at)
  beats = np.interp(np.arange(first, last + 1) + systolic_at, phase, t)
  return Pulse(ppg.astype(np.float32), hr.astype(np.float32), beats.astype(np.float64))


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
  return cv2.GaussianBlur(image, (0, 0), max(sigma, 0.3))


def _skin_color(melanin: float) -> np.ndarray:
  """RGB 0..255 of skin from light (0) to dark (1)."""
  light = np.array([232.0, 190.0, 165.0])
  dark = np.array([100.0, 64.0, 46.0])
  return light + (dark - light) * melanin


def _gauss2d(height: int, width: int, center, sigma) -> np.ndarray:
  """f32[H, W] Gaussian bump of peak 1 at `center` (x, y) with `sigma` (sx, sy) pixels."""
  y = (np.arange(height, dtype=np.float32)[:, None] - center[1]) / sigma[1]
  x = (np.arange(width, dtype=np.float32)[None, :] - center[0]) / sigma[0]
  return np.exp(-0.5 * (x * x + y * y))


def _head_height(height: int, width: int, center, a: float, b: float, rng: np.random.Generator
                 ) -> np.ndarray:
  """Height field f32[H, W] (pixels toward the camera) of a head of semi-axes a x b at
  `center`: an ellipsoid with nose, brow ridge, eye sockets and cheekbones."""
  cx, cy = center
  y = (np.arange(height, dtype=np.float32)[:, None] - cy) / (1.08 * b)
  x = (np.arange(width, dtype=np.float32)[None, :] - cx) / (1.08 * a)
  depth = a * rng.uniform(0.8, 1.0)
  head = depth * np.sqrt(np.clip(1 - x * x - y * y, 0, None))
  nose = 0.25 * a * _gauss2d(height, width, (cx, cy + 0.05 * b), (0.14 * a, 0.28 * b))
  brow = 0.08 * a * _gauss2d(height, width, (cx, cy - 0.3 * b), (0.6 * a, 0.06 * b))
  cheeks = sum(0.1 * a * _gauss2d(height, width, (cx + s * 0.45 * a, cy + 0.1 * b),
                                   (0.25 * a, 0.2 * b)) for s in (-1, 1))
  sockets = sum(0.12 * a * _gauss2d(height, width, (cx + s * 0.4 * a, cy - 0.18 * b),
                                     (0.16 * a, 0.1 * b)) for s in (-1, 1))
  return _blur((head + nose + brow + cheeks - sockets).astype(np.float32), 0.02 * a)


def _normals(height_map: np.ndarray) -> np.ndarray:
  """Unit surface normals f32[H, W, 3] (x right, y down, z toward the camera) of a height
  field; the steepest slopes (the silhouette) are capped at 80 degrees."""
  gy, gx = np.gradient(height_map)
  slope = np.sqrt(gx * gx + gy * gy)
  cap = np.minimum(1.0, np.tan(np.radians(80)) / np.maximum(slope, 1e-6))
  n = np.stack([-gx * cap, -gy * cap, np.ones_like(gx)], axis=-1)
  return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


def _rendered_face(rng: np.random.Generator, height: int, width: int, melanin: float) -> Face:
  """A drawn face of random geometry on a head-shaped height field."""
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
  # Eye sockets are darker (lids, lashes): the dark eye band is what frontal-face detectors
  # key on (a bright sclera at this scale breaks it up and loses dark-skinned faces).
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
  texture = 1 + 0.04 * _blur(rng.standard_normal((height, width)).astype(np.float32), s / 40)
  albedo = _blur(np.clip(image * texture[..., None], 0, 255).astype(np.float32), s / 200)
  mask = _blur(mask, s / 120)
  box = np.array([cx - 1.3 * a, cy - 0.05 * b - 1.3 * a, 2.6 * a, 2.6 * a], np.float32)
  heights = _head_height(height, width, (cx, cy), a, b, rng)
  return Face(albedo, mask, _gloss(mask, (cx, cy), a, b), heights, box)


def _gloss(skin: np.ndarray, center, a: float, b: float) -> np.ndarray:
  """Specular weight f32[H, W]: all skin a little, the T-zone (forehead, nose) most."""
  height, width = skin.shape
  cx, cy = center
  t_zone = np.maximum(_gauss2d(height, width, (cx, cy - 0.55 * b), (0.5 * a, 0.2 * b)),
                      _gauss2d(height, width, (cx, cy + 0.05 * b), (0.12 * a, 0.3 * b)))
  return (skin * (0.4 + 0.6 * t_zone)).astype(np.float32)


def _photo_face(rng: np.random.Generator, height: int, width: int, melanin: float,
                rest_light: np.ndarray, ambient: float) -> Face:
  """skimage's astronaut photo, resized, stretched, maybe mirrored, skin tone changed; its
  albedo is the photo over the shading of the rest pose under `rest_light` f32[3]."""
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
  center = (tx, ty + 0.1 * sy * fh)
  a, b = 0.62 * sx * fw, 0.8 * sy * fh
  inside = _ellipse_map(height, width, center, (0.65 * sx * fw / width, 0.85 * sy * fh / height))
  skin = faces_lib.skin_mask(np.clip(image, 0, 255).astype(np.uint8)[None], adaptive=False)[0]
  skin = _blur((skin * inside).astype(np.float32), s / 100)
  gain = _skin_color(melanin) / np.array([226.0, 168.0, 140.0])   # over the photo's own skin
  image = image * (1 + skin[..., None] * (gain - 1))
  heights = _head_height(height, width, center, a, b, rng)
  shade = _shading(_normals(heights)[None], rest_light, ambient)[0]
  albedo = image / np.maximum(shade, 0.3)[..., None]
  side = np.sqrt(sx * fw * sy * fh)
  box = np.array([tx - side / 2, ty - side / 2, side, side], np.float32)
  return Face(albedo.astype(np.float32), skin, _gloss(skin, center, a, b), heights, box)


def _ellipse_map(height, width, center, semi_axes) -> np.ndarray:
  y = (np.arange(height) + 0.5)[:, None] / height - center[1] / height
  x = (np.arange(width) + 0.5)[None, :] / width - center[0] / width
  return ((x / semi_axes[0]) ** 2 + (y / semi_axes[1]) ** 2 <= 1).astype(np.float32)


def _temperature_gain(warmth: np.ndarray | float) -> np.ndarray:
  """Per-channel RGB gain f32[..., 3] of light from cool (-1) to warm (+1), green fixed."""
  warmth = np.asarray(warmth, np.float64)[..., None]
  return (1 + warmth * np.array([0.25, 0.0, -0.35])).astype(np.float32)


def _light_direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
  """Unit vector f32[3] toward the light (x right, y down, z toward the camera)."""
  az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
  return np.array([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)], np.float32)


def _shading(normals: np.ndarray, light: np.ndarray, ambient: float) -> np.ndarray:
  """Lambert shading f32[..., H, W] of unit `normals` f32[..., H, W, 3], 1 where the surface
  faces the camera."""
  lit = np.maximum(normals @ light, 0)
  return (ambient + (1 - ambient) * lit) / (ambient + (1 - ambient) * light[2])


class _Scene(NamedTuple):
  """Light, pose and camera of one video. light f64[T] intensity; color f32[T, 3] the light's
  RGB gain; direction f32[3] toward the light; pose f64[T, 6] (dx, dy px, scale, yaw, pitch,
  roll degrees); the rest scalars."""
  light: np.ndarray
  color: np.ndarray
  direction: np.ndarray
  ambient: float
  specular: float
  amplitude: float
  pose: np.ndarray
  face_width: float
  read_noise: float
  shot_noise: float
  crf: int | None


def _band_series(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
  """In-band noise f64[n] of unit expected std, the same prefix for any duration."""
  high = min(BAND[1], 0.45 * fps)
  if high <= BAND[0]:                       # a frame rate too low to show the band
    return np.zeros(n)
  sos = scipy_signal.butter(4, (BAND[0], high), btype="bandpass", fs=fps, output="sos")
  pad = int(4 * fps / BAND[0])
  impulse = scipy_signal.sosfilt(sos, np.eye(1, 20 * pad)[0])
  x = scipy_signal.sosfilt(sos, rng.standard_normal(n + pad))[pad:]
  return x / np.sqrt((impulse ** 2).sum())


def _scene(rng: np.random.Generator, d: Domain, t: np.ndarray, fps: float,
           size: tuple[int, int], face_side: float) -> _Scene:
  """Samples the light, pose and camera; scalars first, series of length T last."""
  height, width = size
  n = t.shape[0]
  level = rng.uniform(*d.light)
  drift = rng.uniform(-1, 1) * d.light_drift
  band, flicker = rng.uniform(*d.light_band), rng.uniform(*d.flicker)
  flicker_freq, flicker_phase = rng.uniform(9.5, 10.5), rng.uniform(0, 2 * np.pi)
  warmth, warmth_drift = rng.uniform(*d.temperature), rng.uniform(-1, 1) * d.chroma_drift
  screen = rng.uniform(*d.screen)
  direction = _light_direction(rng.uniform(-1, 1) * d.azimuth, rng.uniform(*d.elevation))
  ambient, specular = rng.uniform(*d.ambient), rng.uniform(*d.specular)
  amplitude = rng.uniform(*d.amplitude)
  jitter = rng.uniform(*d.jitter)
  slow = [_smooth_path(rng, t, d.translation * width), _smooth_path(rng, t, d.translation * height),
          _smooth_path(rng, t, d.scale)] + [_smooth_path(rng, t, d.rotation) for _ in range(3)]
  warmth_path = _smooth_path(rng, t, 1.0)
  face_width = rng.uniform(*d.face_width)
  read_noise, shot_noise = rng.uniform(*d.read_noise), rng.uniform(*d.shot_noise)
  crf = (int(rng.integers(d.crf[0], d.crf[1] + 1))
         if d.crf is not None and rng.uniform() < d.codec_probability else None)

  light = level * (1 + drift * t / max(t[-1], 1)) * (1 + band * _band_series(rng, n, fps))
  light *= 1 + flicker * np.sin(2 * np.pi * flicker_freq * t + flicker_phase)
  color = _temperature_gain(warmth + warmth_drift * warmth_path)
  color *= 1 + screen * np.stack([_band_series(rng, n, fps) for _ in range(3)], -1)
  rotation = np.stack(slow[3:], -1) + jitter * np.stack(
      [_band_series(rng, n, fps) for _ in range(3)], -1)           # yaw, pitch, roll
  # The head turns about the neck, about half a face width behind the face: yaw and pitch
  # also move the face in the image.
  pivot = 0.5 * face_side
  dx = slow[0] + pivot * np.sin(np.radians(rotation[:, 0]))
  dy = slow[1] - pivot * np.sin(np.radians(rotation[:, 1]))
  pose = np.stack([dx, dy, 1 + slow[2], rotation[:, 0], rotation[:, 1], rotation[:, 2]], -1)
  return _Scene(light, color.astype(np.float32), direction, ambient, specular, amplitude, pose,
                face_width, read_noise, shot_noise, crf)


def _rotations(pose: np.ndarray) -> np.ndarray:
  """f32[T, 3, 3] rotations of the surface normals for pose f64[T, 6]: roll (as the image
  warp turns the face), then yaw about the vertical axis, then pitch."""
  yaw, pitch, roll = (np.radians(pose[:, i]) for i in (3, 4, 5))
  zero, one = np.zeros_like(yaw), np.ones_like(yaw)
  rz = np.stack([np.cos(roll), np.sin(roll), zero, -np.sin(roll), np.cos(roll), zero,
                 zero, zero, one], -1).reshape(-1, 3, 3)
  ry = np.stack([np.cos(yaw), zero, np.sin(yaw), zero, one, zero,
                 -np.sin(yaw), zero, np.cos(yaw)], -1).reshape(-1, 3, 3)
  rx = np.stack([one, zero, zero, zero, np.cos(pitch), -np.sin(pitch),
                 zero, np.sin(pitch), np.cos(pitch)], -1).reshape(-1, 3, 3)
  return (rx @ ry @ rz).astype(np.float32)


def _posed_maps(surface: np.ndarray, material: np.ndarray, pose: np.ndarray, center
                ) -> tuple[np.ndarray, np.ndarray]:
  """The face's maps moved to each pose: surface f32[H, W, 4] (albedo RGB, pulse weight) and
  material f32[H, W, 4] (normal xyz, gloss) -> f32[C, H, W, 4] each, normals rotated."""
  height, width = surface.shape[:2]
  if not np.any(pose[:, [0, 1, 3, 4, 5]]) and np.all(pose[:, 2] == 1):
    c = len(pose)
    return np.broadcast_to(surface, (c,) + surface.shape), np.broadcast_to(
        material, (c,) + material.shape)
  surfaces = np.empty((len(pose),) + surface.shape, np.float32)
  materials = np.empty_like(surfaces)
  for i, (dx, dy, scale, _, _, roll) in enumerate(pose):
    m = cv2.getRotationMatrix2D(center, float(roll), float(scale))
    m[:, 2] += (dx, dy)
    for src, dst in ((surface, surfaces), (material, materials)):
      cv2.warpAffine(src, m, (width, height), dst=dst[i], flags=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT101)
  rotations = _rotations(pose)[:, None, None]                  # [C, 1, 1, 3, 3]
  normals = materials[..., 0:1] * rotations[..., 0]            # R @ n, one column at a time
  normals += materials[..., 1:2] * rotations[..., 1]
  normals += materials[..., 2:3] * rotations[..., 2]
  # Interpolated unit vectors are a little short: back to unit length.
  normals /= np.maximum(np.sqrt((normals * normals).sum(-1, keepdims=True)), 1e-6)
  materials[..., :3] = normals
  return surfaces, materials


def _render(surfaces: np.ndarray, materials: np.ndarray, scene: _Scene, pulse: np.ndarray,
            k: slice) -> np.ndarray:
  """Light on the posed face: f32[C, H, W, 3] in DN for frames k, before the camera.

  Diffuse (albedo darkened along PBV by the pulse, Lambert-shaded) plus specular (Blinn-Phong
  in the light's colour), both times the light's intensity and colour."""
  normals, gloss = materials[..., :3], materials[..., 3]
  half = scene.direction + np.array([0, 0, 1], np.float32)
  half /= np.linalg.norm(half)
  shade = _shading(normals, scene.direction, scene.ambient)
  spec = scene.specular * 255.0 * gloss * np.maximum(normals @ half, 0) ** SHININESS
  absorb = (scene.amplitude * PBV / PBV[1]).astype(np.float32)
  diffuse = 1 - pulse[k, None, None, None] * (surfaces[..., 3:] * absorb)
  diffuse *= surfaces[..., :3]
  diffuse *= shade[..., None]
  diffuse += spec[..., None]
  diffuse *= (scene.light[k, None] * scene.color[k]).astype(np.float32)[:, None, None, :]
  return diffuse


def _camera(images: np.ndarray, scene: _Scene, bin_factor: float,
            rng: np.random.Generator) -> np.ndarray:
  """Sensor noise (shot + read per sensor pixel, averaged over bin_factor^2 of them) and 8-bit
  quantisation: f32[C, H, W, 3] DN -> uint8[C, H, W, 3]."""
  if scene.read_noise or scene.shot_noise:
    std = np.maximum(images, 0)                            # shot noise variance ~ signal
    std *= scene.shot_noise
    std += scene.read_noise ** 2
    np.sqrt(std, out=std)
    std *= rng.standard_normal(images.shape, dtype=np.float32) / bin_factor
    images += std
  np.rint(images, out=images)
  np.clip(images, 0, 255, out=images)
  return images.astype(np.uint8)


def h264_round_trip(frames: np.ndarray, fps: float, crf: int) -> np.ndarray:
  """Encodes uint8[T, H, W, 3] RGB with libx264 (CRF `crf`, yuv420p, or yuv444p for odd
  sizes) in memory and decodes it again: what a camera's or a phone's codec leaves."""
  t, height, width, _ = frames.shape
  buffer = io.BytesIO()
  with av.open(buffer, mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
    stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1",
                      "x264-params": X264_PARAMS}
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  buffer.seek(0)
  out = np.empty_like(frames)
  with av.open(buffer, mode="r") as container:
    for i, frame in enumerate(container.decode(video=0)):
      out[i] = frame.to_ndarray(format="rgb24")
  if i + 1 != t:
    raise RuntimeError(f"h264 round trip returned {i + 1} frames for {t}")
  return out


def generate_video(seed: int, *, seconds: float, fps: float = 30.0, domain: str = "source",
                   size: tuple[int, int] = (128, 128), chunk: int = 64) -> SyntheticVideo:
  """Generates one synthetic face video with its ground truth.

  Args:
    seed: the video's seed; (seed, domain) determines everything.
    seconds: duration.
    fps: frame rate.
    domain: a key of `DOMAINS`.
    size: (H, W) of the frames.
    chunk: frames rendered at once (bounds memory: ~6 chunk * H * W * 4 float32).

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
  pulse = pulse_signal(rng_pulse, t, d.hr)

  # Face and scene from their own stream: the same scalars for any duration.
  melanin = rng.uniform(*d.melanin)
  photo = rng.uniform() < d.photo
  face_draw = np.random.default_rng(rng.integers(2 ** 63))
  scene_draw = np.random.default_rng(rng.integers(2 ** 63))
  face_side = 0.42 * min(size)
  scene = _scene(scene_draw, d, t, fps, size, face_side)
  face = (_photo_face(face_draw, height, width, melanin, scene.direction, scene.ambient)
          if photo else _rendered_face(face_draw, height, width, melanin))
  # Perfusion varies over the face (forehead and cheeks strongest): a smooth map 0.5..1.5.
  perfusion = _blur(face_draw.standard_normal((height, width)).astype(np.float32),
                    min(size) / 12)
  perfusion = 1 + 0.5 * np.tanh(perfusion / max(perfusion.std(), 1e-6))
  # Camera optics: a point spread of ~1 pixel. It also keeps the maps band-limited, so that
  # the sub-pixel warps of head motion do not change the local sharpness from frame to frame.
  surface = _blur(np.dstack([face.albedo, face.skin * perfusion]), OPTICAL_BLUR)
  material = np.dstack([_normals(face.height), face.gloss]).astype(np.float32)
  relative = (pulse.ppg - pulse.ppg.mean()).astype(np.float32)
  center = (float(face.box[0] + face.box[2] / 2), float(face.box[1] + face.box[3] / 2))
  bin_factor = max(scene.face_width / float(face.box[2]), 1.0)

  frames = np.empty((n, height, width, 3), np.uint8)
  for start in range(0, n, chunk):
    k = slice(start, min(start + chunk, n))
    surfaces, materials = _posed_maps(surface, material, scene.pose[k], center)
    frames[k] = _camera(_render(surfaces, materials, scene, relative, k), scene, bin_factor,
                        rng_noise)
  if scene.crf is not None:
    frames = h264_round_trip(frames, fps, scene.crf)
  dx, dy, scale = scene.pose[:, 0], scene.pose[:, 1], scene.pose[:, 2]
  side = face.box[2] * scale
  boxes = np.stack([center[0] + dx - side / 2, center[1] + dy - side / 2, side, side],
                   axis=1).astype(np.float32)
  return SyntheticVideo(frames, pulse.ppg, pulse.hr, float(fps), boxes, pulse.beats)


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
                      help="ffv1/rawvideo store the frames exactly (the domain's own H.264, "
                      "if any, is already applied); mjpeg adds compression")
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
