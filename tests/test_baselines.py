"""Classical rPPG baselines on synthetic skin-colour traces with a known heart rate."""

import numpy as np
import pytest

from metarppg_jax import baselines
from metarppg_jax import errors
from metarppg_jax import heart_rate
from metarppg_jax.data import preprocess
from metarppg_jax.data import synthetic

FPS = 30.0
SKIN = np.array([180.0, 130.0, 100.0])          # mean skin colour (R, G, B), 8-bit scale
PULSE_DIRECTION = np.array([0.33, 0.77, 0.53])  # blood-volume pulse in normalised RGB


def _trace(hr_bpm, amp, *, seconds=10.0, seed=0, flicker_hz=None):
  """RGB traces f64[..., T, 3]: skin x illumination x (1 + amp pulse direction x pulse) + noise.

  The pulse has harmonics; illumination drifts slowly (5 %, plus a 3 % ramp); optionally an
  in-band 1 % intensity flicker; sensor noise 0.1 (8-bit units) a channel.
  """
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * FPS)) / FPS
  hr = np.asarray(hr_bpm, dtype=np.float64)[..., None]
  phase = rng.uniform(0, 2 * np.pi, hr.shape)
  w = 2 * np.pi * hr / 60 * t + phase
  pulse = np.sin(w) + 0.45 * np.sin(2 * w + 0.8) + 0.2 * np.sin(3 * w + 1.9)
  pulse /= pulse.std(axis=-1, keepdims=True)
  illum = 1 + 0.05 * np.sin(2 * np.pi * 0.07 * t + phase) + 0.03 * t / seconds
  if flicker_hz is not None:
    illum = illum * (1 + 0.01 * np.sin(2 * np.pi * flicker_hz * t + 0.3))
  rgb = illum[..., None] * SKIN * (1 + np.asarray(amp)[..., None, None] * PULSE_DIRECTION
                                   * pulse[..., None])
  return rgb + 0.1 * rng.standard_normal(rgb.shape)


@pytest.mark.parametrize("method", sorted(baselines.METHODS))
def test_method_recovers_heart_rate_within_2_bpm(method):
  rng = np.random.default_rng(1)
  hr = rng.uniform(50, 160, (2, 8))                 # two batch axes
  amp = rng.uniform(0.002, 0.01, (2, 8))            # 0.2 - 1 % pulse amplitude
  rgb = _trace(hr, amp, seed=7).astype(np.float32)
  sig = baselines.rppg_signal(method, rgb, FPS)
  assert sig.shape == (2, 8, 300) and sig.dtype == np.float32
  est = heart_rate.hr_estimate(sig, FPS)
  assert np.max(np.abs(est - hr)) < 2.0, (est, hr)


def test_chrom_and_pos_cancel_intensity_flicker_that_fools_green():
  rng = np.random.default_rng(2)
  hr = rng.uniform(50, 100, 12)                     # away from the flicker's 1.9 Hz = 114 bpm
  rgb = _trace(hr, 0.005, seed=3, flicker_hz=1.9)
  green_err = np.abs(heart_rate.hr_estimate(baselines.green(rgb, FPS), FPS) - hr)
  assert np.median(green_err) > 10
  for method in ("chrom", "pos"):
    est = heart_rate.hr_estimate(baselines.rppg_signal(method, rgb, FPS), FPS)
    assert np.max(np.abs(est - hr)) < 2.0, method


def test_pos_matches_a_direct_implementation_of_the_paper():
  rgb = _trace(np.array([72.0]), 0.005, seconds=4.0, seed=4)[0]
  n = int(np.ceil(1.6 * FPS))
  want = np.zeros(len(rgb))
  for m in range(len(rgb) - n + 1):                 # Wang et al. 2017, algorithm 1
    cn = rgb[m:m + n] / rgb[m:m + n].mean(axis=0)
    s = cn @ np.array([[0, 1, -1], [-2, 1, 1]]).T
    h = s[:, 0] + s[:, 0].std() / s[:, 1].std() * s[:, 1]
    want[m:m + n] += h - h.mean()
  np.testing.assert_allclose(baselines.pos(rgb, FPS), want, rtol=1e-5, atol=1e-7)


def test_constant_colour_gives_zero_signal_and_short_traces_work():
  flat = np.broadcast_to(SKIN, (90, 3))
  for method in ("chrom", "pos", "green"):
    np.testing.assert_allclose(baselines.rppg_signal(method, flat, FPS), 0.0, atol=1e-6)
  short = _trace(np.array(80.0), 0.01, seconds=1.0)   # 30 frames: shorter than a 1.6 s window
  for method in baselines.METHODS:
    assert baselines.rppg_signal(method, short, FPS).shape == (30,)


def test_fastica_separates_known_sources_and_is_seeded():
  rng = np.random.default_rng(5)
  t = np.arange(1000) / FPS
  sources = np.stack([np.sin(2 * np.pi * 1.2 * t), np.sign(np.sin(2 * np.pi * 0.37 * t)),
                      rng.laplace(size=t.size)])
  mixed = rng.standard_normal((3, 3)) @ sources
  comps = baselines.fastica(mixed)
  corr = np.abs(np.corrcoef(np.concatenate([comps, sources]))[:3, 3:])
  assert np.all(corr.max(axis=0) > 0.98)
  np.testing.assert_array_equal(comps, baselines.fastica(mixed))
  rgb = _trace(np.array([66.0, 99.0]), 0.005, seed=6)
  np.testing.assert_array_equal(baselines.ica(rgb, FPS, seed=3), baselines.ica(rgb, FPS, seed=3))


def test_bad_inputs_raise_project_errors():
  rgb = _trace(np.array(70.0), 0.005)
  with pytest.raises(errors.ConfigError, match="unknown classical rPPG method"):
    baselines.rppg_signal("lgi", rgb, FPS)
  with pytest.raises(errors.DataError, match="T, 3"):
    baselines.pos(rgb[..., :2], FPS)
  bad = rgb.copy()
  bad[5, 1] = np.nan
  with pytest.raises(errors.DataError, match="NaN"):
    baselines.chrom(bad, FPS)
  with pytest.raises(errors.DataError, match="mean <= 0"):
    baselines.green(np.zeros((100, 3)), FPS)
  with pytest.raises(errors.DataError, match="frames"):
    baselines.ica(rgb[:2], FPS)
  with pytest.raises(errors.DataError, match="fps"):
    baselines.pos(rgb, -1.0)


@pytest.mark.slow
def test_methods_on_the_projects_clean_synthetic_videos():
  """End to end with the real signal path: generator -> face crops and skin masks ->
  masked_rgb_means -> each method -> hr_estimate, against the HR of the ground-truth PPG."""
  rgb, ppg = [], []
  for seed in range(3):
    video, crops = synthetic.generate_face_crops(seed, seconds=10.0, fps=FPS, domain="clean")
    rgb.append(preprocess.masked_rgb_means(crops.crops, crops.masks))
    ppg.append(video.ppg)
  rgb, true = np.stack(rgb), heart_rate.hr_estimate(np.stack(ppg), FPS)
  for method in baselines.METHODS:
    est = heart_rate.hr_estimate(baselines.rppg_signal(method, rgb, FPS), FPS)
    assert np.max(np.abs(est - true)) < 1.5, (method, est, true)
