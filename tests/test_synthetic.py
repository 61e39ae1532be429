"""Tests of metarppg_jax.data.synthetic: determinism, ground truth, recoverable pulse, CLI."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from metarppg_jax.data import faces
from metarppg_jax.data import preprocess
from metarppg_jax.data import synthetic
from metarppg_jax.data import video
from metarppg_jax.errors import DataError


def fft_hr(trace: np.ndarray, fps: float) -> float:
  """HR (bpm) at the peak of the 42..180 bpm band of a detrended, Hann-windowed spectrum."""
  x = trace / trace.mean()
  t = np.arange(len(x))
  x = (x - np.polyval(np.polyfit(t, x, 1), t)) * np.hanning(len(x))
  n = 16 * len(x)
  f = np.fft.rfftfreq(n, 1 / fps) * 60
  power = np.abs(np.fft.rfft(x, n)) ** 2
  band = (f >= 42) & (f <= 180)
  return float(f[band][np.argmax(power[band])])


def test_deterministic_per_seed_and_domain():
  a = synthetic.generate_video(3, seconds=1.0, size=(64, 64))
  b = synthetic.generate_video(3, seconds=1.0, size=(64, 64))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  # Through the H.264 round trip too (every shifted video is encoded).
  e = synthetic.generate_video(3, seconds=1.0, size=(64, 64), domain="shifted")
  f = synthetic.generate_video(3, seconds=1.0, size=(64, 64), domain="shifted")
  assert e.frames.shape == (30, 64, 64, 3)
  np.testing.assert_array_equal(e.frames, f.frames)
  c = synthetic.generate_video(4, seconds=1.0, size=(64, 64))
  d = synthetic.generate_video(3, seconds=1.0, size=(64, 64), domain="shifted")
  assert not np.array_equal(a.frames, c.frames) and not np.array_equal(a.ppg, c.ppg)
  assert not np.array_equal(a.frames, d.frames)


@pytest.mark.parametrize("domain", sorted(synthetic.DOMAINS))
def test_shapes_and_ranges(domain):
  v = synthetic.generate_video(0, seconds=2.0, fps=25.0, size=(96, 80), domain=domain)
  assert v.frames.shape == (50, 96, 80, 3) and v.frames.dtype == np.uint8
  assert v.ppg.shape == v.hr.shape == (50,) and v.ppg.dtype == v.hr.dtype == np.float32
  assert v.face_box.shape == (50, 4) and v.fps == 25.0
  assert np.isfinite(v.ppg).all() and np.all((v.hr >= 45) & (v.hr <= 150))
  centers = v.face_box[:, :2] + v.face_box[:, 2:] / 2
  assert np.all((centers > 0) & (centers < [80, 96]))
  assert v.beats.dtype == np.float64 and np.all(np.diff(v.beats) > 0)
  assert 0 <= v.beats[0] and v.beats[-1] <= 49 / 25.0
  with pytest.raises(ValueError, match="unknown domain"):
    synthetic.generate_video(0, seconds=1.0, domain="mars")


def test_pulse_signal_is_physiological():
  t = np.arange(30 * 20) / 30.0
  hr_means = []
  for seed in range(5):
    ppg, hr, beats = synthetic.pulse_signal(np.random.default_rng(seed), t, (45, 150))
    assert np.all((hr >= 45) & (hr <= 150))
    # Beats: systolic peaks within the record, one per cycle of the rate, at the PPG maxima.
    assert beats.dtype == np.float64 and 0 <= beats[0] and beats[-1] <= t[-1]
    assert abs(len(beats) - hr.mean() / 60 * t[-1]) <= 1.5
    ibi_hr = 60 / np.diff(beats)
    np.testing.assert_allclose(ibi_hr, np.interp(beats[1:] - np.diff(beats) / 2, t, hr), atol=3)
    peak_lag = [t[np.argmax(np.where(np.abs(t - b) < 0.1, ppg, -np.inf))] - b for b in beats]
    assert np.abs(peak_lag).max() < 0.1
    assert 0.3 < hr.std() < 8                          # variability, not chaos
    assert abs(fft_hr(ppg + 2.0, 30.0) - hr.mean()) < 2
    # Systolic peak + dicrotic wave: a strong second harmonic, unlike a sinusoid.
    p = np.abs(np.fft.rfft(ppg - ppg.mean())) ** 2
    f = np.fft.rfftfreq(len(ppg), 1 / 30.0)
    f0 = hr.mean() / 60
    fundamental = p[np.abs(f - f0) < 0.1].max()
    assert p[np.abs(f - 2 * f0) < 0.15].max() > 0.02 * fundamental
    hr_means.append(hr.mean())
  assert np.ptp(hr_means) > 10


def test_pulse_colour_direction():
  # The relative colour change per ppg unit of the skin (a box on the cheeks and nose of the
  # still clean face) is along PBV: more blood, darker skin. The clean domain has no noise to
  # dither the 8-bit rounding of a ~1 DN pulse, so one face can be 20 % off: a median of four.
  ratios = []
  for seed in range(4):
    v = synthetic.generate_video(seed, seconds=10.0, domain="clean")
    ppg = v.ppg - v.ppg.mean()
    x, y, w, h = v.face_box[0]
    rgb = v.frames[:, int(y + 0.48 * h):int(y + 0.7 * h),
                   int(x + 0.22 * w):int(x + 0.78 * w)].mean((1, 2))
    coef = ppg @ (rgb / rgb.mean(0) - 1) / (ppg ** 2).sum()
    assert np.all(coef < 0), (seed, coef)
    ratios.append(coef / coef[1])
  np.testing.assert_allclose(np.median(ratios, axis=0), synthetic.PBV / synthetic.PBV[1],
                             rtol=0.1)
  # Through the project's crops and skin mask: the skin darkens by 0.1..1 % (green).
  v, fc = synthetic.generate_face_crops(1, seconds=10.0, domain="clean")
  ppg = v.ppg - v.ppg.mean()
  rgb = preprocess.masked_rgb_means(fc.crops, fc.masks).astype(np.float64)
  green = (rgb[:, 1] / rgb[:, 1].mean() - 1) @ ppg / (ppg ** 2).sum()
  assert 0.001 < -green * np.ptp(v.ppg) < 0.012


def _pos(rgb: np.ndarray, fps: float) -> np.ndarray:
  """Plane-orthogonal-to-skin (Wang et al. 2017): overlap-added 1.6 s windows of f[T, 3]."""
  n, length = len(rgb), int(1.6 * fps)
  out = np.zeros(n)
  for start in range(n - length + 1):
    c = rgb[start:start + length] / rgb[start:start + length].mean(0)
    s1, s2 = c[:, 1] - c[:, 2], -2 * c[:, 0] + c[:, 1] + c[:, 2]
    h = s1 + s1.std() / s2.std() * s2
    out[start:start + length] += h - h.mean()
  return out


def _hr_errors(domain, seeds, *, detect, method):
  errors = []
  for seed in seeds:
    v, fc = synthetic.generate_face_crops(seed, seconds=15.0, domain=domain)
    if detect:
      fc = faces.face_crops(v.frames, source=f"{domain}{seed}")
    rgb = preprocess.masked_rgb_means(fc.crops, fc.masks).astype(np.float64)
    trace = rgb[:, 1] if method == "green" else _pos(rgb, v.fps)
    errors.append(abs(fft_hr(trace - trace.min() + 1, v.fps) - v.hr.mean()))
  return np.array(errors)


def test_green_fft_recovers_hr_without_nuisances():
  """With no nuisance (the clean domain) the masked green mean alone gives the HR."""
  errors = _hr_errors("clean", range(5), detect=False, method="green")
  assert (errors < 2).all(), errors


@pytest.mark.parametrize("domain", ["source", "shifted"])
def test_pos_recovers_hr(domain):
  """POS on the masked RGB mean of the project's crops finds the generator's HR within 2 bpm
  (GREEN does not in general: the light and the motion dominate the green channel)."""
  errors = _hr_errors(domain, range(5), detect=False, method="pos")
  assert (errors < 2).sum() >= 4 and np.median(errors) < 1, errors


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["source", "shifted"])
def test_pos_recovers_hr_through_face_detection(domain):
  """The same through the real path: Haar detection, tracking, crops, adaptive skin mask."""
  errors = _hr_errors(domain, range(5), detect=True, method="pos")
  assert (errors < 2).sum() >= 4 and np.median(errors) < 1, errors


@pytest.mark.parametrize("domain", ["source", "shifted"])
def test_detector_finds_generated_faces(domain):
  found = 0
  for seed in range(8):
    v = synthetic.generate_video(seed, seconds=0.1, domain=domain)
    try:   # the package's detection and tracking, its box neither enlarged nor smoothed
      box = faces.face_crops(v.frames[:1], enlarge=1.0, smooth=1).boxes[0]
    except DataError:   # no face found
      continue
    known = v.face_box[0]
    x0, y0 = np.maximum(box[:2], known[:2])
    x1, y1 = np.minimum(box[:2] + box[2:], known[:2] + known[2:])
    inter = max(x1 - x0, 0) * max(y1 - y0, 0)
    iou = inter / (box[2] * box[3] + known[2] * known[3] - inter)
    assert iou > 0.5, (seed, box, known)
    found += 1
  assert found >= 7


@pytest.mark.slow
def test_cli_writes_ubfc_layout_the_real_loader_reads(tmp_path):
  out = tmp_path / "DATASET_2"
  assert synthetic.main(["--out", str(out), "--num_videos", "2", "--seconds", "12",
                         "--seed", "5", "--domain", "source"]) == 0
  assert sorted(p.name for p in out.iterdir()) == ["subject5", "subject6"]
  for seed in (5, 6):
    gt = np.loadtxt(out / f"subject{seed}" / "ground_truth.txt")
    v = video.read_video(out / f"subject{seed}" / "vid.avi")
    expected = synthetic.generate_video(seed, seconds=12, domain="source")
    assert gt.shape == (3, 360)
    np.testing.assert_array_equal(v.frames, expected.frames)        # lossless FFV1
    np.testing.assert_allclose(gt[0], expected.ppg, rtol=1e-6)
    np.testing.assert_allclose(gt[1], expected.hr, rtol=1e-6)
    np.testing.assert_allclose(gt[2], np.arange(360) / 30.0, atol=1e-9)
    np.testing.assert_allclose(v.timestamps, gt[2], atol=1e-3)
  # End to end through the real loader's steps: decode, detect and crop, green FFT.
  fc = faces.face_crops(v.frames, source="subject6/vid.avi")
  ppg = preprocess.resample_signal(gt[2], gt[0], v.timestamps, source="ground_truth.txt")
  np.testing.assert_allclose(ppg, expected.ppg, atol=1e-5)
  rgb = preprocess.masked_rgb_means(fc.crops, fc.masks).astype(np.float64)
  pos = _pos(rgb, v.fps)
  assert abs(fft_hr(pos - pos.min() + 1, v.fps) - gt[1].mean()) < 2


def test_cli_module_entry_point(tmp_path):
  env = dict(os.environ, PYTHONWARNINGS="ignore")
  result = subprocess.run(
      [sys.executable, "-m", "metarppg_jax.data.synthetic", "--out", str(tmp_path),
       "--num_videos", "1", "--seconds", "1", "--domain", "shifted", "--seed", "2"],
      capture_output=True, text=True, timeout=120, env=env, check=False)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "subject2" / "vid.avi").stat().st_size > 0
  assert np.loadtxt(tmp_path / "subject2" / "ground_truth.txt").shape == (3, 30)
  result = subprocess.run(
      [sys.executable, "-m", "metarppg_jax.data.synthetic", "--out", str(tmp_path),
       "--seconds", "-1"], capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0 and "must be positive" in result.stderr


def test_h264_round_trip():
  """Odd sizes (yuv444p) and even ones (yuv420p) keep every frame; CRF 0 is close to exact,
  a high CRF is not."""
  rng = np.random.default_rng(0)
  for shape in ((12, 33, 35, 3), (12, 32, 48, 3)):
    smooth = np.stack([cv2.GaussianBlur(rng.uniform(0, 255, shape[1:]), (0, 0), 6)
                       for _ in range(shape[0])])
    frames = np.clip(smooth * 5 - 510, 0, 255).astype(np.uint8)   # smooth colours
    near = synthetic.h264_round_trip(frames, 30.0, 0)
    far = synthetic.h264_round_trip(frames, 30.0, 40)
    assert near.shape == far.shape == frames.shape and near.dtype == np.uint8
    near_err = np.abs(near.astype(int) - frames).mean()
    assert near_err < 2 < np.abs(far.astype(int) - frames).mean(), near_err   # 0.4, 1.6 DN


def test_benchmark_generation(load_experiment):
  result = load_experiment("benchmark").benchmark_generation(seconds=1.0, repeats=1)
  assert result["synthetic_s_per_video_minute"] > 0
