"""Classical rPPG baselines: rPPG-Toolbox's outputs on the same traces, and synthetic
skin-colour traces with a known heart rate."""

import functools

import numpy as np
import pytest
from scipy import signal as sps

from metarppg_jax import baselines
from metarppg_jax import errors
from metarppg_jax import heart_rate
from metarppg_jax.data import preprocess
from metarppg_jax.data import synthetic

FPS = 30.0
SKIN = np.array([180.0, 130.0, 100.0])          # mean skin colour (R, G, B), 8-bit scale
PULSE_DIRECTION = np.array([0.33, 0.77, 0.53])  # blood-volume pulse in normalised RGB
TOOLBOX_FILE = "peer_baselines/toolbox_outputs.npz"
# The toolbox's CHROM output ends after its last full window (frame 887 of 900); ours adds a
# window ending at the last frame, starting at frame 852, so frames 0 .. 851 are comparable.
CHROM_SHARED_FRAMES = 852


# --------------------------------------------------------------------------------------------
# rPPG-Toolbox (ubicomplab/rPPG-Toolbox, its unsupervised methods) on the same 16 RGB traces
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toolbox(reference_dir):
  """The toolbox's signals and heart rates (`signal/<m>/<i>`, `hr/<m>/<i>`) and the traces."""
  path = reference_dir.parent / TOOLBOX_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"rPPG-Toolbox outputs not found at {path}; it lies beside the reference outputs "
        "(check out ../shared beside the repo or set METARPPG_REFERENCE_DIR)")
  with np.load(path) as z:
    out = {k: z[k] for k in z.files}
  n = len(out["video"])
  out["rgb"] = np.stack([out[f"rgb/{i}"] for i in range(n)])              # f64[16, 900, 3]
  assert all(float(out[f"fps/{i}"]) == FPS for i in range(n))
  return out


@functools.lru_cache(maxsize=4)
def _toolbox_detrend_matrix(t: int) -> np.ndarray:
  d = np.diff(np.eye(t), n=2, axis=0)
  return np.eye(t) - np.linalg.inv(np.eye(t) + 100.0 ** 2 * d.T @ d)


def toolbox_hr(sig, fps: float) -> float:
  """The toolbox's FFT heart rate of a whole signal (calculate_metric_per_video with the
  unsupervised defaults): smoothness-prior detrend (lambda 100) as a dense matrix, Butterworth
  order 1 0.6-3.3 Hz filtfilt, periodogram with nfft the next power of two, argmax in
  0.6-3.3 Hz (1.76 bpm bins for 900 samples at 30 fps)."""
  x = _toolbox_detrend_matrix(len(sig)) @ np.asarray(sig, np.float64)
  b, a = sps.butter(1, [0.6 / fps * 2, 3.3 / fps * 2], btype="bandpass")
  x = sps.filtfilt(b, a, x)
  freqs, power = sps.periodogram(x, fs=fps, nfft=1 << (len(x) - 1).bit_length(), detrend=False)
  inside = (freqs >= 0.6) & (freqs <= 3.3)
  return float(freqs[inside][np.argmax(power[inside])] * 60)


def test_toolbox_hr_reproduces_the_toolboxs_own_heart_rates(toolbox):
  for m in toolbox["methods"]:
    for i in range(len(toolbox["video"])):
      assert toolbox_hr(toolbox[f"signal/{m}/{i}"], FPS) == float(toolbox[f"hr/{m}/{i}"]), (m, i)


@pytest.mark.parametrize("method", ["green", "chrom", "pos", "ica", "lgi", "pbv", "omit"])
def test_method_is_rppg_toolboxs_to_float32_precision(toolbox, method):
  """Sample by sample (all traces in one batch): deviation <= 1e-6 of the toolbox signal's std
  (measured <= 2.7e-7: float32 output), Pearson r > 1 - 1e-9, the same toolbox heart rate."""
  ours = np.asarray(baselines.rppg_signal(method, toolbox["rgb"], FPS), np.float64)
  assert ours.shape == toolbox["rgb"].shape[:2]
  for i in range(len(toolbox["video"])):
    theirs = toolbox[f"signal/{method}/{i}"]
    mine = ours[i, :CHROM_SHARED_FRAMES if method == "chrom" else len(theirs)]
    theirs = theirs[:len(mine)]
    if method == "green":                  # ours is G / mean(G) - 1, the toolbox's the raw G
      g_mean = toolbox["rgb"][i, :, 1].mean()
      mine = (mine + 1) * g_mean
    assert np.max(np.abs(mine - theirs)) <= 1e-6 * np.std(theirs), (method, i)
    assert np.corrcoef(mine, theirs)[0, 1] > 1 - 1e-9, (method, i)
    assert toolbox_hr(ours[i], FPS) == float(toolbox[f"hr/{method}/{i}"]), (method, i)


def test_ica_of_a_video_does_not_depend_on_its_batch(toolbox):
  """JADE's sweeps stop per video: the traces here need 2 to 8 sweeps, and each one's signal
  alone, in the batch of all 16, or in a reordered 4 x 4 batch is the same to the bit."""
  rgb = toolbox["rgb"]
  together = baselines.ica(rgb, FPS)
  for i in range(len(rgb)):
    np.testing.assert_array_equal(baselines.ica(rgb[i], FPS), together[i])
  reordered = baselines.ica(rgb[::-1].reshape(4, 4, *rgb.shape[1:]), FPS)
  np.testing.assert_array_equal(reordered.reshape(together.shape)[::-1], together)
  c = np.swapaxes(rgb, -1, -2)
  c = (c - c.mean(axis=-1, keepdims=True)) / c.std(axis=-1, keepdims=True)
  final = baselines.jade(c)
  after_two = baselines.jade(c, max_sweeps=2)
  settled = [np.array_equal(after_two[i], final[i]) for i in range(len(c))]
  assert any(settled) and not all(settled), settled       # the batch mixes convergence times
  for i in range(len(c)):
    np.testing.assert_array_equal(baselines.jade(c[i]), final[i])


# --------------------------------------------------------------------------------------------
# Synthetic traces with a known heart rate
# --------------------------------------------------------------------------------------------

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


def test_colour_methods_cancel_intensity_flicker_that_fools_green_and_ica():
  rng = np.random.default_rng(2)
  hr = rng.uniform(50, 100, 12)                     # away from the flicker's 1.9 Hz = 114 bpm
  rgb = _trace(hr, 0.005, seed=3, flicker_hz=1.9)
  for method in ("green", "ica"):                   # a flicker is as independent as a pulse
    err = np.abs(heart_rate.hr_estimate(baselines.rppg_signal(method, rgb, FPS), FPS) - hr)
    assert np.median(err) > 10, method
  for method in ("chrom", "pos", "lgi", "pbv", "omit"):
    est = heart_rate.hr_estimate(baselines.rppg_signal(method, rgb, FPS), FPS)
    assert np.max(np.abs(est - hr)) < 2.0, method


def test_constant_colour_gives_zero_signal_and_short_traces_work():
  flat = np.broadcast_to(SKIN, (90, 3))
  for method in baselines.METHODS:
    np.testing.assert_allclose(baselines.rppg_signal(method, flat, FPS), 0.0, atol=1e-6,
                               err_msg=method)
  short = _trace(np.array(80.0), 0.01, seconds=1.0)   # 30 frames: shorter than a 1.6 s window
  for method in baselines.METHODS:
    out = baselines.rppg_signal(method, short, FPS)
    assert out.shape == (30,) and np.all(np.isfinite(out)), method


def test_smoothness_detrend_is_the_dense_formula():
  rng = np.random.default_rng(8)
  x = rng.standard_normal((2, 3, 120)).cumsum(axis=-1)
  t = x.shape[-1]
  d = np.diff(np.eye(t), n=2, axis=0)                  # (T - 2) x T second differences
  dense = np.eye(t) - np.linalg.inv(np.eye(t) + 100.0 ** 2 * d.T @ d)
  np.testing.assert_allclose(baselines.smoothness_detrend(x, 100.0), x @ dense.T,
                             rtol=0, atol=1e-9 * np.abs(x).max())
  line = 3.0 + 0.5 * np.arange(50.0)                     # no curvature: nothing is left
  np.testing.assert_allclose(baselines.smoothness_detrend(line), 0.0, atol=1e-9)


def test_jade_separates_known_sources_and_has_no_random_start():
  rng = np.random.default_rng(5)
  t = np.arange(1000) / FPS
  sources = np.stack([np.sin(2 * np.pi * 1.2 * t), np.sign(np.sin(2 * np.pi * 0.37 * t)),
                      rng.laplace(size=t.size)])
  mixed = rng.standard_normal((3, 3)) @ sources
  comps = baselines.jade(mixed)
  corr = np.abs(np.corrcoef(np.concatenate([comps, sources]))[:3, 3:])
  assert np.all(corr.max(axis=0) > 0.98), corr
  np.testing.assert_allclose(comps @ comps.T / t.size, np.eye(3), atol=1e-9)
  np.testing.assert_array_equal(comps, baselines.jade(mixed))


def test_bad_inputs_raise_project_errors():
  rgb = _trace(np.array(70.0), 0.005)
  with pytest.raises(errors.ConfigError, match="unknown classical rPPG method"):
    baselines.rppg_signal("fastica", rgb, FPS)
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
  with pytest.raises(errors.DataError, match="fps"):
    baselines.lgi(rgb, float("nan"))
  with pytest.raises(errors.DataError, match="at least 3 samples"):
    baselines.smoothness_detrend(np.ones(2))


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
