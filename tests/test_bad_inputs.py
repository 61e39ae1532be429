"""The bad-input corpus: every kind of broken input a user can hand us, and what they see.

Each `Case` writes one bad input under a temporary directory and calls the entry point that
meets it first in real use (the video reader, the face crop of `predict`, a ground-truth
reader, the dataset builder's per-video step, the checkpoint importer, the config loader, the
program's `run`). The expected outcome is one of:

  raises   a specific `metarppg_jax.errors` type whose message names the file (or the config
           field) and matches the problem; never a bare exception from inside a library;
  skip     the dataset builder's `Skip` with its reason (the build lists it and goes on);
  warns    the input is used, and `Video.warnings` names the file and the problem;
  handled  the input is valid if unusual and comes out right (checked).

`test_mixed_manual_dir_builds_good_and_lists_bad` builds a UBFC-layout folder mixing good and
bad subjects. README.md's "Failure modes" table lists every case here (checked below).
Media are tiny (64x64, 4 s) so the whole corpus runs in about a minute.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import pickle
import re
import subprocess
import sys
from typing import Any, Callable

import av
import numpy as np
import pytest

from metarppg_jax import configuration
from metarppg_jax import original_checkpoint
from metarppg_jax import predict
from metarppg_jax.data import build
from metarppg_jax.data import faces
from metarppg_jax.data import ground_truth
from metarppg_jax.data import preprocess
from metarppg_jax.data import synthetic
from metarppg_jax.data import video as video_lib
from metarppg_jax.data.builders import base
from metarppg_jax.errors import CheckpointError, ConfigError, DataError, MetaRPPGError

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.py"
FPS = 30.0
SECONDS = 4.0          # 120 frames: one support and one query window for predict
SIZE = (64, 64)


@pytest.fixture(scope="module")
def media():
  """A synthetic face video (uint8[120, 64, 64, 3]) with its PPG and HR, made once."""
  return synthetic.generate_video(7, seconds=SECONDS, fps=FPS, domain="source", size=SIZE)


def _noise_frames(n, seed=0):
  """A face-free scene: flat grey wall with sensor noise."""
  rng = np.random.default_rng(seed)
  return (np.full((n, *SIZE, 3), 90, np.uint8)
          + rng.integers(0, 6, (n, *SIZE, 3), dtype=np.uint8))


def _write_ubfc_gt(path, ppg, hr, t):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as f:
    for row in (ppg, hr, t):
      f.write(" ".join(f"{v:.7e}" for v in np.asarray(row, np.float64)) + "\n")
  return path


def _good_video(tmp, media, name="vid.avi"):
  path = tmp / name
  path.parent.mkdir(parents=True, exist_ok=True)
  video_lib.write_video(path, media.frames, FPS)
  return path


def _tiny_config(**overrides):
  return configuration.from_file(TINY_CONFIG, overrides)


# --------------------------------------------------------------------------------------------
# The corpus. `make(tmp_path, media)` writes the input and returns (thunk, what the message
# must name); the thunk meets the input the way a user's run does.
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  make: Callable[[pathlib.Path, Any], tuple[Callable[[], Any], str]]
  kind: str                     # raises | skip | warns | handled
  error: type = type(None)      # raises: the exception type
  reason: str = ""              # skip: the Skip reason
  match: str = ""               # regex on the message (raises, skip, warns)
  check: Callable[[Any], None] | None = None   # handled: checks the result


def _empty_file(tmp, media):
  path = tmp / "empty.avi"
  path.write_bytes(b"")
  return (lambda: video_lib.read_video(path)), str(path)


def _truncated_video(tmp, media):
  path = _good_video(tmp, media)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])   # an interrupted download
  return (lambda: video_lib.read_video(path)), str(path)


def _truncated_header(tmp, media):
  path = _good_video(tmp, media)
  path.write_bytes(path.read_bytes()[:300])  # not even the container header survives
  return (lambda: video_lib.read_video(path)), str(path)


def _text_named_avi(tmp, media):
  path = tmp / "notes.avi"
  path.write_text("subject 3: camera fell over, redo on Monday\n" * 20)
  return (lambda: video_lib.read_video(path)), str(path)


def _zero_frames(tmp, media):
  path = tmp / "zero.avi"
  with av.open(str(path), "w") as container:   # header and stream, no frame
    stream = container.add_stream("mjpeg", rate=30)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuvj444p"
    container.start_encoding()
  return (lambda: video_lib.read_video(path)), str(path)


def _one_frame(tmp, media):
  path = tmp / "one.avi"
  video_lib.write_video(path, media.frames[:1], FPS)
  return (lambda: predict.load_clip(path, _tiny_config())), str(path)


def _no_face(tmp, media):
  path = tmp / "wall.avi"
  video_lib.write_video(path, _noise_frames(len(media.frames)), FPS)
  return (lambda: predict.load_clip(path, _tiny_config())), str(path)


def _face_lost(tmp, media):
  frames = media.frames.copy()
  frames[30:] = _noise_frames(len(frames) - 30)   # the person walks out after 1 s
  path = tmp / "walked_away.avi"
  video_lib.write_video(path, frames, FPS)
  return (lambda: predict.load_clip(path, _tiny_config())), str(path)


def _grayscale(tmp, media):
  path = tmp / "grey.avi"
  video_lib.write_video(path, media.frames, FPS, pix_fmt="gray")
  return (lambda: video_lib.read_video(path)), str(path)


def _check_vfr(result):
  video, written = result
  np.testing.assert_allclose(video.timestamps, written, atol=1.5e-3)  # real times kept
  frames, t = preprocess.resample_video(video.frames, video.timestamps, FPS)
  np.testing.assert_allclose(np.diff(t), 1 / FPS)                      # then made constant
  assert frames.shape[0] == int(np.floor(written[-1] * FPS + 1e-6)) + 1


def _variable_frame_rate(tmp, media):
  path = tmp / "vfr.mkv"
  gaps = np.random.default_rng(1).uniform(0.02, 0.05, len(media.frames) - 1)
  written = np.round(np.concatenate([[0.0], np.cumsum(gaps)]), 3)
  video_lib.write_video(path, media.frames, FPS, timestamps=written)
  return (lambda: (video_lib.read_video(path), written)), str(path)


def _check_close_to(reference):
  def check(video):
    assert video.frames.dtype == np.uint8 and video.frames.shape == reference.shape
    assert np.abs(video.frames.astype(np.float32) - reference).mean() < 4.0
    assert not video.warnings
  return check


def _ten_bit(tmp, media):
  path = tmp / "10bit.mkv"
  video_lib.write_video(path, media.frames, FPS, codec="ffv1", pix_fmt="yuv420p10le")
  return (lambda: video_lib.read_video(path)), str(path)


def _odd_pixel_format(tmp, media):
  path = tmp / "yuv410.mkv"   # 4:1:0 chroma, planar: rare, still FFmpeg's
  video_lib.write_video(path, media.frames, FPS, codec="ffv1", pix_fmt="yuv410p")
  return (lambda: video_lib.read_video(path)), str(path)


def _huge_resolution(tmp, media):
  # 8 frames of 2048x2048 would decode to 96 MiB; a 64 MiB budget stands in for the default
  # (video.MAX_DECODED_BYTES) so that the file stays small and quick to write.
  path = tmp / "huge.avi"
  video_lib.write_video(path, np.full((8, 2048, 2048, 3), 120, np.uint8), FPS, codec="mjpeg",
                        quality=31)
  return (lambda: video_lib.read_video(path, max_bytes=64 * 2 ** 20)), str(path)


def _gt_missing(tmp, media):
  path = tmp / "subject1" / "ground_truth.txt"
  return (lambda: ground_truth.read_ubfc2(str(path))), str(path)


def _gt_empty(tmp, media):
  path = tmp / "ground_truth.txt"
  path.write_text("")
  return (lambda: ground_truth.read_ubfc2(str(path))), str(path)


def _gt_with(value):
  def make(tmp, media):
    ppg = media.ppg.astype(np.float64).copy()
    ppg[17] = value
    t = np.arange(len(ppg)) / FPS
    path = _write_ubfc_gt(tmp / "ground_truth.txt", ppg, media.hr, t)
    return (lambda: ground_truth.read_ubfc2(str(path))), str(path)
  return make


def _gt_non_numeric(tmp, media):
  path = tmp / "ground_truth.txt"
  path.write_text("0.1 0.2 0.3\n72 72 seventy-two\n0 0.033 0.066\n")
  return (lambda: ground_truth.read_ubfc2(str(path))), str(path)


def _example(tmp, media, gt_seconds):
  """The builder's per-video step on the good video and `gt_seconds` of ground truth."""
  path = _good_video(tmp, media)
  n = int(gt_seconds * FPS)
  t = np.arange(n) / FPS
  gt_path = _write_ubfc_gt(tmp / "ground_truth.txt", np.sin(2 * np.pi * 1.2 * t),
                           np.full(n, 72.0), t)

  def call():
    video = video_lib.VideoFile(path)
    gt = ground_truth.read_ubfc2(str(gt_path))
    return base.example_from_video(video, gt, config=base.RppgConfig(name="t"),
                                   source=str(path), subject="s1", video_id="s1",
                                   domain="ubfc")
  return call, str(gt_path)


def _bdf_without_ecg(tmp, media):
  import pyedflib  # pylint: disable=g-import-not-at-top
  path = tmp / "Part_1_S_Trial1_emotion.bdf"
  fs, n = 256, 256 * 6
  status = np.zeros(n)
  status[256:5 * 256] = 1
  signals = [np.sin(np.arange(n) / 50.0) * 100, status]
  writer = pyedflib.EdfWriter(str(path), 2, file_type=pyedflib.FILETYPE_BDFPLUS)
  try:
    writer.setSignalHeaders([
        {"label": label, "dimension": "uV", "sample_frequency": fs, "physical_min": -200.0,
         "physical_max": 200.0, "digital_min": -8388608, "digital_max": 8388607}
        for label in ("GSR1", "Status")])
    writer.writeSamples(signals)
  finally:
    writer.close()
  return (lambda: ground_truth.read_mahnob_bdf(str(path))), str(path)


def _pure_without_waveform(tmp, media):
  path = tmp / "01-01.json"
  ts = 1_392_643_993_642_815_000 + np.arange(120) * 33_333_333
  path.write_text(json.dumps({
      "/FullPackage": [{"Timestamp": int(x), "Value": {"pulseRate": 72, "o2saturation": 98}}
                       for x in ts],
      "/Image": [{"Timestamp": int(x)} for x in ts]}))
  return (lambda: ground_truth.read_pure(str(path))), str(path)


class _Marker:
  """Unpickling this would create `path` (what a malicious checkpoint would do)."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, "w"))


def _pth_with_pickled_object(tmp, media):
  marker = tmp / "EXECUTED"
  path = tmp / "model.pth"
  with open(path, "wb") as f:
    pickle.dump({"A": {"conv1.weight": _Marker(marker)}, "proto": _Marker(marker)}, f)

  def call():
    try:
      return original_checkpoint.load(path)
    finally:
      assert not marker.exists(), "the pickled object was executed"
  return call, str(path)


def _example_pth_with_pickled_object(tmp, media):
  torch = pytest.importorskip("torch")
  marker = tmp / "EXECUTED"
  path = tmp / "example.pth"
  torch.save({"image": [torch.zeros(2, 3, 64, 64)], "mask": [torch.zeros(2, 3, 64, 64)],
              "ppg": [torch.zeros(2)], "hook": _Marker(marker)}, path)
  assert not marker.exists()

  def call():
    try:
      return ground_truth.read_meta_rppg_example(str(path))
    finally:
      assert not marker.exists(), "the pickled object was executed"
  return call, str(path)


def _pth_wrong_shapes(tmp, media):
  torch = pytest.importorskip("torch")
  reference = REPO.parent / "shared" / "reference" / "checkpoint.pth"
  if not reference.is_file():
    pytest.skip(f"{reference} not available")
  doc = torch.load(reference, weights_only=True)
  doc["B"]["fc.weight"] = torch.zeros(80, 100)   # an estimator of another width
  path = tmp / "other_model.pth"
  torch.save(doc, path)
  return (lambda: original_checkpoint.load(path)), str(path)


def _config_unknown_field(tmp, media):
  path = tmp / "my_config.py"
  path.write_text(
      f"import importlib.util\n"
      f"spec = importlib.util.spec_from_file_location('base', {str(TINY_CONFIG)!r})\n"
      "base = importlib.util.module_from_spec(spec)\n"
      "spec.loader.exec_module(base)\n"
      "def get_config():\n"
      "  config = base.get_config()\n"
      "  config.lr = 0.01   # the field is optim.lr\n"
      "  return config\n")
  return (lambda: configuration.from_file(path)), "'lr'"


def _config_negative_lr(tmp, media):
  return (lambda: _tiny_config(**{"optim.lr": -1e-3})), "optim.lr"


def _config_window_longer_than_video(tmp, media):
  config = _tiny_config(**{"eval.queries": 9})
  # The evaluation split's shortest video is this corpus's 4 s clip (120 frames).
  return (lambda: configuration.check_against_data(
      config, split="test", num_frames=len(media.frames), purpose="eval",
      source="my_dataset")), "too long"


def _workdir_not_writable(tmp, media):
  # Running as root, permission bits do not stop writes; a path below a regular file cannot
  # be created by anyone (ENOTDIR), as on a read-only or full disk the write fails for real.
  blocker = tmp / "results.txt"
  blocker.write_text("a file, not a folder\n")
  workdir = blocker / "run1"
  from metarppg_jax import main  # pylint: disable=g-import-not-at-top
  return (lambda: main.run(_tiny_config(), str(workdir))), str(workdir)


CASES = [
    Case("empty file", _empty_file, "raises", DataError, match="empty"),
    Case("truncated video", _truncated_video, "warns",
         match=r"declares 120 frames but only \d+ decoded \(truncated"),
    Case("truncated video header", _truncated_header, "raises", DataError,
         match="not a readable video"),
    Case("text file named .avi", _text_named_avi, "raises", DataError,
         match="not a readable video"),
    Case("zero frames", _zero_frames, "raises", DataError, match="no decodable frame"),
    Case("one frame", _one_frame, "raises", DataError, match=r"too short: 1 frames"),
    Case("no face in any frame", _no_face, "raises", DataError, match="no face found"),
    Case("face lost mid-video", _face_lost, "raises", DataError, match="face lost mid-video"),
    Case("grayscale video", _grayscale, "warns", match="greyscale"),
    Case("variable frame rate", _variable_frame_rate, "handled", check=_check_vfr),
    Case("10-bit pixel format", _ten_bit, "handled", check=None),
    Case("odd pixel format (yuv410p)", _odd_pixel_format, "handled", check=None),
    Case("huge resolution", _huge_resolution, "raises", DataError,
         match=r"2048x2048.*MiB"),
    Case("ground truth missing", _gt_missing, "raises", DataError, match="missing"),
    Case("ground truth empty", _gt_empty, "raises", DataError, match="empty"),
    Case("ground truth with NaN", _gt_with(np.nan), "raises", DataError,
         match="non-finite.*sample 17"),
    Case("ground truth with inf", _gt_with(np.inf), "raises", DataError,
         match="non-finite.*sample 17"),
    Case("ground truth shorter than the video", lambda t, m: _example(t, m, 2.0), "skip",
         reason=base.MISMATCH, match="ground truth covers"),
    Case("ground truth longer than the video", lambda t, m: _example(t, m, 10.0), "skip",
         reason=base.MISMATCH, match="truncated video"),
    Case("ground truth non-numeric", _gt_non_numeric, "raises", DataError,
         match="line 2 is not numeric"),
    Case("BDF without ECG channels", _bdf_without_ecg, "raises", DataError,
         match="no ECG channels"),
    Case("PURE json without waveform", _pure_without_waveform, "raises", DataError,
         match="waveform"),
    Case(".pth with wrong shapes", _pth_wrong_shapes, "raises", CheckpointError,
         match=r"B/fc\.weight.*\(80, 100\)|B/fc\.weight.*\[80, 100\]"),
    Case(".pth holding a pickled object", _pth_with_pickled_object, "raises",
         CheckpointError, match="pickled.*refused|refused"),
    Case("example.pth holding a pickled object", _example_pth_with_pickled_object, "raises",
         DataError, match="weights_only"),
    Case("unknown config field", _config_unknown_field, "raises", ConfigError,
         match=r"unknown field 'lr' \(did you mean 'optim\.lr'\?\)"),
    Case("negative learning rate", _config_negative_lr, "raises", ConfigError,
         match=r"optim\.lr=-0\.001: must be > 0"),
    Case("window longer than the video", _config_window_longer_than_video, "raises",
         ConfigError, match="too long for my_dataset split 'test'.* 120 frames"),
    Case("workdir not writable", _workdir_not_writable, "raises", ConfigError,
         match="not writable|cannot"),
]


def test_corpus_has_at_least_20_kinds():
  assert len({c.name for c in CASES}) == len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, media):
  call, named = case.make(tmp_path, media)
  if case.kind == "raises":
    with pytest.raises(MetaRPPGError) as info:
      call()
    error = info.value
    assert type(error) is case.error or isinstance(error, case.error), (
        f"{case.name}: {type(error).__name__} instead of {case.error.__name__}: {error}")
    message = str(error)
    assert named in message, f"{case.name}: the message does not name {named}: {message}"
    assert re.search(case.match, message, re.S), f"{case.name}: {message}"
    assert "Traceback" not in message
  elif case.kind == "skip":
    with pytest.raises(base.Skip) as info:
      call()
    assert info.value.reason == case.reason, f"{case.name}: {info.value}"
    assert named in info.value.message and re.search(case.match, info.value.message), (
        f"{case.name}: {info.value.message}")
  elif case.kind == "warns":
    video = call()
    assert video.frames.shape[0] >= 1
    text = "\n".join(video.warnings)
    assert named in text and re.search(case.match, text), f"{case.name}: {video.warnings}"
  else:
    result = call()
    (case.check or _check_close_to(media.frames))(result)


# --------------------------------------------------------------------------------------------
# A dataset build over a folder of good and bad subjects.
# --------------------------------------------------------------------------------------------

def _digest(root: pathlib.Path) -> dict:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def test_mixed_manual_dir_builds_good_and_lists_bad(tmp_path, media):
  root = tmp_path / "UBFC"
  n = len(media.frames)
  t = np.arange(n) / FPS
  for subject in ("subject1", "subject2"):   # good
    synthetic.write_ubfc(root / subject, media)
  bad = {}

  def ubfc(subject, video=None, gt=None):
    folder = root / subject
    folder.mkdir(parents=True)
    if video is not None:
      video(folder / "vid.avi")
    if gt is not None:
      gt(folder / "ground_truth.txt")

  ok_video = lambda p: video_lib.write_video(p, media.frames, FPS)
  ok_gt = lambda p: _write_ubfc_gt(p, media.ppg, media.hr, t)
  ubfc("subject3", video=lambda p: p.write_bytes(b""), gt=ok_gt)
  bad["subject3"] = (base.UNREADABLE, "empty")
  ubfc("subject4", video=lambda p: p.write_text("not a video\n"), gt=ok_gt)
  bad["subject4"] = (base.UNREADABLE, "not a readable video")
  ubfc("subject5", video=lambda p: video_lib.write_video(p, _noise_frames(n), FPS), gt=ok_gt)
  bad["subject5"] = (base.NO_FACE, "no face found")
  ubfc("subject6", video=ok_video)
  bad["subject6"] = (base.GT_MISSING, "neither ground_truth.txt")
  nan_ppg = media.ppg.astype(np.float64).copy()
  nan_ppg[5] = np.nan
  ubfc("subject7", video=ok_video, gt=lambda p: _write_ubfc_gt(p, nan_ppg, media.hr, t))
  bad["subject7"] = (base.NON_FINITE, "non-finite")
  ubfc("subject8", video=ok_video, gt=lambda p: p.write_text("a b c\nd e f\ng h i\n"))
  bad["subject8"] = (base.GT_INVALID, "not numeric")
  long_t = np.arange(10 * n) / FPS
  ubfc("subject9", video=ok_video,
       gt=lambda p: _write_ubfc_gt(p, np.sin(long_t), np.full(10 * n, 70.0), long_t))
  bad["subject9"] = (base.MISMATCH, "truncated video")
  ubfc("subject10", video=lambda p: video_lib.write_video(p, media.frames[:40], FPS),
       gt=lambda p: _write_ubfc_gt(p, media.ppg[:40], media.hr[:40], t[:40]))
  bad["subject10"] = (base.TOO_SHORT, "a window is 60")
  before = _digest(root)

  builder = build.build_dataset("ubfc_rppg", data_dir=str(tmp_path / "data"),
                                manual_dir=str(root))
  skipped = {s["video_id"]: s for s in builder.skipped}
  assert set(skipped) == set(bad)
  for subject, (reason, words) in bad.items():
    assert skipped[subject]["reason"] == reason, skipped[subject]
    assert words in skipped[subject]["message"], skipped[subject]
    assert subject in skipped[subject]["message"], skipped[subject]  # names the file
  with open(os.path.join(builder.data_dir, base.SKIPPED_FILE)) as f:
    assert {s["video_id"] for s in json.load(f)} == set(bad)
  built = {}
  for split in builder.info.splits:
    source = builder.as_data_source()[split]
    for i in range(len(source)):
      built[source[i]["video_id"].decode()] = source[i]
  assert set(built) == {"subject1", "subject2"}
  for record in built.values():
    assert record["frames"].shape == (n, 64, 64, 3)
    np.testing.assert_allclose(record["ppg"], media.ppg, rtol=1e-5, atol=1e-6)
  assert build.format_skips(builder.skipped).startswith(f"{len(bad)} video(s) skipped")
  # Nothing the user has is changed or removed.
  assert _digest(root) == before


# --------------------------------------------------------------------------------------------
# What the programs print: a message and status 1, never a traceback.
# --------------------------------------------------------------------------------------------

def _run_cli(args, tmp_path, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_bad_workdir_and_config_say_what_is_wrong(tmp_path):
  blocker = tmp_path / "results.txt"
  blocker.write_text("x\n")
  out = _run_cli(["metarppg_jax.main", f"--config={TINY_CONFIG}",
                  f"--workdir={blocker / 'run'}"], tmp_path)
  assert out.returncode == 1, out.stderr[-2000:]
  assert "Traceback" not in out.stderr and str(blocker / "run") in out.stderr
  out = _run_cli(["metarppg_jax.main", f"--config={TINY_CONFIG}", f"--workdir={tmp_path / 'w'}",
                  "--config.optim.lr=-1.0"], tmp_path)
  assert out.returncode == 1, out.stderr[-2000:]
  assert "Traceback" not in out.stderr and "optim.lr=-1.0: must be > 0" in out.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()   # refused before any work


def test_readme_failure_modes_lists_every_case():
  readme = (REPO / "README.md").read_text()
  assert "## Failure modes" in readme
  section = readme.split("## Failure modes", 1)[1].split("\n## ", 1)[0]
  missing = [c.name for c in CASES if f"| {c.name} |" not in section]
  assert not missing, f"README 'Failure modes' lacks rows for {missing}"
