"""Heart rate: the original get_bpm exactly, the sound estimator's accuracy, SNR, signals."""

import numpy as np
import pytest
from scipy import signal as sps

from metarppg_jax import errors
from metarppg_jax import heart_rate

CASES = [(60, 30), (300, 30), (900, 30), (250, 25)]


def _pulse(t, hr_bpm, phase):
  """A PPG-like wave: fundamental plus two harmonics (systolic peak, dicrotic notch)."""
  w = 2 * np.pi * hr_bpm / 60.0 * t + phase
  return np.sin(w) + 0.45 * np.sin(2 * w + 0.8) + 0.2 * np.sin(3 * w + 1.9)


@pytest.mark.parametrize("n,fps", CASES)
def test_hr_reference_matches_original_exactly(reference_dir, n, fps):
  ref = np.load(reference_dir / "get_bpm_ref.npz")
  sig, bpm = ref[f"sig_{n}_{fps}"], ref[f"bpm_{n}_{fps}"]
  np.testing.assert_array_equal(heart_rate.hr_reference(sig, fps), bpm)
  # The original is a 1-D function: the batched call is the same row by row.
  np.testing.assert_array_equal([heart_rate.hr_reference(s, fps) for s in sig], bpm)


def test_hr_reference_float32_follows_the_originals_precision(reference_dir):
  sig = np.load(reference_dir / "get_bpm_ref.npz")["sig_60_30"].astype(np.float32)
  for row in sig:                  # the original's steps, one 1-D float32 signal at a time
    x = (row - np.mean(row)) * sps.windows.hann(row.size)
    f, pxx = sps.welch(x, 30.0, nperseg=row.size)
    assert heart_rate.hr_reference(row, 30.0) == round(f[np.argmax(pxx)] * 60.0)
  ramp = np.arange(60) % 7                                            # integers work too
  assert heart_rate.hr_reference(ramp, 30.0) == heart_rate.hr_reference(ramp * 1.0, 30.0)


def test_hr_reference_keeps_batch_axes(reference_dir):
  sig = np.load(reference_dir / "get_bpm_ref.npz")["sig_300_30"]
  out = heart_rate.hr_reference(sig.reshape(2, 4, 300), 30)
  assert out.shape == (2, 4)


@pytest.mark.parametrize("fps", [30.0, 25.0, 20.0])
def test_hr_estimate_sinusoids_sub_bpm(fps):
  rng = np.random.default_rng(0)
  t = np.arange(int(10 * fps)) / fps
  hr = rng.uniform(45, 200, 64)
  sig = np.sin(2 * np.pi * hr[:, None] / 60 * t + rng.uniform(0, 2 * np.pi, (64, 1)))
  est = heart_rate.hr_estimate(sig, fps)
  assert est.shape == (64,)
  np.testing.assert_allclose(est, hr, atol=0.05)


@pytest.mark.parametrize("fps", [30.0, 25.0])
def test_hr_estimate_realistic_pulse_within_half_bpm(fps):
  rng = np.random.default_rng(1)
  t = np.arange(int(10 * fps)) / fps
  hr = rng.uniform(48, 180, (4, 32))              # two batch axes
  phase = rng.uniform(0, 2 * np.pi, (4, 32, 1))
  sig = (_pulse(t, hr[..., None], phase)
         + 0.2 * rng.standard_normal((4, 32, t.size))         # sensor noise
         + 0.8 * t / 10 + 0.3 * np.sin(2 * np.pi * 0.1 * t + phase))  # drift, respiration-ish
  est = heart_rate.hr_estimate(sig, fps)
  assert est.shape == (4, 32)
  assert np.max(np.abs(est - hr)) < 0.5
  # The original's estimator cannot do this: 6 bpm bins on 10 s windows.
  assert np.max(np.abs(heart_rate.hr_reference(sig, fps) - hr)) > 1.0


def test_hr_estimate_welch_on_long_signal():
  rng = np.random.default_rng(2)
  fps, t = 30.0, np.arange(60 * 30) / 30.0
  hr = np.array([57.3, 83.7, 121.1, 163.9])
  sig = _pulse(t, hr[:, None], 0.3) + 0.5 * rng.standard_normal((4, t.size))
  np.testing.assert_allclose(heart_rate.hr_estimate(sig, fps, method="welch"), hr, atol=0.5)
  np.testing.assert_allclose(heart_rate.hr_estimate(sig, fps), hr, atol=0.5)


def test_hr_estimate_ignores_out_of_band_power():
  fps, t = 30.0, np.arange(300) / 30.0
  hr = 72.4
  # A strong 0.2 Hz component and a 5 Hz flicker: both outside 0.7-3.5 Hz.
  sig = (0.3 * np.sin(2 * np.pi * hr / 60 * t) + 3 * np.sin(2 * np.pi * 0.2 * t)
         + 2 * np.sin(2 * np.pi * 5.0 * t))
  assert abs(heart_rate.hr_estimate(sig, fps) - hr) < 0.5
  narrow = heart_rate.hr_estimate(sig, fps, band=(1.5, 3.5))   # excludes the HR
  assert 90 <= narrow <= 210 and abs(narrow - hr) > 5


def test_hr_estimate_flat_and_nonfinite_give_nan():
  sig = np.zeros((3, 300))
  sig[1] = np.sin(np.arange(300) / 30.0 * 2 * np.pi * 1.2)
  sig[2, 10] = np.nan
  est = heart_rate.hr_estimate(sig, 30.0)
  assert np.isnan(est[0]) and np.isnan(est[2])
  assert abs(est[1] - 72.0) < 0.05


def test_bad_inputs_raise_project_errors():
  with pytest.raises(errors.DataError, match="too short"):
    heart_rate.hr_estimate(np.ones(3), 30.0)
  with pytest.raises(errors.DataError, match="fps"):
    heart_rate.hr_estimate(np.ones(300), 0.0)
  with pytest.raises(errors.ConfigError, match="band"):
    heart_rate.hr_estimate(np.ones(300), 30.0, band=(3.5, 0.7))
  with pytest.raises(errors.ConfigError, match="method"):
    heart_rate.hr_estimate(np.ones(300), 30.0, method="music")
  with pytest.raises(errors.ConfigError, match="pad_to"):
    heart_rate.hr_estimate(np.ones(300), 30.0, pad_to=128)


def test_band_clipped_to_nyquist_at_low_fps():
  fps, t = 6.0, np.arange(60) / 6.0                     # Nyquist 3 Hz < 3.5 Hz
  assert abs(heart_rate.hr_estimate(np.sin(2 * np.pi * 2.5 * t), fps) - 150.0) < 0.5


def test_power_spectrum_shapes_and_parseval():
  rng = np.random.default_rng(3)
  sig = rng.standard_normal((2, 5, 300))
  freqs, power = heart_rate.power_spectrum(sig, 30.0, pad_to=1024)
  assert freqs.shape == (513,) and power.shape == (2, 5, 513)
  assert freqs[0] == 0 and freqs[-1] == 15.0
  assert np.all(power >= 0)
  freqs, power = heart_rate.power_spectrum(sig, 30.0)
  assert freqs.size == heart_rate.default_pad_to(300, 30.0) // 2 + 1
  assert freqs[1] * 60 <= 0.25


def test_snr_high_for_clean_pulse_low_for_noise():
  rng = np.random.default_rng(4)
  t = np.arange(300) / 30.0
  clean = _pulse(t, 75.0, 0.0) + 0.05 * rng.standard_normal(300)
  noisy = _pulse(t, 75.0, 0.0) + 2.0 * rng.standard_normal(300)
  noise = rng.standard_normal(300)
  s = heart_rate.snr(np.stack([clean, noisy, noise]), 30.0, 75.0)
  assert s.shape == (3,)
  assert s[0] > 10 > s[1] > s[2]
  # Scored at the wrong heart rate, the clean pulse is mostly "noise".
  assert heart_rate.snr(clean, 30.0, 110.0) < 0
  # Per-signal HR broadcasts; NaN HR gives NaN.
  per = heart_rate.snr(np.stack([clean, clean]), 30.0, np.array([75.0, np.nan]))
  assert per[0] == pytest.approx(s[0]) and np.isnan(per[1])
  assert np.isnan(heart_rate.snr(np.zeros(300), 30.0, 75.0))
  with pytest.raises(errors.DataError, match="broadcast"):
    heart_rate.snr(np.stack([clean, clean]), 30.0, np.array([75.0, 70.0, 60.0]))


def test_snr_matches_definition_on_a_pure_tone():
  # 30 s: the Hann main lobe (+-4 bpm) fits inside the +-6 bpm tolerance. On 10 s windows it
  # is +-12 bpm wide, so even a pure tone scores only ~10 dB there (a property of the metric).
  t = np.arange(900) / 30.0
  tone = np.sin(2 * np.pi * 1.5 * t)
  freqs, power = heart_rate.power_spectrum(tone, 30.0)
  band = (freqs >= 0.7) & (freqs <= 3.5)
  near = np.abs(freqs - 1.5) <= 0.1
  want = 10 * np.log10(power[band & near].sum() / power[band & ~near].sum())
  assert heart_rate.snr(tone, 30.0, 90.0) == pytest.approx(want)
  assert want > 20


def test_levels_to_signal_prob_and_decision():
  rng = np.random.default_rng(5)
  target = rng.integers(0, 40, (2, 60))
  # A confident model: p_k ~ 1 for k <= t (t + 1 levels above, the original's convention).
  prob = np.where(np.arange(40) <= target[..., None], 0.999, 0.001).astype(np.float32)
  decision = np.sum(prob > 0.5, axis=-1)
  np.testing.assert_array_equal(decision, target + 1)
  sig = heart_rate.levels_to_signal(prob)
  assert sig.shape == (2, 60) and sig.dtype == np.float32
  want = (target + 1) * 0.999 + (39 - target) * 0.001 - 1
  np.testing.assert_allclose(sig, want, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(sig, target, atol=0.05)
  np.testing.assert_array_equal(heart_rate.levels_to_signal(decision, kind="decision"), target)
  with pytest.raises(errors.ConfigError):
    heart_rate.levels_to_signal(prob, kind="logits")


def test_levels_to_signal_gives_the_heart_rate():
  fps, t = 30.0, np.arange(300) / 30.0
  target = np.round(19.5 + 19.5 * np.sin(2 * np.pi * 1.37 * t))
  logits = 8.0 * (target[:, None] + 0.5 - np.arange(40))        # b_k - a_k
  prob = 1 / (1 + np.exp(-logits))
  assert abs(heart_rate.hr_estimate(heart_rate.levels_to_signal(prob), fps) - 82.2) < 0.5


def test_signal_windows():
  sig = np.arange(2 * 1000, dtype=np.float32).reshape(2, 1000)
  win, starts = heart_rate.signal_windows(sig, 30.0, 10.0, 5.0)
  assert win.shape == (2, len(starts), 300)
  assert starts[0] == 0 and np.all(np.diff(starts) == 150) and starts[-1] + 300 <= 1000
  np.testing.assert_array_equal(win[1, 2], sig[1, starts[2]:starts[2] + 300])
  win, starts = heart_rate.signal_windows(sig, 30.0, 10.0)
  assert np.all(np.diff(starts) == 300)


def test_no_windows_gives_empty_results():
  empty = np.zeros((0, 300))
  assert heart_rate.hr_estimate(empty, 30.0).shape == (0,)
  assert heart_rate.hr_reference(empty, 30.0).shape == (0,)
  assert heart_rate.snr(empty, 30.0, np.zeros(0)).shape == (0,)
  freqs, power = heart_rate.power_spectrum(empty, 30.0, pad_to=512)
  np.testing.assert_allclose(freqs, np.fft.rfftfreq(512, 1 / 30.0))
  assert power.shape == (0, 257)
