"""Tests of metarppg_jax.data.preprocess: resampling, windows, normalisation, quantisation."""

import warnings

import numpy as np
import pytest

from metarppg_jax.data import preprocess
from metarppg_jax.errors import DataError


def test_window_starts():
  np.testing.assert_array_equal(preprocess.window_starts(200, 60, 60), [0, 60, 120])
  np.testing.assert_array_equal(preprocess.window_starts(180, 60, 60), [0, 60, 120])
  np.testing.assert_array_equal(preprocess.window_starts(65, 60, 2), [0, 2, 4])
  assert preprocess.window_starts(59, 60, 1).shape == (0,)
  assert preprocess.window_starts(60, 60, 1).tolist() == [0]
  with pytest.raises(ValueError):
    preprocess.window_starts(100, 60, 0)


def test_resample_video_nearest_61_to_30():
  t = np.arange(61 * 2) / 61.0
  frames = np.arange(len(t), dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3),
                                                                             np.uint8)
  out, new_t = preprocess.resample_video(frames, t, 30.0)
  assert new_t[-1] <= t[-1] and len(new_t) == int(np.floor(t[-1] * 30)) + 1
  np.testing.assert_allclose(new_t, np.arange(len(new_t)) / 30.0)
  picked = out[:, 0, 0, 0].astype(int)
  np.testing.assert_array_equal(picked, np.argmin(np.abs(t[None] - new_t[:, None]), axis=1))
  assert out.dtype == np.uint8


def test_resample_video_linear_and_variable_rate():
  t = np.array([0.0, 0.05, 0.08, 0.2])
  frames = np.array([0, 50, 80, 200], np.uint8)[:, None]
  out, new_t = preprocess.resample_video(frames, t + 3.0, 10.0, method="linear")
  np.testing.assert_allclose(new_t, [0.0, 0.1, 0.2])
  np.testing.assert_array_equal(out[:, 0], [0, 100, 200])   # frames linear in time here
  with pytest.raises(ValueError):
    preprocess.resample_video(frames, t[::-1], 10.0)


def test_resample_signal():
  t_src = np.linspace(0, 10, 101)
  x = np.sin(t_src)
  t_dst = np.arange(0, 10, 1 / 30)
  y = preprocess.resample_signal(t_src, x, t_dst, source="gt.txt")
  assert y.dtype == np.float32 and y.shape == t_dst.shape
  np.testing.assert_allclose(y, np.interp(t_dst, t_src, x), atol=1e-6)
  # A frame just past the end (within 1.5 sample intervals) holds the edge value.
  preprocess.resample_signal(t_src, x, np.array([10.1]), source="gt.txt")


@pytest.mark.parametrize("case,match", [
    ("nan", "gt.txt: 1 non-finite"),
    ("order", "gt.txt: .*not strictly increasing"),
    ("short", "gt.txt: ground truth covers 0.000..10.000 s but the frames span"),
    ("gap", "gt.txt: ground truth has a .* s gap"),
    ("one", "gt.txt: 1 ground-truth samples"),
])
def test_resample_signal_errors(case, match):
  t_src = np.linspace(0, 10, 101)
  x = np.sin(t_src)
  t_dst = np.arange(0, 10, 1 / 30)
  if case == "nan":
    x[5] = np.nan
  elif case == "order":
    t_src[50] = t_src[49]
  elif case == "short":
    t_dst = np.arange(0, 12, 1 / 30)
  elif case == "gap":
    t_src = np.concatenate([t_src[:40], t_src[70:]])
    x = np.sin(t_src)
  elif case == "one":
    t_src, x = t_src[:1], x[:1]
  with pytest.raises(DataError, match=match):
    preprocess.resample_signal(t_src, x, t_dst, source="gt.txt")


def _clips(shape=(2, 6, 8, 8), seed=0):
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, shape + (3,)).astype(np.uint8)
  masks = (rng.uniform(size=shape) < 0.6).astype(np.uint8)
  return frames, masks


def test_reference_normalisation_matches_original_formula():
  frames, masks = _clips()
  out = preprocess.normalize_clip(frames, masks, mode="reference")
  assert out.dtype == np.float32 and out.shape == frames.shape
  # The original (data/pre_dataload.py, baseline_procress): frames [T, C, H, W] float,
  # mask 0/255; input_mean = data.sum((0, 2, 3)) / (mask / 255).sum((0, 2, 3));
  # data[:, i] -= input_mean[i]; everything after it works on a copy that is discarded.
  for n in range(frames.shape[0]):
    data = frames[n].transpose(0, 3, 1, 2).astype(np.float32)
    mask = (masks[n] * 255).astype(np.float32)[:, None] / 255
    input_mean = data.sum(axis=(0, 2, 3)) / mask.sum(axis=(0, 2, 3))
    for i in range(data.shape[1]):
      data[:, i, :, :] = data[:, i, :, :] - input_mean[i]
    np.testing.assert_allclose(out[n], data.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-3)


def test_normalisation_never_divides_by_an_empty_mask():
  frames, masks = _clips()
  masks[1] = 0
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for mode in preprocess.NORMALIZATIONS:
      assert np.isfinite(preprocess.normalize_clip(frames, masks, mode=mode)).all()


def test_sound_normalisation():
  rng = np.random.default_rng(3)
  t, h, w = 60, 8, 8
  skin = np.array([180.0, 120.0, 100.0])
  texture = rng.uniform(0.8, 1.2, (h, w, 1))
  pulse = 0.01 * np.sin(2 * np.pi * 1.2 * np.arange(t) / 30.0)
  ramp = 1 + 0.2 * np.arange(t) / t                               # illumination drift
  frames = (skin * texture)[None] * ((1 - pulse) * ramp)[:, None, None, None]
  masks = np.ones((t, h, w), np.uint8)
  masks[:, :2] = 0
  out = preprocess.normalize_clip(frames, masks, mode="sound")
  assert out.dtype == np.float32 and out.shape == frames.shape
  assert np.all(out[:, :2] == 0)                                  # non-skin zeroed
  # Scale invariance: a brighter light or a darker skin gives the same input.
  np.testing.assert_allclose(preprocess.normalize_clip(0.5 * frames, masks), out, atol=1e-5)
  # The drift is gone (per-frame skin mean has no linear trend), the pulse is kept.
  per_frame = out[:, 2:].mean(axis=(1, 2))                        # [T, 3]
  tc = np.arange(t) - (t - 1) / 2
  assert np.abs(per_frame.mean(0)).max() < 1e-6
  assert np.abs((per_frame * tc[:, None]).sum(0)).max() < 1e-4
  for c in range(3):
    assert np.corrcoef(per_frame[:, c], -pulse)[0, 1] > 0.95
  # Batched leading dims give the same as one window at a time.
  batch = np.stack([frames, 0.7 * frames])
  both = preprocess.normalize_clip(batch, np.stack([masks, masks]))
  np.testing.assert_allclose(both[0], out, atol=1e-6)


def test_pixel_normalisation():
  """Each pixel's own relative change: the static texture cancels pixel by pixel, the pulse
  is what remains (same sign in every skin pixel), the drift is gone, the scale is O(1)."""
  rng = np.random.default_rng(4)
  t, h, w = 60, 8, 8
  skin = np.array([180.0, 120.0, 100.0])
  texture = rng.uniform(0.5, 1.5, (h, w, 1))                      # strong facial structure
  pulse = 0.01 * np.sin(2 * np.pi * 1.2 * np.arange(t) / 30.0)
  ramp = 1 + 0.05 * np.arange(t) / t                              # illumination drift
  frames = (skin * texture)[None] * ((1 - pulse) * ramp)[:, None, None, None]
  masks = np.ones((t, h, w), np.uint8)
  masks[:, :2] = 0
  out = preprocess.normalize_clip(frames, masks, mode="pixel")
  assert out.dtype == np.float32 and out.shape == frames.shape
  assert np.all(out[:, :2] == 0)                                  # non-skin zeroed
  skin_values = out[:, 2:]
  assert np.sqrt(np.mean(skin_values ** 2)) == pytest.approx(1.0, rel=1e-4)   # unit scale
  # Every skin pixel carries the (negated) pulse, whatever its texture or brightness.
  for i, j in [(2, 0), (5, 3), (7, 7)]:
    for c in range(3):
      assert np.corrcoef(out[:, i, j, c], -pulse)[0, 1] > 0.99
  # Scale and texture invariance: another skin tone and light level give the same input.
  np.testing.assert_allclose(preprocess.normalize_clip(0.6 * frames, masks, "pixel"), out,
                             atol=1e-4)
  # Motion or glare beyond PIXEL_CLIP is clipped before scaling.
  spiky = frames.copy()
  spiky[30, 4, 4] *= 3.0
  clipped = preprocess.normalize_clip(spiky, masks, "pixel")
  assert np.isfinite(clipped).all() and np.abs(clipped).max() < 50
  with pytest.raises(ValueError, match="mode must be one of"):
    preprocess.normalize_clip(frames, masks, mode="pixels")


def test_quantize_matches_original():
  rng = np.random.default_rng(0)
  ppg = rng.normal(size=(3, 4, 60))
  q, valid = preprocess.quantize_ppg(ppg)
  assert q.dtype == np.int32 and q.shape == (3, 4, 60) and valid.all()
  for window, levels in zip(ppg.reshape(-1, 60), q.reshape(-1, 60)):
    interval = (window.max() - window.min()) / 39
    expected = np.round((window - window.min()) / interval)
    np.testing.assert_array_equal(levels, expected)
    assert levels.min() == 0 and levels.max() == 39


def test_quantize_flat_and_non_finite_windows():
  ppg = np.stack([np.full(60, 3.0), np.linspace(0, 1, 60), np.r_[np.nan, np.ones(59)],
                  np.r_[np.inf, np.arange(59.0)], 5.0 + 1e-12 * np.arange(60)])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    q, valid = preprocess.quantize_ppg(ppg)
  np.testing.assert_array_equal(valid, [False, True, False, False, False])
  assert np.all(q[~valid] == 0)
  assert q[1, 0] == 0 and q[1, -1] == 39


def test_masked_rgb_means():
  frames, masks = _clips()
  means = preprocess.masked_rgb_means(frames, masks)
  assert means.shape == (2, 6, 3) and means.dtype == np.float32
  for n in range(2):
    for t in range(6):
      skin = frames[n, t][masks[n, t] > 0].astype(np.float64)
      np.testing.assert_allclose(means[n, t], skin.mean(0), rtol=1e-5)
  masks[0, 2] = 0                                   # no skin: the mean of every pixel
  means = preprocess.masked_rgb_means(frames, masks)
  np.testing.assert_allclose(means[0, 2], frames[0, 2].reshape(-1, 3).mean(0), rtol=1e-5)
