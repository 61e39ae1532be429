"""hrv: quality from SNR, orientation, beats and HRV against a known pulse, respiration."""

import numpy as np
from scipy import signal as sps

from metarppg_jax import hrv
from metarppg_jax.data import synthetic

FPS = 30.0


def _pulse(seed: int, seconds: float = 30.0):
  """A generated PPG f32[T] at 30 fps and its systolic peak times f64[B]."""
  t = np.arange(int(seconds * FPS)) / FPS
  p = synthetic.pulse_signal(np.random.default_rng(seed), t, (55.0, 110.0))
  if hasattr(p, "beats"):
    return p[0], np.asarray(p.beats)
  # Until the generator reports its beats: the PPG's systolic peaks, refined by a parabola.
  ppg = np.asarray(p[0], np.float64)
  peaks, _ = sps.find_peaks(ppg, distance=int(0.6 * FPS * 60 / 150), prominence=0.3)
  peaks = peaks[(peaks > 0) & (peaks < ppg.size - 1)]
  a, b, c = ppg[peaks - 1], ppg[peaks], ppg[peaks + 1]
  return p[0], (peaks + 0.5 * (a - c) / (a - 2 * b + c)) / FPS


def test_quality_maps_snr_to_unit_interval():
  q = hrv.quality([hrv.SNR_FLOOR_DB - 3, hrv.SNR_FLOOR_DB, 0.0, hrv.SNR_GOOD_DB, 20.0, np.nan])
  np.testing.assert_allclose(q, [0.0, 0.0, 0.5, 1.0, 1.0, 0.0])


def test_assess_separates_pulse_from_noise():
  t = np.arange(300) / FPS
  hr, snr_db, q = hrv.assess(np.sin(2 * np.pi * 1.2 * t), FPS)
  assert abs(hr - 72.0) < 0.5 and q == 1.0 and snr_db > 10
  noise = np.random.default_rng(0).standard_normal((40, 300))
  qs = [hrv.assess(x, FPS)[2] for x in noise]
  assert np.mean(np.array(qs) >= 0.25) <= 0.15    # the stream's default HR threshold


def test_orient_flips_a_signal_that_falls_with_blood_volume():
  ppg, _ = _pulse(0, 10.0)
  green = -ppg                                   # skin darkens when blood volume rises
  np.testing.assert_array_equal(hrv.orient(-ppg, green, FPS), ppg)
  np.testing.assert_array_equal(hrv.orient(ppg, green, FPS), ppg)


def test_beats_and_hrv_match_the_generator():
  for seed in (0, 1, 2):
    ppg, truth = _pulse(seed)
    noisy = -ppg + 0.02 * np.random.default_rng(seed).standard_normal(ppg.size)
    sig = hrv.orient(noisy, -ppg, FPS)
    hr, _, q = hrv.assess(sig, FPS)
    beats = hrv.find_beats(sig, FPS, hr)
    truth = truth[(truth > 0.5) & (truth < ppg.size / FPS - 0.5)]
    inner = beats[(beats > 0.5) & (beats < ppg.size / FPS - 0.5)]
    assert abs(inner.size - truth.size) <= 1, (seed, inner.size, truth.size)
    got, want = hrv.hrv_time(beats), hrv.hrv_time(truth)
    for key in ("sdnn_ms", "rmssd_ms"):
      assert abs(got[key] - want[key]) <= 0.2 * want[key], (seed, key, got, want)


def test_hrv_needs_enough_beats():
  assert hrv.hrv_time([0.0, 0.8, 1.6]) is None
  assert np.isnan(hrv.respiration_rate([0.0, 0.8, 1.6, 2.4, 3.2]))


def test_respiration_from_sinus_arrhythmia():
  # Beats whose rate swings by +-5 bpm at 0.25 Hz (15 breaths a minute) over a slow drift.
  t, beats = 0.0, []
  while t < 60:
    beats.append(t)
    t += 60.0 / (70 + 5 * np.sin(2 * np.pi * 0.25 * t) + 3 * np.sin(2 * np.pi * t / 90))
  assert abs(hrv.respiration_rate(np.array(beats)) - 15.0) < 1.0
  stats = hrv.hrv_time(np.array(beats))
  assert stats["sdnn_ms"] > 0 and stats["rmssd_ms"] > 0 and 0 <= stats["pnn50_pct"] <= 100
