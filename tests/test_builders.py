"""Builders: small files in every real format -> built datasets with the right clips and labels.

Videos are synthetic faces (3-4 s, 96x96) so detection, decoding and alignment run for real.
"""

import functools
import json
import os

import cv2
import numpy as np
import pytest

from metarppg_jax.data import build
from metarppg_jax.data import synthetic
from metarppg_jax.data import video as video_lib
from metarppg_jax.data.builders import base
from metarppg_jax.data.builders import mahnob_hci
from metarppg_jax.errors import DataError

VERSION = str(base.RppgBuilder.VERSION)

SIZE = (96, 96)


@functools.lru_cache(maxsize=None)
def face_video(seed, seconds=3.0, fps=30.0):
  return synthetic.generate_video(seed, seconds=seconds, fps=fps, domain="source", size=SIZE)


def records(builder, split):
  source = builder.as_data_source()[split]
  return {r["video_id"].decode(): r for r in (source[i] for i in range(len(source)))}


def all_records(builder):
  out = {}
  for split in builder.info.splits:
    for k, r in records(builder, split).items():
      out[k] = (split, r)
  return out


def write_ubfc2_gt(folder, ppg, hr, t):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "ground_truth.txt"), "w") as f:
    for row in (ppg, hr, t):
      f.write("  ".join(f"{v:.7e}" for v in row) + "\n")


def check_example(r, *, num_frames=None):
  t = r["frames"].shape[0]
  assert r["frames"].shape == (t, 64, 64, 3) and r["frames"].dtype == np.uint8
  assert r["mask"].shape == (t, 64, 64) and set(np.unique(r["mask"])) <= {0, 1}
  assert r["mask"].mean() > 0.05  # skin found on the face
  assert r["ppg"].shape == (t,) and r["hr"].shape == (t,)
  if num_frames is not None:
    assert t == num_frames


# --- UBFC-rPPG ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ubfc_dir(tmp_path_factory):
  """DATASET_2 + DATASET_1 side by side, two good videos and one of each skip reason."""
  root = tmp_path_factory.mktemp("ubfc")
  d2 = root / "DATASET_2"
  for seed in (1, 3):
    synthetic.write_ubfc(d2 / f"subject{seed}", face_video(seed))
  # DATASET_1: oximeter CSV at ~62 Hz, PPG = 100 * t, so aligned frames read 100 * k / 30.
  v = face_video(5)
  folder = root / "DATASET_1" / "5-gt"
  folder.mkdir(parents=True)
  video_lib.write_video(folder / "vid_5gt.avi", v.frames, 30.0)
  t_ms = np.arange(0, 3000 + 16, 16.0) + 11
  rows = [f"{int(ms)},{70},{98},{(ms - 11) / 10.0}" for ms in t_ms]
  (folder / "gtdump.xmp").write_text("\n".join(rows) + "\n")
  # Skip reasons.
  bad = d2 / "subject20"   # unreadable video
  write_ubfc2_gt(bad, v.ppg, v.hr, np.arange(90) / 30)
  (bad / "vid.avi").write_bytes(b"\x00garbage" * 1000)
  bad = d2 / "subject22"   # no face
  rng = np.random.default_rng(0)
  video_lib.write_video(_mk(bad) / "vid.avi", np.full((90, 96, 96, 3), 90, np.uint8)
                        + rng.integers(0, 5, (90, 96, 96, 3), dtype=np.uint8), 30.0)
  write_ubfc2_gt(bad, v.ppg, v.hr, np.arange(90) / 30)
  bad = _mk(d2 / "subject23")   # ground truth missing
  video_lib.write_video(bad / "vid.avi", v.frames, 30.0)
  bad = d2 / "subject24"   # shorter than a window: 1.5 s
  short = face_video(24, seconds=1.5)
  synthetic.write_ubfc(bad, short)
  bad = d2 / "subject25"   # mismatched lengths: 3 s video, 10 s of ground truth
  video_lib.write_video(_mk(bad) / "vid.avi", v.frames, 30.0)
  write_ubfc2_gt(bad, np.sin(np.arange(300)), np.full(300, 70.0), np.arange(300) / 30)
  bad = d2 / "subject26"   # non-finite values
  video_lib.write_video(_mk(bad) / "vid.avi", v.frames, 30.0)
  ppg = v.ppg.astype(np.float64).copy()
  ppg[40] = np.nan
  write_ubfc2_gt(bad, ppg, v.hr, np.arange(90) / 30)
  return root


def _mk(path):
  path.mkdir(parents=True, exist_ok=True)
  return path


EXPECTED_SKIPS = {
    "DATASET_2/subject20": base.UNREADABLE,
    "DATASET_2/subject22": base.NO_FACE,
    "DATASET_2/subject23": base.GT_MISSING,
    "DATASET_2/subject24": base.TOO_SHORT,
    "DATASET_2/subject25": base.MISMATCH,
    "DATASET_2/subject26": base.NON_FINITE,
}


@pytest.fixture(scope="module")
def ubfc_builder(ubfc_dir, tmp_path_factory):
  return build.build_dataset("ubfc_rppg", data_dir=str(tmp_path_factory.mktemp("ubfc_data")),
                             manual_dir=str(ubfc_dir))


def test_ubfc_mixed_dir_builds_good_and_lists_bad(ubfc_builder):
  skipped = {s["video_id"]: s for s in ubfc_builder.skipped}
  assert {k: s["reason"] for k, s in skipped.items()} == EXPECTED_SKIPS
  for s in skipped.values():
    assert s["message"]
  with open(os.path.join(ubfc_builder.data_dir, base.SKIPPED_FILE)) as f:
    assert {s["video_id"] for s in json.load(f)} == set(EXPECTED_SKIPS)
  got = all_records(ubfc_builder)
  assert set(got) == {"DATASET_2/subject1", "DATASET_2/subject3", "DATASET_1/5-gt"}


def test_ubfc2_clips_and_labels(ubfc_builder):
  got = all_records(ubfc_builder)
  for seed in (1, 3):
    _, r = got[f"DATASET_2/subject{seed}"]
    v = face_video(seed)
    check_example(r, num_frames=90)
    np.testing.assert_allclose(r["ppg"], v.ppg, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["hr"], v.hr, rtol=1e-5)
    assert r["has_ppg"] and r["has_hr"] and r["fps"] == pytest.approx(30.0)
    assert r["domain"] == b"ubfc" and r["subject"] == f"DATASET_2/subject{seed}".encode()


def test_ubfc1_resamples_the_oximeter_onto_frame_times(ubfc_builder):
  _, r = all_records(ubfc_builder)["DATASET_1/5-gt"]
  check_example(r, num_frames=90)
  np.testing.assert_allclose(r["ppg"], 100 * np.arange(90) / 30, atol=1e-3)
  np.testing.assert_allclose(r["hr"], 70.0)


def test_ubfc_nothing_usable_is_a_data_error(tmp_path):
  manual = tmp_path / "m"
  write_ubfc2_gt(manual / "subject1", np.zeros(3), np.zeros(3), np.arange(3))
  with pytest.raises(DataError, match="(?s)no usable videos.*subject1: unreadable file"):
    build.build_dataset("ubfc_rppg", data_dir=str(tmp_path / "d"), manual_dir=str(manual))
  config_dir = tmp_path / "d" / "ubfc_rppg" / "default"
  assert not config_dir.exists() or not list(config_dir.iterdir())   # nothing half-written
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no videos found"):
    build.build_dataset("ubfc_rppg", data_dir=str(tmp_path / "d"),
                        manual_dir=str(tmp_path / "empty"))


# --- PURE ----------------------------------------------------------------------------------------

def write_pure(folder, json_path, v, *, t0, fps=30.0, drop_json_frames=0):
  folder.mkdir(parents=True)
  n = len(v.frames)
  ts = t0 + np.round(np.arange(n) * 1e9 / fps).astype(np.int64)
  # Frame k's brightness ramps with k, to check the frame order after sorting by name.
  ramp = np.linspace(0.8, 1.0, n)[:, None, None, None]
  frames = np.clip(v.frames * ramp, 0, 255).astype(np.uint8)
  for k in range(n):
    cv2.imwrite(str(folder / f"Image{ts[k]}.png"), frames[k][..., ::-1])
  wave_ts = t0 - 50_000_000 + np.arange(int((n / fps + 0.2) * 60)) * 16_666_667
  doc = {"/FullPackage": [{"Timestamp": int(w), "Value": {
      "waveform": float((w - t0) / 1e9 * 30.0), "pulseRate": 72, "o2saturation": 98}}
                          for w in wave_ts],
         "/Image": [{"Timestamp": int(x)} for x in ts[:n - drop_json_frames]]}
  json_path.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def pure_builder(tmp_path_factory):
  root = tmp_path_factory.mktemp("pure")
  t0 = 1_392_643_993_642_815_000
  # As distributed ...
  write_pure(root / "PURE" / "01-01", root / "PURE" / "01-01.json", face_video(11), t0=t0)
  write_pure(root / "PURE" / "02-01", root / "PURE" / "02-01.json", face_video(12), t0=t0)
  # ... and the rPPG-Toolbox arrangement.
  write_pure(root / "RawData" / "03-02" / "03-02", root / "RawData" / "03-02" / "03-02.json",
             face_video(13), t0=t0)
  # Bad: JSON lists fewer frames than PNGs; JSON without PNG folder.
  write_pure(root / "PURE" / "04-01", root / "PURE" / "04-01.json", face_video(14), t0=t0,
             drop_json_frames=5)
  (root / "PURE" / "05-01.json").write_text("{}")
  return build.build_dataset("pure", data_dir=str(tmp_path_factory.mktemp("pure_data")),
                             manual_dir=str(root))


def test_pure_both_layouts(pure_builder):
  got = all_records(pure_builder)
  assert set(got) == {"01-01", "02-01", "03-02"}
  for key, (_, r) in got.items():
    check_example(r, num_frames=90)
    # waveform = 30 * t, so frame k (at k / 30 s) reads k: ground truth aligned to frames.
    np.testing.assert_allclose(r["ppg"], np.arange(90), atol=1e-3)
    np.testing.assert_allclose(r["hr"], 72.0)
    brightness = r["frames"].reshape(90, -1).mean(axis=1)
    assert np.corrcoef(brightness, np.arange(90))[0, 1] > 0.95, key
  assert got["03-02"][1]["subject"] == b"03"
  skipped = {s["video_id"]: s["reason"] for s in pure_builder.skipped}
  assert skipped == {"04-01": base.MISMATCH, "05-01": base.UNREADABLE}


# --- MAHNOB-HCI ----------------------------------------------------------------------------------

def write_bdf(path, *, seconds, fs=256, bpm=66.0, trigger=(1.0, 5.0), ecg=True):
  import pyedflib
  n = int(seconds * fs)
  t = np.arange(n) / fs
  spikes = sum(np.exp(-0.5 * ((t - b) / 0.012) ** 2) for b in np.arange(0.2, seconds, 60 / bpm))
  rng = np.random.default_rng(0)
  labels, signals = [], []
  for i, name in enumerate(("EXG1", "EXG2", "EXG3") if ecg else ("GSR1",)):
    labels.append(name)
    signals.append((-1) ** i * 700 * spikes + 50 * np.sin(0.6 * np.pi * t)
                   + rng.normal(0, 10, n))
  status = np.zeros(n)
  status[int(trigger[0] * fs):int(trigger[1] * fs) + 1] = 1
  labels.append("Status")
  signals.append(status)
  writer = pyedflib.EdfWriter(str(path), len(labels), file_type=pyedflib.FILETYPE_BDFPLUS)
  try:
    writer.setSignalHeaders([
        {"label": l, "dimension": "uV", "sample_frequency": fs,
         "physical_min": float(np.floor(s.min())) - 1, "physical_max": float(np.ceil(s.max())) + 1,
         "digital_min": -8388608, "digital_max": 8388607} for l, s in zip(labels, signals)])
    writer.writeSamples(signals)
  finally:
    writer.close()


def write_session(root, session, subject, *, seconds=4.0, ecg=True, video=True):
  folder = root / "Sessions" / str(session)
  folder.mkdir(parents=True)
  if video:
    v = synthetic.generate_video(session, seconds=seconds, fps=61.0, domain="source",
                                 size=SIZE)
    video_lib.write_video(
        folder / f"P{subject}-Rec1-2009.07.09.17.53.46_C1 trigger _C_Section_{session}.avi",
        v.frames, 61.0)
    (folder / f"P{subject}-Rec1-2009.07.09.17.53.46_C2 trigger _C_Section_{session}.avi"
     ).write_bytes(b"another camera")
  write_bdf(folder / f"Part_{subject}_S_Trial{session // 2}_emotion.bdf",
            seconds=seconds + 3, trigger=(1.0, 1.0 + seconds), ecg=ecg)


@pytest.fixture(scope="module")
def mahnob_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("mahnob")
  write_session(root, 10, 1)
  write_session(root, 12, 2)
  write_session(root, 14, 3, ecg=False)     # no ECG channels
  write_session(root, 16, 3, video=False)   # no C1 video
  return root


def test_mahnob_hr_from_ecg_and_61_to_30_fps(mahnob_dir, tmp_path):
  builder = build.build_dataset("mahnob_hci", data_dir=str(tmp_path), manual_dir=str(mahnob_dir),
                                config="full")
  got = all_records(builder)
  assert set(got) == {"10", "12"}
  for _, r in got.values():
    check_example(r)
    assert abs(r["frames"].shape[0] - 4 * 30) <= 1
    assert r["fps"] == pytest.approx(30.0)
    assert not r["has_ppg"] and r["has_hr"]
    np.testing.assert_allclose(r["hr"], 66.0, atol=1.5)
  assert got["12"][1]["subject"] == b"02"
  skipped = {s["video_id"]: s["reason"] for s in builder.skipped}
  assert skipped == {"14": base.GT_INVALID, "16": base.UNREADABLE}
  assert "no ECG channels" in {s["video_id"]: s["message"] for s in builder.skipped}["14"]


def test_mahnob_clip_config(mahnob_dir, tmp_path):
  clip = base.RppgConfig(name="clip", frame_range=(61, 183))   # 2 s at 61 fps
  builder = mahnob_hci.MahnobHci(data_dir=str(tmp_path), config=clip)
  import tensorflow_datasets as tfds
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(mahnob_dir)))
  for _, r in all_records(builder).values():
    assert r["frames"].shape[0] == 60   # 122 frames at 61 fps -> 2 s at 30 fps
  # The CVPR'14 clip needs 2136 frames: 4 s sessions are too short, so nothing is left.
  with pytest.raises(DataError, match="shorter than a window|frames 306..2136"):
    build.build_dataset("mahnob_hci", data_dir=str(tmp_path / "c"), manual_dir=str(mahnob_dir),
                        config="cvpr14")


# --- the build's two passes over a video ------------------------------------------------------

@pytest.fixture(scope="module")
def moving_face_61fps(tmp_path_factory):
  """A 3 s face video at 61 fps whose face drifts (boxes change across chunk borders) and its
  UBFC ground truth."""
  v = face_video(8, seconds=3.0, fps=61.0)
  shift = np.round(6 * np.sin(np.arange(len(v.ppg)) / 20)).astype(int)
  frames = np.stack([np.roll(f, s, axis=1) for f, s in zip(v.frames, shift)])
  folder = tmp_path_factory.mktemp("moving") / "subject8"
  folder.mkdir()
  video_lib.write_video(folder / "vid.avi", frames, 61.0)
  write_ubfc2_gt(folder, v.ppg, v.hr, np.arange(len(v.ppg)) / 61.0)
  return folder


@pytest.mark.parametrize("frame_range,detect_every", [(None, 4), ((13, 160), 7)])
def test_two_pass_build_equals_face_crops_on_the_decoded_video(moving_face_61fps, frame_range,
                                                               detect_every):
  """Chunks of 7 crops, key frames every 4 / 7 frames from a clip start that is no multiple
  of either, 61 -> 30 fps: the stored example is face_crops on the whole decoded clip,
  resampled, to the byte."""
  from metarppg_jax.data import faces  # pylint: disable=g-import-not-at-top
  from metarppg_jax.data import ground_truth  # pylint: disable=g-import-not-at-top
  from metarppg_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  path = moving_face_61fps / "vid.avi"
  config = base.RppgConfig(name="t", frame_range=frame_range, detect_every=detect_every)
  gt = ground_truth.read_ubfc2(str(moving_face_61fps / "ground_truth.txt"))
  ex = base.example_from_video(video_lib.VideoFile(path), gt, config=config, source=str(path),
                               subject="8", video_id="8", domain="ubfc", chunk_frames=7)
  decoded = video_lib.read_video(path)
  start, stop = frame_range or (0, len(decoded.frames))
  want = faces.face_crops(decoded.frames[start:stop], detect_every=detect_every)
  index, _ = preprocess.resample_video(np.arange(stop - start),
                                       decoded.timestamps[start:stop], 30.0)
  assert len(index) > 7 * 3 and len(np.unique(want.boxes[:, 0])) > 10   # chunks, motion
  np.testing.assert_array_equal(ex["frames"], want.crops[index])
  np.testing.assert_array_equal(ex["mask"], want.masks[index])
  assert ex["fps"] == 30.0


def test_two_pass_build_names_the_bad_file(moving_face_61fps, tmp_path):
  bad = tmp_path / "vid.avi"
  bad.write_bytes(b"RIFF not really a video")
  with pytest.raises(DataError, match="vid.avi"):
    video_lib.VideoFile(bad)
  with pytest.raises(base.Skip, match=str(bad)) as skip:
    base.open_video_or_skip(str(bad))
  assert skip.value.reason == base.UNREADABLE
  # Cut mid-stream: both passes see the same frames; the warning names the file.
  data = (moving_face_61fps / "vid.avi").read_bytes()
  cut = tmp_path / "cut.avi"
  cut.write_bytes(data[:len(data) // 2])
  video = video_lib.VideoFile(cut)
  first = [i for i, _ in video.frames(lambda i: i % 10 == 0, last=True)]
  assert first[-1] == video.num_frames - 1 and 0 < video.num_frames < 183
  assert video.warnings and all(str(cut) in w for w in video.warnings)
  assert sum(1 for _ in video.frames()) == video.num_frames


# --- example.pth ----------------------------------------------------------------------------------

def test_meta_rppg_example(tmp_path):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (70 + i, 3, 64, 64)).astype(np.float32) for i in range(7)]
  masks = [np.repeat(np.where(rng.random((70 + i, 1, 64, 64)) > 0.5, 255.0, 0.0), 3, axis=1
                     ).astype(np.float32) for i in range(7)]
  ppgs = [np.sin(np.arange(70 + i) / 3.0).astype(np.float32) for i in range(7)]
  images[3][0, 0, 0, 0] = np.nan   # one bad video
  torch.save({"image": [torch.from_numpy(a) for a in images],
              "mask": [torch.from_numpy(a) for a in masks],
              "ppg": [torch.from_numpy(a) for a in ppgs]}, tmp_path / "example.pth")
  builder = build.build_dataset("meta_rppg_example", data_dir=str(tmp_path / "d"),
                                manual_dir=str(tmp_path))
  splits = {s: sorted(records(builder, s)) for s in builder.info.splits}
  assert splits == {"train": ["00", "01", "02", "04"], "validation": ["05"], "test": ["06"]}
  assert [(s["video_id"], s["reason"]) for s in builder.skipped] == [("03", base.NON_FINITE)]
  r = records(builder, "test")["06"]
  # Stored channels-last RGB from the original's BGR, masks 0/255 -> 0/1.
  np.testing.assert_array_equal(r["frames"], images[6].transpose(0, 2, 3, 1)[..., ::-1])
  np.testing.assert_array_equal(r["mask"], (masks[6][:, 0] > 0).astype(np.uint8))
  np.testing.assert_allclose(r["ppg"], ppgs[6])
  assert not r["has_hr"] and np.isnan(r["hr"]).all()


def test_meta_rppg_example_refuses_pickled_objects(tmp_path):
  torch = pytest.importorskip("torch")
  torch.save({"image": [torch.zeros(70, 3, 64, 64)], "mask": [torch.zeros(70, 3, 64, 64)],
              "ppg": [torch.zeros(70)], "hook": os.getcwd}, tmp_path / "example.pth")
  with pytest.raises(DataError, match="weights_only"):
    build.build_dataset("meta_rppg_example", data_dir=str(tmp_path / "d"),
                        manual_dir=str(tmp_path))


# --- synthetic and splits -------------------------------------------------------------------------

@pytest.mark.slow
def test_synthetic_tiny(tmp_path):
  builder = build.build_dataset("synthetic_rppg", data_dir=str(tmp_path), config="tiny")
  got = all_records(builder)
  assert {s for s, _ in got.values()} == {"train", "validation", "test"}
  for split, r in got.values():
    check_example(r, num_frames=210)
    assert r["domain"] == (b"shifted" if split == "test" else b"source")
  r = got["shifted_200001"][1]
  v = synthetic.generate_video(200001, seconds=7.0, domain="shifted", size=(128, 128))
  np.testing.assert_allclose(r["ppg"], v.ppg)
  np.testing.assert_allclose(r["hr"], v.hr)
  assert builder.skipped == []


def test_subject_splits_are_disjoint_and_deterministic():
  subjects = [f"subject{i}" for i in range(1, 43)]
  a = base.subject_splits(subjects, (0.6, 0.2, 0.2), seed=0)
  b = base.subject_splits(list(reversed(subjects)) + subjects[:3], (0.6, 0.2, 0.2), seed=0)
  assert a == b
  counts = {s: list(a.values()).count(s) for s in ("train", "validation", "test")}
  assert counts == {"train": 26, "validation": 8, "test": 8}
  assert base.subject_splits(subjects, (0.6, 0.2, 0.2), seed=1) != a
  small = base.subject_splits(["a", "b", "c"], (0.6, 0.2, 0.2))
  assert sorted(small.values()) == ["test", "train", "validation"]
  assert set(base.subject_splits(["a"], (0.6, 0.2, 0.2)).values()) == {"train"}


def test_builder_splits_never_share_a_subject(tmp_path):
  root = tmp_path / "m"
  for seed in (1, 3, 5):
    synthetic.write_ubfc(root / f"subject{seed}", face_video(seed))
  builder = build.build_dataset("ubfc_rppg", data_dir=str(tmp_path / "d"), manual_dir=str(root))
  split_of = {}
  for split, r in all_records(builder).values():
    assert split_of.setdefault(r["subject"], split) == split
  assert set(split_of.values()) == {"train", "validation", "test"}
