"""What every rPPG dataset builder shares: features, per-video processing, skips, splits.

A builder lists its videos (`_discover`), turns each into one example (`_make_example`) or
raises `Skip` with a reason, and assigns subjects to splits (`_assign_splits`). The base class
processes every video first (into a scratch directory, so memory holds one video's crops at a
time; `example_from_video` reads the video itself in two passes, never decoded whole),
collects the skips, and only then lets tfds write the splits: a split that lost all its videos
is left out (and logged), a dataset that lost all of them is a `DataError`, and nothing is
written under the final directory until everything succeeded (tfds writes to an `incomplete.*`
directory and renames it). The skip list is written to `skipped.json` beside
`dataset_info.json` and is `builder.skipped`.

One example = one video:
  frames   uint8[T, 64, 64, 3]  RGB face crops (faces.face_crops)
  mask     uint8[T, 64, 64]     skin mask in {0, 1}
  ppg      f32[T]               pulse wave at frame times (zeros where has_ppg is False)
  hr       f32[T]               heart rate (bpm) at frame times (NaN where has_hr is False)
  has_ppg, has_hr  bool
  fps      f32                  frame rate of the stored frames
  subject, video_id, domain     str (bytes when read back)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
from typing import Any, Iterator, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from metarppg_jax.data import faces
from metarppg_jax.data import ground_truth as gt_lib
from metarppg_jax.data import preprocess
from metarppg_jax.data import video as video_lib
from metarppg_jax.errors import DataError

CROP_SIZE = faces.CROP_SIZE
FACE_ENLARGE = 1.6   # the crop's side over the detected face's (faces.face_crops' default)
# Crops handled at once in the crop pass (skin samples, masks): bounds its working memory.
CHUNK_FRAMES = 256
SPLITS = ("train", "validation", "test")
SKIPPED_FILE = "skipped.json"

# The reasons a video is skipped; every Skip carries one of them.
UNREADABLE = "unreadable file"
NO_FACE = "no face"
GT_MISSING = "ground truth missing"
GT_INVALID = "invalid ground truth"
TOO_SHORT = "shorter than a window"
MISMATCH = "mismatched lengths"
NON_FINITE = "non-finite values"


class Skip(Exception):
  """A video that cannot be used; `reason` is one of the constants above."""

  def __init__(self, reason: str, message: str):
    super().__init__(reason, message)   # both args: picklable (from worker processes)
    self.reason = reason
    self.message = message

  def __str__(self):
    return f"{self.reason}: {self.message}"


@contextlib.contextmanager
def skip_on_error(reason: str):
  """Turns a DataError raised inside into a Skip with `reason` (non-finite values keep theirs)."""
  try:
    yield
  except DataError as e:
    message = str(e)
    if "non-finite" in message:
      raise Skip(NON_FINITE, message) from None
    raise Skip(reason, message) from None


def features() -> tfds.features.FeaturesDict:
  # Raw bytes: the default encoding stores every value as a protobuf varint, ~30x slower to
  # read (0.65 s instead of 0.02 s for a 20 s video).
  raw = tfds.features.Encoding.BYTES
  return tfds.features.FeaturesDict({
      "frames": tfds.features.Tensor(shape=(None, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8,
                                     encoding=raw),
      "mask": tfds.features.Tensor(shape=(None, CROP_SIZE, CROP_SIZE), dtype=np.uint8,
                                   encoding=raw),
      "ppg": tfds.features.Tensor(shape=(None,), dtype=np.float32, encoding=raw),
      "hr": tfds.features.Tensor(shape=(None,), dtype=np.float32, encoding=raw),
      # The length alone, so that readers need not decode the frames to learn it.
      "num_frames": tfds.features.Scalar(dtype=np.int32),
      "has_ppg": tfds.features.Scalar(dtype=np.bool_),
      "has_hr": tfds.features.Scalar(dtype=np.bool_),
      "fps": tfds.features.Scalar(dtype=np.float32),
      "subject": tfds.features.Text(),
      "video_id": tfds.features.Text(),
      "domain": tfds.features.Text(),
  })


@dataclasses.dataclass
class RppgConfig(tfds.core.BuilderConfig):
  """Options shared by the rPPG builders.

  target_fps: videos whose rate differs from this by more than 5 % are resampled to it
    (nearest frame in time, `preprocess.resample_video`); others keep their own rate.
  window: videos shorter than this many frames (after resampling) are skipped.
  split_fractions: (train, validation, test) fractions of the subjects.
  split_seed: seed of the subject permutation behind the split.
  detect_every: face detection period in frames.
  frame_range: (start, stop) frames of each video to keep, at the video's own rate, before
    resampling (MAHNOB's 30 s protocol clip); None keeps all.
  """
  target_fps: float = 30.0
  window: int = preprocess.WINDOW
  split_fractions: tuple = (0.6, 0.2, 0.2)
  split_seed: int = 0
  detect_every: int = 10
  frame_range: Optional[tuple] = None


@dataclasses.dataclass(frozen=True)
class Item:
  """One video found in the manual dir (or to generate).

  video_id: unique within the dataset; subject: the person (splits never share one);
  paths: the files it is made from (for messages); params: builder-specific.
  """
  video_id: str
  subject: str
  paths: tuple = ()
  params: Any = None


def natural_key(text: str):
  """Sort key that orders 'subject9' before 'subject10'."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def subject_splits(subjects: Sequence[str], fractions: Sequence[float],
                   seed: int = 0) -> dict:
  """Deterministic subject-disjoint split assignment.

  Subjects are sorted naturally, permuted with `seed`, and cut into consecutive groups of
  sizes round(fraction * n) for validation and test (at least one each when its fraction is
  positive and there are enough subjects to leave one for training); the rest train.

  Returns:
    {subject: "train" | "validation" | "test"}.
  """
  unique = sorted(set(subjects), key=natural_key)
  n = len(unique)
  f_train, f_val, f_test = (float(f) for f in fractions)
  total = f_train + f_val + f_test
  if min(f_train, f_val, f_test) < 0 or total <= 0:
    raise ValueError(f"split fractions must be >= 0 with a positive sum, got {fractions}")
  counts = {}
  remaining = n
  for name, f in (("test", f_test), ("validation", f_val)):
    c = int(round(f / total * n))
    if f > 0 and c == 0 and remaining > (1 if f_train > 0 else 0):
      c = 1
    c = min(c, remaining - (1 if f_train > 0 and remaining > 0 else 0))
    counts[name] = max(c, 0)
    remaining -= counts[name]
  order = np.random.default_rng(seed).permutation(n)
  shuffled = [unique[i] for i in order]
  out = {}
  pos = 0
  for name in ("test", "validation"):
    for s in shuffled[pos:pos + counts[name]]:
      out[s] = name
    pos += counts[name]
  for s in shuffled[pos:]:
    out[s] = "train"
  return out


def _resample_gt(times, values, frame_times, *, source, max_gap_s):
  with skip_on_error(MISMATCH):
    return preprocess.resample_signal(times, values, frame_times, source=source,
                                      max_gap_s=max_gap_s)


def example_from_video(video, gt: gt_lib.GroundTruth, *, config: RppgConfig, source: str,
                       subject: str, video_id: str, domain: str,
                       chunk_frames: int = CHUNK_FRAMES) -> dict:
  """One example from a video and its ground truth (raises Skip).

  `video` is read in two passes (`video_lib.VideoFile` or `video_lib.ImageSequence`), so that
  memory holds one decoded frame and the crops, never the decoded video: the first runs the
  face detector on the key frames (`faces.key_frames` of the kept clip), the second crops
  every kept frame along the track (`faces.track_boxes`), `chunk_frames` crops at a time. The
  result equals `faces.face_crops` on the whole decoded clip, resampled.

  Frame times come from the ground truth when it has them (PURE), else from the container.
  The face is cropped on the kept frames at their own rate; crops and ground truth are then
  put on `config.target_fps` where the rate differs by more than 5 %, and ground truth is
  interpolated onto the final frame times.
  """
  start, stop = config.frame_range if config.frame_range is not None else (0, None)
  every = config.detect_every

  def is_key(i):  # the clip's key frames: every `every`-th from its start, and its last
    return i >= start and (stop is None or i < stop) and (
        (i - start) % every == 0 or i == (stop or 0) - 1)

  candidates, shape = {}, None
  with skip_on_error(UNREADABLE):
    for i, frame in video.frames(is_key, last=stop is None):
      shape = frame.shape
      candidates[i] = faces.detect_candidates(frame[None], np.zeros(1, np.int64))[0]
  for w in video.warnings:
    logging.warning("%s", w)
  num_frames = video.num_frames
  times = video.timestamps
  if gt.frame_time is not None:
    if gt.frame_time.shape[0] != num_frames:
      raise Skip(MISMATCH, f"{source}: {num_frames} frames but {gt.source} lists "
                 f"{gt.frame_time.shape[0]} frame timestamps")
    times = gt.frame_time
  keep = np.arange(num_frames)
  if config.frame_range is not None:
    if num_frames < stop:
      raise Skip(TOO_SHORT, f"{source}: {num_frames} frames, the clip needs frames "
                 f"{start}..{stop}")
    keep = keep[start:stop]
  clip = keep.size
  with skip_on_error(NO_FACE):
    boxes, _ = faces.track_boxes(
        [candidates[start + k] for k in faces.key_frames(clip, every)], clip, *shape[:2],
        detect_every=every, source=source)
  t = times[keep]
  rate = float(1.0 / np.median(np.diff(t))) if t.size > 1 else float(video.fps)
  fps = float(video.fps) if video.fps > 0 else rate
  index = np.arange(keep.size)
  if abs(rate - config.target_fps) > 0.05 * config.target_fps:
    index, new_t = preprocess.resample_video(index, t, config.target_fps)
    t = t[0] + new_t
    fps = float(config.target_fps)
  num = index.size
  if num < config.window:
    raise Skip(TOO_SHORT, f"{source}: {num} frames at {fps:.4g} fps, a window is "
               f"{config.window}")

  # Ground truth onto the kept frame times.
  def on_frames(values, *, max_gap_s):
    if gt.time is None:  # one sample per video frame
      if values.shape[0] != num_frames:
        raise Skip(MISMATCH, f"{gt.source}: {values.shape[0]} ground-truth samples for "
                   f"{num_frames} video frames ({source})")
      if not np.all(np.isfinite(values)):
        raise Skip(NON_FINITE, f"{gt.source}: non-finite ground-truth values")
      return values[keep[index]].astype(np.float32)
    return _resample_gt(gt.time, values, t, source=gt.source, max_gap_s=max_gap_s)

  if gt.time is not None and config.frame_range is None:
    # Ground truth much longer than the video: a truncated video or the wrong file.
    span_gt, span_video = gt.time[-1] - gt.time[0], times[-1] - times[0]
    if span_gt > span_video + max(2.0, 0.05 * span_gt):
      raise Skip(MISMATCH, f"{gt.source} spans {span_gt:.1f} s but {source} only "
                 f"{span_video:.1f} s ({num_frames} frames; truncated video?)")
  has_ppg = gt.ppg is not None
  has_hr = gt.hr is not None
  ppg = on_frames(gt.ppg, max_gap_s=2.0) if has_ppg else np.zeros(num, np.float32)
  hr = on_frames(gt.hr, max_gap_s=4.0) if has_hr else np.full(num, np.nan, np.float32)
  with skip_on_error(UNREADABLE):
    crops, masks = _crop_pass(video, boxes, index, start=start, chunk_frames=chunk_frames)
  return {
      "frames": crops, "mask": masks, "ppg": ppg, "hr": hr,
      "has_ppg": has_ppg, "has_hr": has_hr, "fps": np.float32(fps),
      "subject": subject, "video_id": video_id, "domain": domain,
  }


def _crop_pass(video, boxes: np.ndarray, index: np.ndarray, *, start: int,
               chunk_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """The second pass: crops the clip's frames along `boxes` f32[T, 4] (clip frame p is video
  frame start + p) and keeps those at the clip positions `index` i[N] (nondecreasing).

  The skin colour is the median of the `faces.skin_samples` of every crop of the clip, as
  `faces.face_crops` learns it from all of them.

  Returns:
    (crops uint8[N, 64, 64, 3], masks uint8[N, 64, 64]).
  """
  clip, num = boxes.shape[0], index.size
  ellipse = faces.face_ellipse(FACE_ENLARGE)
  crops = np.empty((num, CROP_SIZE, CROP_SIZE, 3), np.uint8)
  chunk = np.empty((chunk_frames, CROP_SIZE, CROP_SIZE, 3), np.uint8)
  samples = []

  def flush(first, count):  # clip positions first .. first + count - 1 are in `chunk`
    samples.append(faces.skin_samples(chunk[:count], ellipse=ellipse))
    lo, hi = np.searchsorted(index, [first, first + count])
    crops[lo:hi] = chunk[index[lo:hi] - first]

  filled = 0
  for i, frame in video.frames(lambda i: start <= i < start + clip):
    p = i - start
    chunk[filled] = faces.crop_boxes(frame[None], boxes[p:p + 1], CROP_SIZE)[0]
    filled += 1
    if filled == chunk_frames:
      flush(p + 1 - filled, filled)
      filled = 0
  if filled:
    flush(clip - filled, filled)
  colour = np.median(np.concatenate(samples), axis=0)
  masks = np.concatenate([
      faces.skin_mask(crops[j:j + chunk_frames], ellipse=ellipse, colour=colour)
      for j in range(0, num, chunk_frames)])
  return crops, masks


def open_video_or_skip(path: str, **kwargs) -> video_lib.VideoFile:
  """The video file, checked and opened for `example_from_video`'s passes."""
  if not os.path.isfile(path):
    raise Skip(UNREADABLE, f"{path}: video file is missing")
  with skip_on_error(UNREADABLE):
    return video_lib.VideoFile(path, **kwargs)


def read_gt_or_skip(reader, path: str, **kwargs) -> gt_lib.GroundTruth:
  if not os.path.isfile(path):
    raise Skip(GT_MISSING, f"{path}: ground-truth file is missing")
  with skip_on_error(GT_INVALID):
    return reader(path, **kwargs)


def _check_example(ex: dict, item: Item) -> None:
  """Internal consistency of an example (a failure here is a bug, not bad data)."""
  t = ex["frames"].shape[0]
  assert ex["frames"].shape == (t, CROP_SIZE, CROP_SIZE, 3) and ex["frames"].dtype == np.uint8
  assert ex["mask"].shape == (t, CROP_SIZE, CROP_SIZE), (item, ex["mask"].shape)
  assert ex["ppg"].shape == (t,) and ex["hr"].shape == (t,), item


class RppgBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the rPPG builders (not registered itself)."""

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "Tensors stored as raw bytes (30x faster to read).",
                   "1.2.0": "num_frames: each video's frame count."}
  BUILDER_CONFIGS = [RppgConfig(name="default")]
  DOMAIN = ""
  USES_MANUAL_DIR = True

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
    self._skipped_now = None
    self._scratch = None

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):  # pylint: disable=invalid-name
    # tfds looks for a checksums file beside a builder's package through importlib_resources
    # (not installed without TensorFlow's extras); these builders download nothing.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly: dataset_info_from_configs needs a package folder with metadata files.
    return tfds.core.DatasetInfo(builder=self, features=features(),
                                 description=(self.__doc__ or "").strip())

  # --- to implement --------------------------------------------------------------------------
  def _discover(self, manual_dir: str) -> list:
    raise NotImplementedError

  def _make_example(self, item: Item) -> dict:
    raise NotImplementedError

  def _examples(self, items: Sequence[Item]) -> Iterator:
    """(item, example dict or Skip) for each item, in order; one at a time by default."""
    for item in items:
      try:
        yield item, self._make_example(item)
      except Skip as s:
        yield item, s

  def _assign_splits(self, items: Sequence[Item]) -> dict:
    """{video_id: split}; by default subject-disjoint `subject_splits`."""
    cfg = self.builder_config
    of_subject = subject_splits([i.subject for i in items], cfg.split_fractions,
                                cfg.split_seed)
    return {i.video_id: of_subject[i.subject] for i in items}

  # --- the common machinery ------------------------------------------------------------------
  @property
  def skipped(self) -> list:
    """[{"video_id", "subject", "reason", "message"}] of the last build (or the stored one)."""
    if self._skipped_now is not None:
      return list(self._skipped_now)
    path = os.path.join(self.data_dir, SKIPPED_FILE)
    if os.path.isfile(path):
      with open(path) as f:
        return json.load(f)
    return []

  def _log_download_bytes(self) -> None:
    # tfds prints sizes it does not know ("Unknown size") for generated data: the progress bar
    # and `splits.load`'s line say what is built.
    pass

  def _log_download_done(self) -> None:
    pass

  def download_and_prepare(self, **kwargs):
    try:
      super().download_and_prepare(**kwargs)
    finally:
      if self._scratch is not None:
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._scratch = None
    if self._skipped_now is not None:
      with open(os.path.join(self.data_dir, SKIPPED_FILE), "w") as f:
        json.dump(self._skipped_now, f, indent=1)

  def _manual_dir(self, dl_manager) -> Optional[str]:
    if not self.USES_MANUAL_DIR:
      return None
    path = dl_manager._manual_dir  # pylint: disable=protected-access
    if path is None or not os.path.isdir(os.fspath(path)):
      raise DataError(f"{self.name}: the manual dir {path} does not exist; pass "
                      "--manual_dir with the downloaded dataset")
    return os.fspath(path)

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    items = self._discover(manual_dir)
    if not items:
      raise DataError(f"{self.name}: no videos found in {manual_dir} "
                      f"(expected layout: {self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()})")
    ids = [i.video_id for i in items]
    if len(set(ids)) != len(ids):
      raise DataError(f"{self.name}: duplicate video ids in {manual_dir}: "
                      f"{sorted({i for i in ids if ids.count(i) > 1})}")
    split_of = self._assign_splits(items)
    self._scratch = tempfile.mkdtemp(prefix=f"{self.name}_")
    kept = {s: [] for s in dict.fromkeys(SPLITS + tuple(split_of.values()))}  # extra splits last
    skipped = []
    progress = tqdm.tqdm(self._examples(items), total=len(items), desc=f"{self.name}: videos",
                         unit="video")
    for n, (item, ex) in enumerate(progress):
      if isinstance(ex, Skip):
        skipped.append({"video_id": item.video_id, "subject": item.subject,
                        "reason": ex.reason, "message": ex.message})
        logging.warning("%s: skipped %s (%s): %s", self.name, item.video_id, ex.reason,
                        ex.message)
        continue
      _check_example(ex, item)
      path = os.path.join(self._scratch, f"{n}.npz")
      arrays = {k: np.asarray(v) for k, v in ex.items()}
      np.savez(path, **arrays)
      kept[split_of[item.video_id]].append((item.video_id, path))
    self._skipped_now = skipped
    if not any(kept.values()):
      listing = "\n".join(f"  {s['video_id']}: {s['reason']}: {s['message']}" for s in skipped)
      raise DataError(f"{self.name}: no usable videos in {manual_dir or 'the generator'}; "
                      f"all {len(items)} were skipped:\n{listing}")
    for split, entries in kept.items():
      if not entries:
        logging.warning("%s: split %r is empty (no usable videos) and is left out",
                        self.name, split)
    return {split: self._generate_examples(entries)
            for split, entries in kept.items() if entries}

  def _generate_examples(self, entries) -> Iterator:
    for video_id, path in entries:
      with np.load(path) as z:
        ex = {k: z[k] for k in z.files}
      for k in ("subject", "video_id", "domain"):
        ex[k] = str(ex[k])
      for k in ("has_ppg", "has_hr"):
        ex[k] = bool(ex[k])
      ex["fps"] = float(ex["fps"])
      ex["num_frames"] = int(ex["frames"].shape[0])
      yield video_id, ex
      os.remove(path)
