"""Live frame sources: a camera, a video file or a network stream, read on their own thread.

`open_source(spec)` opens
- a camera by its index ("0", "1", ...) with OpenCV's `VideoCapture`;
- a URL (rtsp://, http://, udp://, ...) with PyAV (FFmpeg), with open and read timeouts so
  that an address that does not answer or a stream that stalls ends with a message;
- a file with PyAV.

`FrameReader` runs a source on a thread and hands frames to the consumer through a bounded
queue. A live source (camera, URL, or a file paced with `realtime=True`, which delivers each
frame at its own time as a camera would) cannot wait for the consumer: when the queue is full
the new frame is dropped and counted. An unpaced file waits instead (nothing is lost by reading
it later). The reader ends with an `End` item saying why (end of stream, duration reached, read
error or stall).
"""

import dataclasses
import fractions
import pathlib
import queue
import threading
import time
from typing import NamedTuple

import av
import cv2
import numpy as np

from metarppg_jax.errors import DataError

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://",
               "srt://", "rtp://")


class Frame(NamedTuple):
  """One frame: image uint8[H, W, 3] RGB; t: s of video from the first frame; arrival:
  `time.monotonic()` when it was read (for a paced file, when it was due); index: its number
  among the frames read (dropped ones included)."""
  image: np.ndarray
  t: float
  arrival: float
  index: int


class End(NamedTuple):
  """The reader is done: reason is "end of stream", "duration reached", "stopped" or an error
  message; error: True for a failure (read error, stall)."""
  reason: str
  error: bool


@dataclasses.dataclass
class Source:
  """An opened source. kind: "camera" | "url" | "file"; fps: nominal frame rate."""
  name: str
  kind: str
  fps: float
  width: int
  height: int
  _read: object        # () -> (uint8[H, W, 3] RGB, t seconds) or None at the end
  _close: object

  def read(self):
    return self._read()

  def close(self) -> None:
    self._close()

  @property
  def live(self) -> bool:
    return self.kind != "file"


def _open_camera(index: int, timeout_s: float) -> Source:
  cap = cv2.VideoCapture(index)
  if not cap.isOpened():
    cap.release()
    raise DataError(f"camera {index}: cannot be opened (no such device, no permission, or in "
                    "use by another program)")
  cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_s * 1000)
  fps = cap.get(cv2.CAP_PROP_FPS)
  fps = float(fps) if np.isfinite(fps) and 1 <= fps <= 240 else 30.0
  start = time.monotonic()

  def read():
    ok, bgr = cap.read()
    if not ok:
      return None
    return np.ascontiguousarray(bgr[..., ::-1]), time.monotonic() - start

  return Source(f"camera {index}", "camera", fps, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), read, cap.release)


def _open_av(spec: str, kind: str, timeout_s: float) -> Source:
  try:
    container = av.open(spec, timeout=(timeout_s, timeout_s) if kind == "url" else None)
  except (av.FFmpegError, OSError) as e:
    what = "stream does not answer or cannot be opened" if kind == "url" else "not a readable video"
    raise DataError(f"{spec}: {what} ({type(e).__name__}: {e})") from None
  if not container.streams.video:
    container.close()
    raise DataError(f"{spec}: has no video stream")
  stream = container.streams.video[0]
  stream.thread_type = "AUTO"
  rate = stream.average_rate or stream.guessed_rate or fractions.Fraction(30)
  frames = container.decode(stream)
  first = []

  def read():
    try:
      frame = next(frames)
    except StopIteration:
      return None
    except av.FFmpegError as e:
      raise DataError(f"{spec}: read failed ({type(e).__name__}: {e})") from None
    t = frame.time
    if t is None:
      t = frame.index / float(rate)
    if not first:
      first.append(t)
    return frame.to_ndarray(format="rgb24"), float(t - first[0])

  return Source(spec, kind, float(rate), stream.codec_context.width,
                stream.codec_context.height, read, container.close)


def open_source(spec: str, *, timeout_s: float = 5.0) -> Source:
  """Opens SOURCE: a camera index, a URL or a video file (module docstring).

  Raises:
    DataError naming the source: a camera that cannot be opened, a URL that does not answer
      within `timeout_s`, a missing or unreadable file.
  """
  spec = str(spec)
  if spec.strip().isdigit():
    return _open_camera(int(spec), timeout_s)
  if "://" in spec:
    if not spec.lower().startswith(URL_SCHEMES):
      raise DataError(f"{spec}: unsupported URL scheme (use one of "
                      f"{', '.join(s[:-3] for s in URL_SCHEMES)})")
    return _open_av(spec, "url", timeout_s)
  path = pathlib.Path(spec)
  if not path.is_file():
    raise DataError(f"{spec}: file not found (give a camera index, a video file or a URL)")
  if path.stat().st_size == 0:
    raise DataError(f"{spec}: file is empty (0 bytes)")
  return _open_av(spec, "file", timeout_s)


class FrameReader:
  """Reads a `Source` on a daemon thread into a bounded queue (module docstring).

  Counters (read while it runs): `read` frames read, `dropped` frames dropped because the
  queue was full. `get(timeout)` returns a Frame, an End, or None when nothing came in time.
  """

  def __init__(self, source: Source, *, queue_size: int, realtime: bool = False,
               max_seconds: float | None = None):
    self.source = source
    self.paced = realtime and not source.live
    self.drops = source.live or realtime
    self.max_seconds = max_seconds
    self.read = 0
    self.dropped = 0
    self._queue: queue.Queue = queue.Queue(maxsize=max(int(queue_size), 1))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="frame-reader", daemon=True)

  def start(self) -> "FrameReader":
    self._thread.start()
    return self

  def stop(self) -> None:
    self._stop.set()

  def get(self, timeout: float):
    try:
      return self._queue.get(timeout=timeout)
    except queue.Empty:
      return None

  def _put(self, item) -> None:
    if isinstance(item, End) or not self.drops:
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          return
        except queue.Full:
          if isinstance(item, End) and self.drops:   # make room for the end marker
            try:
              self._queue.get_nowait()
              self.dropped += 1
            except queue.Empty:
              pass
      return
    try:
      self._queue.put_nowait(item)
    except queue.Full:
      self.dropped += 1

  def _run(self) -> None:
    start = time.monotonic()
    end = End("stopped", False)
    try:
      while not self._stop.is_set():
        got = self.source.read()
        if got is None:
          end = End("end of stream", False)
          break
        image, t = got
        if self.max_seconds is not None and t >= self.max_seconds:
          end = End("duration reached", False)
          break
        if self.paced:
          delay = start + t - time.monotonic()
          if delay > 0:
            self._stop.wait(delay)
        frame = Frame(image, t, time.monotonic(), self.read)
        self.read += 1
        self._put(frame)
      if self._stop.is_set():
        end = End("stopped", False)
    except DataError as e:
      end = End(str(e), True)
    except Exception as e:  # pylint: disable=broad-except
      end = End(f"{self.source.name}: read failed ({type(e).__name__}: {e})", True)
    finally:
      try:
        self.source.close()
      except Exception:  # pylint: disable=broad-except
        pass
    self._put(end)
