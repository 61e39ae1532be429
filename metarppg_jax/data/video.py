"""Reading and writing videos: frames as uint8 RGB with real per-frame timestamps.

`read_video` decodes any container/codec/pixel format FFmpeg knows (through PyAV) to
`uint8[T, H, W, 3]` RGB; grey, 10-bit and YUV formats are converted by FFmpeg's swscale. Frame
times come from the presentation timestamps, so variable-frame-rate videos keep their real
timing (`preprocess.resample_video` makes them constant). OpenCV is not used as a fallback
for videos: it wraps the same FFmpeg demuxers (so it opens nothing PyAV cannot) and it gives no
reliable per-frame timestamps.

Damage policy: a file that cannot be opened, has no video stream or yields no frame raises
`DataError`. A stream that breaks after some frames decoded (a truncated download, a corrupt
packet) returns the frames decoded before the damage and says so in `Video.warnings`; callers
(the dataset builders) decide whether a shortened video is usable, e.g. by checking it against
the ground-truth length, and report it. Nothing is dropped silently.

`VideoFile` and `ImageSequence` are the same readers as passes that yield one frame at a time
(only the frames asked for are converted to RGB / read), for the dataset build, which reads a
video twice instead of holding it decoded (a MAHNOB-HCI session is 83 MB a second);
`read_video` and `read_image_sequence` are one pass kept whole.
`read_image_sequence` reads per-frame image files (PURE's PNGs). `write_video` writes frames
with a chosen codec (lossless `ffv1`/`rawvideo`, lossy `mjpeg`/`h264`); the synthetic generator
and the tests use it.
"""

from collections.abc import Sequence
import fractions
import os
import pathlib
from typing import NamedTuple

import av
import cv2
import numpy as np

from metarppg_jax.errors import DataError

PathLike = str | os.PathLike
# Decoded frames beyond this are refused before decoding (an 8K or hours-long video would
# otherwise be killed for memory with no message); pass max_frames to read a part.
MAX_DECODED_BYTES = 16 * 2 ** 30


class Video(NamedTuple):
  """A decoded video.

  frames: uint8[T, H, W, 3] RGB.
  timestamps: f64[T] seconds from the first frame (0 first, strictly increasing).
  fps: nominal frame rate from the container, or 1 / median frame interval when the container
    has none.
  warnings: problems that did not stop decoding (e.g. a truncated stream), one sentence each.
  """
  frames: np.ndarray
  timestamps: np.ndarray
  fps: float
  warnings: tuple[str, ...] = ()


def _check_file(path: pathlib.Path) -> None:
  if not path.exists():
    raise DataError(f"{path}: file not found")
  if path.is_dir():
    raise DataError(f"{path}: is a directory, expected a video file")
  if path.stat().st_size == 0:
    raise DataError(f"{path}: file is empty (0 bytes)")


class _FrameBuffer:
  """Growable uint8[T, H, W, 3] buffer: one allocation when the frame count is known."""

  def __init__(self, capacity: int):
    self._capacity = max(int(capacity), 1)
    self._array = None
    self.count = 0

  def append(self, frame: np.ndarray) -> None:
    if self._array is None:
      self._array = np.empty((self._capacity,) + frame.shape, np.uint8)
    elif frame.shape != self._array.shape[1:]:
      raise ValueError(
          f"frame {self.count} has shape {frame.shape}, earlier frames {self._array.shape[1:]}")
    if self.count == self._array.shape[0]:
      grown = np.empty((2 * self.count,) + frame.shape, np.uint8)
      grown[:self.count] = self._array
      self._array = grown
    self._array[self.count] = frame
    self.count += 1

  def result(self) -> np.ndarray:
    if self._array is None:
      return np.zeros((0, 0, 0, 3), np.uint8)
    if self.count == self._array.shape[0]:
      return self._array
    return self._array[:self.count].copy()


class VideoFile:
  """A video file decoded frame by frame, in as many passes as the caller needs.

  The dataset build reads a video twice (faces detected on every k-th frame, then every frame
  cropped) so that memory holds one decoded frame at a time, not the video; `read_video`
  is one pass that keeps every frame. Each pass decodes the stream from its start (decoding
  is deterministic, so every pass sees the same frames).

  After a pass that ran to the end of the stream (or `max_frames`): `num_frames`,
  `timestamps` f64[T], `fps` and `warnings` (as in `Video`).
  """

  def __init__(self, path: PathLike, *, max_frames: int | None = None):
    """Opens the file to check it (DataError naming it: missing, empty, not a video, no video
    stream) and reads the stream's size and declared frame count."""
    self.path = pathlib.Path(path)
    _check_file(self.path)
    if max_frames is not None and max_frames < 1:
      raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    self.max_frames = max_frames
    with self._open() as container:
      stream = container.streams.video[0]
      self.declared = stream.frames or 0
      self.width, self.height = stream.width, stream.height
      self.pix_fmt = stream.codec_context.pix_fmt or ""
    self.num_frames = None
    self.timestamps = None
    self.fps = None
    self.warnings = ()

  def _open(self):
    try:
      container = av.open(str(self.path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as e:
      raise DataError(f"{self.path}: not a readable video ({type(e).__name__}: {e})") from e
    if not container.streams.video:
      container.close()
      raise DataError(f"{self.path}: the file has no video stream")
    return container

  def frames(self, wanted=None, *, last: bool = False):
    """One pass: yields (i, uint8[H, W, 3] RGB) for every frame i with `wanted(i)` (None: all).

    Frames not wanted are decoded (the codec needs them) but not converted to RGB. With
    `last`, the stream's last frame is yielded too (after the pass, when not wanted): its
    index is known only once the stream ends.

    Raises:
      DataError (naming the file): no decodable frame; timestamps that cannot be made
        increasing; a later pass that decodes a different number of frames than the first.
    """
    path, warnings = self.path, []
    if self.pix_fmt.startswith(("gray", "mono", "ya")):
      warnings.append(f"{path}: greyscale video ({self.pix_fmt}): the three colour channels "
                      "are equal, so the pulse is seen in brightness only")
    pts, held, size = [], None, None
    with self._open() as container:
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      time_base = stream.time_base
      try:
        for frame in container.decode(stream):
          i = len(pts)
          if i and (frame.height, frame.width) != size:
            raise ValueError(f"frame {i} is {frame.width}x{frame.height}, earlier frames "
                             f"{size[1]}x{size[0]}")
          size = (frame.height, frame.width)
          pts.append(frame.pts)
          if wanted is None or wanted(i):
            yield i, frame.to_ndarray(format="rgb24")
            held = None
          elif last:
            held = frame
          if self.max_frames is not None and len(pts) >= self.max_frames:
            break
      except (av.error.FFmpegError, ValueError) as e:
        if not pts:
          raise DataError(f"{path}: no frame could be decoded ({type(e).__name__}: {e})") from e
        warnings.append(f"{path}: decoding stopped after {len(pts)} frames: "
                        f"{type(e).__name__}: {e}")
      rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    n = len(pts)
    if n == 0:
      raise DataError(f"{path}: the video stream has no decodable frame")
    if self.num_frames is not None and n != self.num_frames:
      raise DataError(f"{path}: decoded {n} frames, an earlier pass {self.num_frames}")
    if held is not None:
      yield n - 1, held.to_ndarray(format="rgb24")
    if self.declared > 0 and n < self.declared and (self.max_frames is None
                                                    or n < self.max_frames):
      warnings.append(f"{path}: the container declares {self.declared} frames but only {n} "
                      "decoded (truncated or corrupt file)")
    nominal = float(rate) if rate else 0.0
    timestamps = _timestamps(path, pts, time_base, nominal, warnings)
    if nominal <= 0:
      if n < 2:
        raise DataError(f"{path}: one frame and no frame rate in the container")
      nominal = float(1.0 / np.median(np.diff(timestamps)))
    self.num_frames, self.timestamps, self.fps = n, timestamps, nominal
    self.warnings = tuple(warnings)


def read_video(path: PathLike, *, max_frames: int | None = None,
               max_bytes: int | None = MAX_DECODED_BYTES) -> Video:
  """Decodes a video file to RGB frames with timestamps from the stream's pts.

  Args:
    path: the video file.
    max_frames: decode at most this many frames from the start (memory bound for long or
      huge videos); None decodes all.
    max_bytes: the most memory the decoded frames may take (uint8 RGB); None: no limit.

  Returns:
    `Video(frames uint8[T, H, W, 3], timestamps f64[T], fps, warnings)`.

  Raises:
    DataError: missing/empty file, not a video, no video stream, no decodable frame,
      decoded frames larger than `max_bytes`, or timestamps that cannot be made increasing.
      The message names the file. A greyscale stream is decoded (as three equal channels)
      with a warning.
  """
  video = VideoFile(path, max_frames=max_frames)
  declared = video.declared
  capacity = declared if declared > 0 else 256
  if max_frames is not None:
    capacity = min(capacity, max_frames)
  if max_bytes is not None and declared > 0:
    _check_size(video.path, min(declared, max_frames or declared), video.width, video.height,
                max_bytes)
  buffer = _FrameBuffer(capacity)
  for _, frame in video.frames():
    if max_bytes is not None:  # containers that declare no frame count
      _check_size(video.path, buffer.count + 1, frame.shape[1], frame.shape[0], max_bytes,
                  at_least=True)
    buffer.append(frame)
  return Video(buffer.result(), video.timestamps, video.fps, video.warnings)


def _check_size(path, frames: int, width: int, height: int, max_bytes: int, *,
                at_least: bool = False) -> None:
  need = frames * width * height * 3
  if need > max_bytes:
    raise DataError(
        f"{path}: {'at least ' if at_least else ''}{frames} frames of {width}x{height} need "
        f"{need / 2 ** 20:.0f} MiB decoded, more than the {max_bytes / 2 ** 20:.0f} MiB allowed; "
        "downscale the video (face crops are 64x64) or read part of it with max_frames")


def _timestamps(path, pts, time_base, fps, warnings) -> np.ndarray:
  """f64[T] seconds from the first frame; i / fps where the stream has no usable pts."""
  n = len(pts)
  if n and all(p is not None for p in pts) and time_base:
    t = np.asarray(pts, np.float64) * float(time_base)
    t -= t[0]
    if n == 1 or np.all(np.diff(t) > 0):
      return t
    warnings.append(f"{path}: frame timestamps are not increasing; using frame index / "
                    f"{fps:g} fps")
  elif n > 1:
    warnings.append(f"{path}: frames carry no timestamps; using frame index / {fps:g} fps")
  if fps <= 0:
    if n == 1:
      return np.zeros(1)
    raise DataError(f"{path}: neither usable timestamps nor a frame rate in the container")
  return np.arange(n, dtype=np.float64) / fps


class ImageSequence:
  """Per-frame image files (PURE's PNGs) read in passes, as `VideoFile`: only the images a
  pass wants are read. `num_frames`, `timestamps` and `fps` are known from the start."""

  def __init__(self, paths: Sequence[PathLike], timestamps: np.ndarray | None = None, *,
               fps: float | None = None):
    """Checks the timestamps (DataError: no paths, timestamps of the wrong length, non-finite
    or not increasing); see `read_image_sequence` for the arguments."""
    paths = [pathlib.Path(p) for p in paths]
    if not paths:
      raise DataError("read_image_sequence: no image files given")
    n = len(paths)
    if timestamps is None:
      if fps is None or fps <= 0:
        raise DataError(f"{paths[0].parent}: image sequence without timestamps needs fps > 0")
      t = np.arange(n, dtype=np.float64) / fps
    else:
      t = np.asarray(timestamps, np.float64)
      if t.shape != (n,):
        raise DataError(f"{paths[0].parent}: {n} images but timestamps of shape {t.shape}")
      if not np.all(np.isfinite(t)):
        raise DataError(f"{paths[0].parent}: timestamps contain non-finite values")
      t = t - t[0]
      if n > 1 and not np.all(np.diff(t) > 0):
        raise DataError(f"{paths[0].parent}: timestamps are not strictly increasing")
      if fps is None:
        fps = float(1.0 / np.median(np.diff(t))) if n > 1 else 0.0
    self.paths, self.num_frames, self.timestamps, self.fps = paths, n, t, float(fps)
    self.warnings = ()
    self._shape = None

  def frames(self, wanted=None, *, last: bool = False):
    """One pass: yields (i, uint8[H, W, 3] RGB) for the images with `wanted(i)` (None: all)
    and, with `last`, the last one. DataError (naming the file): an unreadable image, or one
    whose size differs from the others'."""
    n = self.num_frames
    for i, p in enumerate(self.paths):
      if wanted is None or wanted(i) or (last and i == n - 1):
        image = cv2.imread(str(p), cv2.IMREAD_COLOR) if p.is_file() else None
        if image is None:
          raise DataError(f"{p}: missing or not a readable image")
        if self._shape is None:
          self._shape = image.shape
        elif image.shape != self._shape:
          raise DataError(f"{p}: image size {image.shape[:2]} differs from the first frame's "
                          f"{self._shape[:2]}")
        yield i, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image_sequence(paths: Sequence[PathLike], timestamps: np.ndarray | None = None, *,
                        fps: float | None = None) -> Video:
  """Reads per-frame images (e.g. PURE's PNGs) into a `Video`.

  Args:
    paths: the image files in frame order.
    timestamps: f[T] frame times in any unit of seconds (shifted to start at 0), or None to
      use `i / fps`.
    fps: the frame rate when `timestamps` is None (required then); with timestamps, None
      derives it as 1 / median interval.

  Raises:
    DataError: no paths, an unreadable image, images of different sizes, timestamps of the
      wrong length, non-finite or not increasing.
  """
  sequence = ImageSequence(paths, timestamps, fps=fps)
  frames = None
  for i, image in sequence.frames():
    if frames is None:
      frames = np.empty((sequence.num_frames,) + image.shape, np.uint8)
    frames[i] = image
  return Video(frames, sequence.timestamps, sequence.fps)


_CONTAINER_PIX_FMT = {"ffv1": "bgr0", "rawvideo": "bgr24", "mjpeg": "yuvj444p",
                      "h264": "yuv420p", "libx264": "yuv420p", "mpeg4": "yuv420p"}


def write_video(path: PathLike, frames: np.ndarray, fps: float, *, codec: str = "ffv1",
                quality: int | None = None, pix_fmt: str | None = None,
                timestamps: np.ndarray | None = None) -> None:
  """Writes uint8[T, H, W, 3] RGB frames to a video file with PyAV.

  Args:
    path: output file; the container follows the extension (.avi, .mkv, .mp4, ...).
    frames: uint8[T, H, W, 3] RGB (or uint8[T, H, W] grey).
    fps: nominal frame rate.
    codec: "ffv1" (lossless, exact RGB), "rawvideo" (uncompressed BGR, as UBFC's AVIs),
      "mjpeg" (lossy, per-frame JPEG) or "h264" (lossy; needs even H and W with yuv420p).
    quality: codec quality: mjpeg qscale 2 (best) .. 31, h264 CRF 0 .. 51; None: default.
    pix_fmt: stored pixel format (e.g. "gray", "yuv420p10le"); None: the codec's default here.
    timestamps: f[T] seconds, strictly increasing, for variable-frame-rate files; None:
      frame i at i / fps.
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or (
      frames.ndim == 4 and frames.shape[-1] != 3):
    raise ValueError(f"frames must be uint8[T, H, W, 3] or [T, H, W], got {frames.dtype} "
                     f"{frames.shape}")
  if frames.ndim == 3:
    frames = np.repeat(frames[..., None], 3, axis=-1)
  _, height, width, _ = frames.shape
  rate = fractions.Fraction(fps).limit_denominator(1001)
  with av.open(str(path), mode="w") as container:
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = pix_fmt or _CONTAINER_PIX_FMT.get(codec, "yuv420p")
    options = {}
    if quality is not None:
      if codec == "mjpeg":
        stream.codec_context.flags |= av.codec.context.Flags.qscale
        stream.codec_context.global_quality = int(quality) * 118  # FF_QP2LAMBDA
        options["qmin"] = options["qmax"] = str(int(quality))
      elif codec in ("h264", "libx264"):
        options["crf"] = str(int(quality))
    stream.options = options
    if timestamps is not None:
      t = np.asarray(timestamps, np.float64)
      if t.shape != (frames.shape[0],) or not np.all(np.diff(t) > 0):
        raise ValueError("timestamps must be f[T], strictly increasing")
      stream.codec_context.time_base = fractions.Fraction(1, 1000)
      pts = np.round((t - t[0]) * 1000).astype(np.int64)
    for i, image in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
      if timestamps is not None:
        frame.pts = int(pts[i])
        frame.time_base = fractions.Fraction(1, 1000)
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
