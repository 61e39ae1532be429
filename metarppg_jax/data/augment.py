"""Training-time augmentation of face crops (host side, numpy, one task at a time).

`illumination`: the light's intensity and colour fluctuate in the pulse band (0.5-3 Hz), as
a screen, a flickering lamp or a moving shadow make them. Such a fluctuation reaches every
skin pixel at once, like the pulse, and is often stronger than it; the targets stay the
PPG, so the network has to learn to tell the two apart by their colour signature (the pulse
is strongest in green; a white light changes all channels alike), which is what POS and
CHROM build in by hand.
"""

import numpy as np

BAND_HZ = (0.5, 3.0)   # where a fluctuation competes with a heart rate of 30-180 bpm
SINUSOIDS = 3          # components of one random fluctuation


def _fluctuation(rng: np.random.Generator, t: np.ndarray, count: int) -> np.ndarray:
  """f32[count, T]: sums of SINUSOIDS random in-band sinusoids, each row unit RMS."""
  freq = rng.uniform(*BAND_HZ, size=(count, SINUSOIDS, 1))
  phase = rng.uniform(0, 2 * np.pi, size=(count, SINUSOIDS, 1))
  weight = rng.uniform(0.2, 1.0, size=(count, SINUSOIDS, 1))
  s = (weight * np.sin(2 * np.pi * freq * t + phase)).sum(axis=1)
  return (s / np.maximum(np.sqrt(np.mean(s ** 2, axis=-1, keepdims=True)), 1e-9)).astype(
      np.float32)


def illumination(frames: np.ndarray, rng: np.random.Generator, amplitude: float,
                 fps: float) -> np.ndarray:
  """Relights frames uint8[..., T, H, W, 3] (leading axes: consecutive windows of one task,
  lit as one continuous recording) by 1 + m_c(t):

    m_c(t) = a_white * s(t) + a_c * s_c(t),  a_white ~ U(0, amplitude), a_c ~ U(0, amplitude/2)

  with s, s_c independent unit-RMS in-band fluctuations (`_fluctuation`). Rounded back to
  uint8 with uniform dither (a 1 % change is about one grey level). amplitude 0: unchanged.

  Returns:
    uint8, the shape of `frames`.
  """
  if amplitude <= 0:
    return frames
  lead, (t, h, w, c) = frames.shape[:-4], frames.shape[-4:]
  total = int(np.prod(lead, dtype=np.int64)) * t
  time = np.arange(total, dtype=np.float64) / fps
  s = _fluctuation(rng, time, 1 + c)                                         # [1 + C, N T]
  a_white = rng.uniform(0, amplitude)
  a_colour = rng.uniform(0, amplitude / 2, size=(c, 1))
  m = a_white * s[:1] + a_colour * s[1:]                                     # [C, N T]
  gain = (1 + m.T).reshape(*lead, t, 1, 1, c).astype(np.float32)
  lit = frames.astype(np.float32) * gain
  lit += rng.uniform(-0.5, 0.5, size=lit.shape).astype(np.float32)
  return np.clip(np.rint(lit), 0, 255).astype(np.uint8)
