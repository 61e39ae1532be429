"""Ground-truth readers: each format parses, each broken file is a DataError naming it."""

import json

import numpy as np
import pytest

from metarppg_jax.data import ground_truth
from metarppg_jax.errors import DataError


def write_ubfc2(path, ppg, hr, t):
  with open(path, "w") as f:
    for row in (ppg, hr, t):
      f.write("  ".join(f"{v:.7e}" for v in row) + "\n")


def synthetic_ecg(seconds, fs, bpm, *, polarity=1.0, seed=0):
  """A spiky ECG-like trace: narrow R waves at `bpm`, noise and baseline wander."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * fs)) / fs
  beats = np.arange(0.3, seconds, 60.0 / bpm)
  ecg = np.zeros_like(t)
  for b in beats:
    ecg += np.exp(-0.5 * ((t - b) / 0.012) ** 2)
  ecg = polarity * 800 * ecg + 60 * np.sin(2 * np.pi * 0.3 * t) + rng.normal(0, 15, t.size)
  return ecg


def write_bdf(path, *, seconds=20.0, fs=256, bpm=72.0, channels=("EXG1", "EXG2", "EXG3"),
              trigger=(2.0, 17.0)):
  import pyedflib
  n = int(seconds * fs)
  labels = list(channels) + ["Status"]
  signals = []
  for i, c in enumerate(channels):
    signals.append(synthetic_ecg(seconds, fs, bpm, polarity=-1.0 if i == 1 else 1.0, seed=i))
  status = np.zeros(n)
  status[int(trigger[0] * fs):int(trigger[1] * fs) + 1] = 1.0
  signals.append(status)
  writer = pyedflib.EdfWriter(str(path), len(labels), file_type=pyedflib.FILETYPE_BDFPLUS)
  try:
    headers = []
    for label, sig in zip(labels, signals):
      lo, hi = float(np.floor(sig.min())) - 1, float(np.ceil(sig.max())) + 1
      headers.append({"label": label, "dimension": "uV", "sample_frequency": fs,
                      "physical_min": lo, "physical_max": hi,
                      "digital_min": -8388608, "digital_max": 8388607})
    writer.setSignalHeaders(headers)
    writer.writeSamples(signals)
  finally:
    writer.close()


def test_ubfc2_three_lines(tmp_path):
  t = 1.5 + np.arange(100) / 30.0
  ppg = np.sin(t)
  write_ubfc2(tmp_path / "ground_truth.txt", ppg, np.full(100, 70.0), t)
  gt = ground_truth.read_ubfc2(str(tmp_path / "ground_truth.txt"))
  np.testing.assert_allclose(gt.time, t - 1.5, atol=1e-6)
  np.testing.assert_allclose(gt.ppg, ppg, rtol=1e-6)
  np.testing.assert_allclose(gt.hr, 70.0)


def test_ubfc2_one_line_is_frame_aligned_ppg(tmp_path):
  (tmp_path / "gt.txt").write_text("1.0 2.0   3.0\n")
  gt = ground_truth.read_ubfc2(str(tmp_path / "gt.txt"))
  assert gt.time is None and gt.hr is None
  np.testing.assert_array_equal(gt.ppg, [1, 2, 3])


@pytest.mark.parametrize("content,message", [
    (None, "missing"),
    ("", "empty"),
    ("1 2 3\n4 5 6\n", "expected 3 lines"),
    ("1 2 x\n4 5 6\n7 8 9\n", "line 1 is not numeric"),
    ("1 2 nan\n4 5 6\n0 1 2\n", "non-finite"),
    ("1 2 3\n4 5 6\n0 1\n", "different lengths"),
    ("1 2 3\n4 5 6\n0 2 1\n", "not strictly increasing"),
])
def test_ubfc2_errors_name_the_file(tmp_path, content, message):
  path = tmp_path / "ground_truth.txt"
  if content is not None:
    path.write_text(content)
  with pytest.raises(DataError, match=message) as e:
    ground_truth.read_ubfc2(str(path))
  assert str(path) in str(e.value)


def test_ubfc1_csv(tmp_path):
  path = tmp_path / "gtdump.xmp"
  path.write_text("11,68,99,20\n27,69,99,25\n43,70,98,30\n")
  gt = ground_truth.read_ubfc1(str(path))
  np.testing.assert_allclose(gt.time, [0, 0.016, 0.032])
  np.testing.assert_array_equal(gt.ppg, [20, 25, 30])
  np.testing.assert_array_equal(gt.hr, [68, 69, 70])
  path.write_text("11,68,99\n")
  with pytest.raises(DataError, match="3 columns"):
    ground_truth.read_ubfc1(str(path))
  path.write_text("11,68,99,inf\n")
  with pytest.raises(DataError, match="non-finite"):
    ground_truth.read_ubfc1(str(path))


def test_pure_json(tmp_path):
  t0 = 1_400_000_000_000_000_000
  doc = {
      "/FullPackage": [{"Timestamp": t0 - 5_000_000 + i * 16_666_667,
                        "Value": {"waveform": 100 + i, "pulseRate": 70, "o2saturation": 98}}
                       for i in range(120)],
      "/Image": [{"Timestamp": t0 + i * 33_333_333} for i in range(60)],
  }
  path = tmp_path / "01-01.json"
  path.write_text(json.dumps(doc))
  gt = ground_truth.read_pure(str(path))
  np.testing.assert_allclose(gt.frame_time[:3], [0, 1 / 30, 2 / 30], atol=1e-6)
  np.testing.assert_allclose(gt.time[0], -0.005, atol=1e-9)
  assert gt.ppg.shape == (120,) and gt.hr.shape == (120,)
  doc["/FullPackage"] = []
  path.write_text(json.dumps(doc))
  with pytest.raises(DataError, match="no pulse waveform"):
    ground_truth.read_pure(str(path))
  doc["/FullPackage"] = [{"Timestamp": 1, "Value": {"pulseRate": 70}}]
  path.write_text(json.dumps(doc))
  with pytest.raises(DataError, match="waveform"):
    ground_truth.read_pure(str(path))
  path.write_text("{not json")
  with pytest.raises(DataError, match="not valid JSON"):
    ground_truth.read_pure(str(path))


def test_ecg_r_peaks_either_polarity():
  fs = 256
  for polarity in (1.0, -1.0):
    ecg = synthetic_ecg(10.0, fs, 80.0, polarity=polarity)
    peaks = ground_truth.ecg_r_peaks(ecg, fs)
    t, bpm = ground_truth.heart_rate_from_peaks(peaks / fs)
    assert len(peaks) in (13, 14)
    np.testing.assert_allclose(bpm, 80.0, atol=2.0)


def test_mahnob_bdf(tmp_path):
  path = tmp_path / "Part_1_S_Trial1_emotion.bdf"
  write_bdf(path, bpm=66.0, trigger=(2.0, 17.0))
  gt = ground_truth.read_mahnob_bdf(str(path))
  assert gt.ppg is None
  np.testing.assert_allclose(gt.hr, 66.0, atol=1.5)
  # On the video's clock: beats cover 0..15 s (the trigger's span).
  assert gt.time[0] < 1.0 and gt.time[-1] > 14.0


def test_mahnob_bdf_errors(tmp_path):
  no_ecg = tmp_path / "Part_2_S_Trial1_emotion.bdf"
  write_bdf(no_ecg, channels=("GSR1",))
  with pytest.raises(DataError, match="no ECG channels"):
    ground_truth.read_mahnob_bdf(str(no_ecg))
  garbage = tmp_path / "Part_3.bdf"
  garbage.write_bytes(b"not a bdf" * 100)
  with pytest.raises(DataError, match="Part_3.bdf"):
    ground_truth.read_mahnob_bdf(str(garbage))


def test_meta_rppg_example(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "example.pth"
  torch.save({"image": [torch.rand(70, 3, 64, 64) * 255], "mask": [torch.zeros(70, 3, 64, 64)],
              "ppg": [torch.rand(70)]}, path)
  doc = ground_truth.read_meta_rppg_example(str(path))
  assert doc["image"][0].shape == (70, 3, 64, 64) and doc["ppg"][0].shape == (70,)


def test_meta_rppg_example_refuses_pickled_objects(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "example.pth"
  torch.save({"image": [torch.zeros(2)], "mask": [torch.zeros(2)], "ppg": [torch.zeros(2)],
              "extra": pytest.raises}, path)  # a function: needs unpickling of code
  with pytest.raises(DataError, match="weights_only"):
    ground_truth.read_meta_rppg_example(str(path))
  torch.save({"image": [torch.zeros(2)]}, path)
  with pytest.raises(DataError, match="missing keys"):
    ground_truth.read_meta_rppg_example(str(path))
