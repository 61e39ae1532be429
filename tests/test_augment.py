"""augment.illumination: an in-band light fluctuation, common to every pixel, of bounded size."""

import numpy as np
import pytest

from metarppg_jax.data import augment


def _frames(k=3, t=60, h=8, w=8):
  rng = np.random.default_rng(0)
  return rng.integers(60, 200, size=(k, t, h, w, 3), dtype=np.uint8)


def test_off_is_identity():
  frames = _frames()
  assert augment.illumination(frames, np.random.default_rng(1), 0.0, 30.0) is frames


def test_a_bounded_in_band_fluctuation_shared_by_all_pixels():
  frames = np.full((3, 60, 8, 8, 3), 150, np.uint8)
  out = augment.illumination(frames, np.random.default_rng(2), 0.02, 30.0)
  assert out.dtype == np.uint8 and out.shape == frames.shape
  rel = out.astype(np.float64).mean(axis=(-3, -2)).reshape(-1, 3) / 150 - 1   # [K T, 3]
  # At most amplitude * (1 + 1/2) * peak of a unit-RMS sum of 3 sinusoids, plus rounding.
  assert np.abs(rel).max() < 0.02 * 1.5 * 3 + 0.01
  assert rel.std(axis=0).min() > 1e-4                       # it does change the light
  # In band: little power below 0.4 Hz or above 3.5 Hz (the windows are one recording).
  spec = np.abs(np.fft.rfft(rel - rel.mean(0), axis=0)) ** 2
  f = np.fft.rfftfreq(rel.shape[0], 1 / 30.0)
  inside = spec[(f >= 0.4) & (f <= 3.5)].sum()
  assert inside / spec[1:].sum() > 0.8
  # The same for every pixel of a frame (up to the dither's rounding).
  assert np.ptp(out.astype(int), axis=(-3, -2)).max() <= 1


def test_deterministic_per_generator_state():
  frames = _frames()
  a = augment.illumination(frames, np.random.default_rng(5), 0.01, 30.0)
  b = augment.illumination(frames, np.random.default_rng(5), 0.01, 30.0)
  np.testing.assert_array_equal(a, b)
