r"""Live heart rate from a camera, a video file or a network stream.

  python -m metarppg_jax.stream 0 --method pos                       # camera 0
  python -m metarppg_jax.stream face.mp4 --workdir DIR --realtime     # a file, paced
  python -m metarppg_jax.stream rtsp://host/cam --method chrom --out hr.jsonl
  python -m metarppg_jax.stream face.mp4 --method pos --video_out annotated.mp4

Frames are read on their own thread (`data.live_source`) into a bounded queue; a live source
(camera, URL, `--realtime` file) never waits for the processing: when the queue is full the
frame is dropped and counted. Each frame goes through the causal face tracker
(`data.face_track`: the project's Haar detection every k frames, box smoothing, sub-pixel crop)
and is put on a uniform time grid (the nearest frame to each k / fps, as
`preprocess.resample_video`; dropped frames are bridged by their neighbours).

Methods:
- meta_rppg (default): the model of --workdir / --checkpoint (restored as `predict` does), or
  the packaged pretrained model (`metarppg_jax.pretrained`) when neither is given. The crops
  are cut into the model's windows (`preprocess.WINDOW` frames at `data.fps`), skin-masked
  (`faces.skin_mask` over the last `--window_s` of crops) and normalised
  (`input_pipeline.normalize` with `data.normalization`), so the model sees what it was
  trained on. It adapts once, without labels (`inference.adapt`), on the first `meta.fewshots`
  windows, then predicts every window (`inference.predict`), the adaptation windows included; each
  window's expected level (`heart_rate.levels_to_signal`) has its mean removed, since the
  levels are scaled per window and the steps between windows would otherwise show in the
  spectrum. The model runs on a worker thread while the next frames are tracked; a reading
  covers the windows that ended at least one window (2 s) before it, waiting for their model
  calls if they are not done (a live source then drops frames, and counts them).
- any classical method of `baselines.METHODS` (pos, chrom, green, ica, ...): the masked mean
  colour of the crops (`preprocess.masked_rgb_means`) -> `baselines.rppg_signal`.

Every `--stride_s` (1 s) of video a reading is printed as one JSON line on stdout (and
appended to --out): `t` (s of video, the newest frame), `hr` (bpm from `heart_rate.hr_estimate`
over the last `--window_s` s of signal; null with a `reason` while warming up or adapting, when
the face is not in view, or when `quality` < `--min_quality`), `quality` (0..1 from the SNR at
the spectral peak, `hrv.quality`), `snr_db`, `hrv` (SDNN, RMSSD, pNN50 and a respiration rate
from the beats found in the last `--hrv_window_s` s of signal, `hrv.find_beats`; null unless
that span's quality is at least `--hrv_min_quality`), `latency_s` (from the newest frame's
arrival to the reading) and `adapted` (meta_rppg; null for classical methods). The last line
is a summary: frames read, processed, dropped (and dropped after adaptation), processing fps,
median latency and why the stream ended. Ctrl-C (SIGINT) or SIGTERM ends the stream with the
summary and exit status 0; a source that cannot be opened prints `error: ...` (exit 1); a
stream that fails or stalls mid-way prints the message and the summary (exit 1).

`--video_out FILE.mp4`: the processed frames with the face box, the last reading and a
scrolling trace of the signal drawn in (H.264, PyAV).
"""

import argparse
import collections
import concurrent.futures
import dataclasses
import fractions
import json
import math
import pathlib
import signal as signal_lib
import sys
import threading
import time
from typing import Any, Callable, TextIO

import av
import cv2
import numpy as np

from metarppg_jax import baselines
from metarppg_jax import heart_rate
from metarppg_jax import hrv
from metarppg_jax.data import face_track
from metarppg_jax.data import faces
from metarppg_jax.data import input_pipeline
from metarppg_jax.data import live_source
from metarppg_jax.data import preprocess
from metarppg_jax.errors import CheckpointError, ConfigError, DataError, MetaRPPGError

META = "meta_rppg"
MIN_FACE_FRACTION = 0.8     # of a window's frames; fewer: no reading
ENLARGE = 1.6               # crop side over the detected face's side (faces.face_crops')
TRACE_S = 5.0               # seconds of signal drawn in --video_out
LAG_S = 20.0                # buffer slack beyond the HRV span (a model call that runs late)
MASK_REFERENCE_STEP = 10    # every k-th past crop joins the new ones in the skin colour model


@dataclasses.dataclass(frozen=True)
class Options:
  """What the stream does (the CLI's flags)."""
  method: str = META
  window_s: float = 10.0
  stride_s: float = 1.0
  hrv_window_s: float = 30.0
  min_quality: float = 0.25   # SNR -2.5 dB: passed by 5 % of pure-noise windows
  hrv_min_quality: float = 0.7
  realtime: bool = False
  seconds: float | None = None
  queue_s: float = 2.0
  timeout_s: float = 5.0
  stall_s: float = 10.0
  detect_every: int = 10


# --------------------------------------------------------------------------------------------
# The uniform time grid and the buffer of tracked frames on it.
# --------------------------------------------------------------------------------------------

class Grid:
  """Incremental nearest-frame resampling onto t_k = k / fps (ties to the earlier frame, as
  `preprocess.resample_video`). `push(t, item)` returns the items of the grid points that
  are now decided; `flush()` those up to the last frame."""

  def __init__(self, fps: float):
    self.fps = fps
    self.k = 0
    self._prev: tuple[float, Any] | None = None

  def push(self, t: float, item) -> list[Any]:
    out = []
    if self._prev is not None:
      mid = (self._prev[0] + t) / 2
      while self.k / self.fps <= mid + 1e-9:
        out.append(self._prev[1])
        self.k += 1
    self._prev = (t, item)
    return out

  def flush(self) -> list[Any]:
    out = []
    if self._prev is not None:
      while self.k / self.fps <= self._prev[0] + 1e-9:
        out.append(self._prev[1])
        self.k += 1
    return out


class Buffer:
  """The last `capacity` grid samples: crops uint8[n, S, S, 3], masks uint8[n, S, S] (skin),
  rgb f32[n, 3] (masked mean colour), face bool[n], arrival f64[n] (the source frame's
  arrival). `count` samples were appended in all; sample i (0-based since the stream's start)
  is at time i / fps.

  Masks are made in batches by `mask_new` with `faces.skin_mask`, whose colour model is learnt
  from the crops it is given: the new crops and every `MASK_REFERENCE_STEP`-th crop of the
  last `reference` samples, so the skin colour follows the last seconds of the stream without
  recomputing every held mask at each reading.
  """

  def __init__(self, capacity: int, size: int, reference: int):
    self.capacity, self.reference = capacity, reference
    cap2 = 2 * capacity
    self.crops = np.zeros((cap2, size, size, 3), np.uint8)
    self.masks = np.zeros((cap2, size, size), np.uint8)
    self.rgb = np.zeros((cap2, 3), np.float32)
    self.face = np.zeros(cap2, bool)
    self.arrival = np.zeros(cap2)
    self._n = 0          # valid samples in the arrays
    self._masked = 0     # of which the first _masked have masks
    self.count = 0

  def append(self, crop: np.ndarray, face: bool, arrival: float) -> None:
    if self._n == self.crops.shape[0]:       # keep the newest `capacity`, amortised
      keep = slice(self._n - self.capacity, self._n)
      for a in (self.crops, self.masks, self.rgb, self.face, self.arrival):
        a[:self.capacity] = a[keep]
      self._masked -= self._n - self.capacity
      self._n = self.capacity
    self.crops[self._n], self.face[self._n], self.arrival[self._n] = crop, face, arrival
    self._n += 1
    self.count += 1

  def mask_new(self) -> None:
    """Skin masks and masked mean colours of the samples that have none yet."""
    if self._masked >= self._n:
      return
    new = slice(self._masked, self._n)
    ref = np.arange(max(self._masked - self.reference, 0), self._masked, MASK_REFERENCE_STEP)
    crops = np.concatenate([self.crops[ref], self.crops[new]])
    masks = faces.skin_mask(crops, ellipse=faces.face_ellipse(ENLARGE))[len(ref):]
    self.masks[new] = masks
    self.rgb[new] = preprocess.masked_rgb_means(self.crops[new], masks)
    self._masked = self._n

  def last(self, n: int) -> slice:
    """The newest min(n, held) samples as a slice of the arrays."""
    n = min(n, self._n, self.capacity)
    return slice(self._n - n, self._n)

  def span(self, start: int, stop: int) -> slice:
    """Samples start..stop-1 (stream indices; all must still be held)."""
    first = self.count - self._n
    if start < first or stop > self.count:
      raise IndexError(f"samples {start}..{stop} not held ({first}..{self.count})")
    return slice(start - first, stop - first)


# --------------------------------------------------------------------------------------------
# Signal extractors.
# --------------------------------------------------------------------------------------------

class Classical:
  """A method of `baselines.METHODS` on the masked mean colour of the crops."""

  adapted = None

  def __init__(self, method: str, fps: float):
    if method not in baselines.METHODS:
      raise ConfigError(f"--method {method!r}: not one of {[META] + sorted(baselines.METHODS)}")
    self.method, self.fps = method, fps

  def on_sample(self, buf: Buffer) -> None:
    pass

  def finish(self) -> None:
    pass

  def signal(self, buf: Buffer, n: int, n_max: int) -> tuple[np.ndarray, slice] | str:
    """(rPPG f32[m] of the newest min(held, n_max) >= n samples, their slice of `buf`), or
    why there is none yet."""
    if buf.count < n:
      return f"warming up ({buf.count / self.fps:.0f} of {n / self.fps:.0f} s)"
    buf.mask_new()
    s = buf.last(n_max)
    return baselines.rppg_signal(self.method, buf.rgb[s], self.fps), s


class MetaRPPG:
  """Meta-rPPG on the stream's windows (module docstring): adapt once, predict every window."""

  def __init__(self, config, state, *, max_frames: int):
    from metarppg_jax import compile_options  # pylint: disable=g-import-not-at-top
    from metarppg_jax import inference  # pylint: disable=g-import-not-at-top
    rule = config.meta.lstm_state_rule
    self.fps = float(config.data.fps)
    self.chunk = preprocess.WINDOW
    self.fewshots = int(config.meta.fewshots)
    self.do_adapt = config.method != "no_adaptation"
    self.normalization = config.data.normalization
    self.adapted = False
    self._params, self._stats = state.params, state.batch_stats
    self._theta, self._theta_stats = state.params["theta"], state.batch_stats["theta"]
    h, _ = state.lstm_state
    # rule "given" holds one state a sequence: predict that many copies, average them.
    self._copies = int(h.shape[1]) if rule == "given" else 1
    lstm0 = inference.initial_lstm_state(rule, state.lstm_state, self._copies)
    head = config.model.ordinal_head
    self._adapt = compile_options.jit(
        lambda p, bs, proto, sup: inference.adapt(config, p, bs, proto, sup))
    self._predict = compile_options.jit(lambda theta, stats, phi, x: inference.predict(
        {"theta": theta, "phi": phi}, {"theta": stats}, x, lstm0, head=head).prob)
    self._prototype = state.prototype
    self._support: list[np.ndarray] = []
    self._consumed = 0                        # grid samples handed to the model
    self.signal_start = 0                     # grid index of self.values[0]
    self.values: list[np.ndarray] = []        # per window f32[chunk]
    self._keep = (max_frames + self.chunk - 1) // self.chunk + 1
    self._lock = threading.Lock()             # values are appended by the worker thread
    self._pool = concurrent.futures.ThreadPoolExecutor(1)
    self._pending: collections.deque = collections.deque()   # (window index, future)

  def compile(self) -> float:
    """Compiles adapt and predict before the stream starts; returns the seconds it took."""
    import jax  # pylint: disable=g-import-not-at-top
    start = time.monotonic()
    x = jax.ShapeDtypeStruct((self._copies, self.chunk, 64, 64, 3), np.float32)
    self._predict.lower(self._theta, self._theta_stats, self._params["phi"], x).compile()
    if self.do_adapt:
      sup = jax.ShapeDtypeStruct((self.fewshots, self.chunk, 64, 64, 3), np.float32)
      self._adapt.lower(self._params, self._stats, self._prototype, sup).compile()
    return time.monotonic() - start

  def _run(self, index: int, fn: Callable[[], Any]) -> None:
    """Runs a model call for window `index` on the worker thread (in submission order)."""
    self._pending.append((index, self._pool.submit(fn)))

  def _collect(self, before: int = 0) -> None:
    """Takes in the finished model calls, waiting for those of windows < `before`."""
    while self._pending and (self._pending[0][0] < before or self._pending[0][1].done()):
      self._pending.popleft()[1].result()    # re-raises a failure of the model call

  def _adapt_now(self, support: np.ndarray) -> None:
    theta, stats, _ = self._adapt(self._params, self._stats, self._prototype, support)
    self._theta, self._theta_stats = theta, stats
    self.adapted = True

  def _predict_now(self, x: np.ndarray) -> None:
    xs = np.broadcast_to(x[None], (self._copies,) + x.shape)
    prob = np.asarray(self._predict(self._theta, self._theta_stats, self._params["phi"], xs))
    level = heart_rate.levels_to_signal(prob).mean(axis=0)     # f32[chunk]
    with self._lock:
      self.values.append(level - level.mean())
      if len(self.values) > self._keep:
        del self.values[0]
        self.signal_start += self.chunk

  def on_sample(self, buf: Buffer) -> None:
    self._collect()
    if buf.count - self._consumed < self.chunk:
      return
    stop = self._consumed + self.chunk
    buf.mask_new()
    s = buf.span(self._consumed, stop)
    x = np.asarray(input_pipeline.normalize(buf.crops[s][None], buf.masks[s][None],
                                            self.normalization))[0]
    self._consumed = stop
    if self.do_adapt and len(self._support) < self.fewshots:
      self._support.append(x)
      if len(self._support) == self.fewshots:
        support = np.stack(self._support)
        self._run(0, lambda: self._adapt_now(support))
        for i, w in enumerate(self._support):  # the adaptation windows are predicted too
          self._run(i, lambda w=w: self._predict_now(w))
      return
    self._run(stop // self.chunk - 1, lambda: self._predict_now(x))

  def finish(self) -> None:
    """Waits for the model calls in flight."""
    while self._pending:
      self._pending.popleft()[1].result()
    self._pool.shutdown(wait=True)

  def signal(self, buf: Buffer, n: int, n_max: int) -> tuple[np.ndarray, slice] | str:
    """As `Classical.signal`, over the windows that ended at least one window before the
    newest sample (waiting for their model calls): the model predicts the newest window on
    its thread while the next frames are tracked."""
    self._collect(before=self._consumed // self.chunk - 1)
    if self.do_adapt and not self.adapted:
      need = self.fewshots * self.chunk
      return (f"adapting (collecting {min(buf.count, need) / self.fps:.0f} of "
              f"{need / self.fps:.0f} s)" if buf.count < need else "adapting")
    with self._lock:
      values, start = list(self.values), self.signal_start
    have = len(values) * self.chunk
    if have < n:
      return f"warming up ({have / self.fps:.0f} of {n / self.fps:.0f} s of signal)"
    m = min(have, n_max)
    stop = start + have
    try:
      held = buf.span(stop - m, stop)
    except IndexError:
      return f"the model is {(buf.count - stop) / self.fps:.0f} s behind the stream"
    return np.concatenate(values[-(m // self.chunk + 1):])[-m:], held


# --------------------------------------------------------------------------------------------
# Readings.
# --------------------------------------------------------------------------------------------

def reading(extractor, buf: Buffer, opts: Options, fps: float) -> dict[str, Any]:
  """The reading at the newest grid sample (module docstring), without latency."""
  n = int(round(opts.window_s * fps))
  n_hrv = max(int(round(opts.hrv_window_s * fps)), n)
  out = {"type": "reading", "t": round((buf.count - 1) / fps, 3), "hr": None, "reason": None,
         "quality": None, "snr_db": None, "hrv": None, "adapted": extractor.adapted}
  s_new = buf.last(1)
  if not buf.face[s_new].all():
    out["reason"] = "no face in view"
    return out
  try:
    got = extractor.signal(buf, n, n_hrv)
  except MetaRPPGError as e:
    got = f"no signal ({e})"
  if isinstance(got, str):
    out["reason"] = got
    return out
  sig, s = got
  face = buf.face[s][-n:].mean()
  if face < MIN_FACE_FRACTION:
    out["reason"] = f"face seen in only {face:.0%} of the last {opts.window_s:g} s"
    return out
  try:
    hr, snr_db, q = hrv.assess(sig[-n:], fps)
  except MetaRPPGError as e:
    out["reason"] = f"no signal ({e})"
    return out
  out["quality"] = round(q, 3)
  out["snr_db"] = round(snr_db, 2) if math.isfinite(snr_db) else None
  if not math.isfinite(hr) or q < opts.min_quality:
    out["reason"] = f"signal quality {q:.2f} below {opts.min_quality:g}"
    return out
  out["hr"] = round(hr, 2)
  if buf.face[s].mean() >= MIN_FACE_FRACTION:
    buf.mask_new()
    out["hrv"] = _hrv(sig, buf.rgb[s][:, 1], fps, opts)
  return out


def _hrv(sig: np.ndarray, green: np.ndarray, fps: float, opts: Options) -> dict | None:
  """HRV of the signal f[n] (`hrv`), oriented by the masked green trace f[n] of its frames."""
  hr, _, q = hrv.assess(sig, fps)
  if q < opts.hrv_min_quality:
    return None
  beats = hrv.find_beats(hrv.orient(sig, green, fps), fps, hr)
  stats = hrv.hrv_time(beats)
  if stats is None:
    return None
  resp = hrv.respiration_rate(beats)
  return {**{k: round(v, 2) for k, v in stats.items()},
          "resp_rate_bpm": round(resp, 2) if math.isfinite(resp) else None,
          "beats": int(beats.size), "span_s": round(sig.size / fps, 2)}


# --------------------------------------------------------------------------------------------
# The annotated video.
# --------------------------------------------------------------------------------------------

class Overlay:
  """Writes frames with the face box, the last reading and the signal trace to an MP4."""

  def __init__(self, path: str, fps: float, width: int, height: int):
    self.path = path
    self.width, self.height = width - width % 2, height - height % 2   # yuv420p: even sides
    try:
      self._container = av.open(path, mode="w")
    except (av.FFmpegError, OSError) as e:
      raise ConfigError(f"--video_out {path}: cannot be written ({e})") from None
    self._stream = self._container.add_stream(
        "h264", rate=fractions.Fraction(fps).limit_denominator(1001))
    self._stream.width, self._stream.height = self.width, self.height
    self._stream.pix_fmt = "yuv420p"
    self._stream.options = {"preset": "veryfast"}
    self._stream.codec_context.time_base = fractions.Fraction(1, 1000)
    self._last_pts = -1
    self.frames = 0

  def write(self, image: np.ndarray, t: float, box: np.ndarray, text: str,
            trace: np.ndarray | None) -> None:
    img = np.ascontiguousarray(image[:self.height, :self.width])
    if np.all(np.isfinite(box)):
      x, y, w, h = (int(round(v)) for v in box)
      cv2.rectangle(img, (x, y), (x + w, y + h), (0, 255, 0), 2)
    scale = max(self.height / 480, 0.35)
    cv2.putText(img, text, (8, int(24 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale,
                (255, 255, 0), max(int(2 * scale), 1), cv2.LINE_AA)
    if trace is not None and trace.size > 1 and np.ptp(trace) > 0:
      band = max(self.height // 5, 10)
      top = self.height - band - 4
      y = top + (1 - (trace - trace.min()) / np.ptp(trace)) * band
      x = np.linspace(4, self.width - 5, trace.size)
      pts = np.stack([x, y], axis=1).round().astype(np.int32)
      cv2.polylines(img, [pts], False, (255, 64, 64), 1, cv2.LINE_AA)
    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
    pts = max(int(round(t * 1000)), self._last_pts + 1)
    frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
    self._last_pts = pts
    try:
      for packet in self._stream.encode(frame):
        self._container.mux(packet)
    except (av.FFmpegError, OSError) as e:
      raise DataError(f"--video_out {self.path}: write failed ({e})") from None
    self.frames += 1

  def close(self) -> None:
    try:
      for packet in self._stream.encode():
        self._container.mux(packet)
    except (av.FFmpegError, OSError) as e:
      raise DataError(f"--video_out {self.path}: write failed ({e})") from None
    finally:
      self._container.close()


# --------------------------------------------------------------------------------------------
# The model and the loop.
# --------------------------------------------------------------------------------------------

def load_model(workdir: str | None, checkpoint: str | None, config_file: str | None):
  """(config, state): the model of --workdir / --checkpoint / --config, or without them the
  packaged pretrained model (`metarppg_jax.pretrained`), as `predict.model` finds them."""
  classical = f"or choose a classical --method ({', '.join(sorted(baselines.METHODS))})"
  from metarppg_jax import predict  # pylint: disable=g-import-not-at-top
  try:
    config, restore = predict.model(workdir=workdir, checkpoint=checkpoint,
                                    config_file=config_file)
    state, _ = restore()
  except CheckpointError as e:
    if workdir or checkpoint:
      raise
    raise CheckpointError(f"{e}; {classical}") from None
  return config, state


class _Stop(Exception):
  """SIGTERM, turned into the same clean end as Ctrl-C."""


def _on_term(*_) -> None:
  raise _Stop()


def run(source_spec: "str | live_source.Source", opts: Options, *, model=None,
        out_file: str | None = None, video_out: str | None = None,
        emit: Callable[[str], None] | None = None, slow_s: float = 0.0) -> dict[str, Any]:
  """Streams SOURCE to readings; returns the summary (also emitted as the last line).

  Args:
    source_spec: a camera index, a video file or a URL, or an opened `live_source.Source`.
    opts: Options.
    model: (config, state) for meta_rppg (`load_model`); unused by classical methods.
    out_file: a JSONL file the lines are appended to as well.
    video_out: an MP4 path for the annotated stream.
    emit: where each JSON line goes (default: stdout).
    slow_s: extra seconds spent on every frame (tests: a deliberately slow consumer).

  Raises:
    DataError / ConfigError: the source cannot be opened, a bad option (before any line).
  """
  emit = emit or (lambda line: print(line, flush=True))
  _check_options(opts, out_file, video_out)
  sink = _open_out(out_file)
  put = _line_writer(emit, sink)
  summary = _new_summary(source_spec, opts)
  extractor = None
  if opts.method == META:       # compiled before the source is opened: a camera or a
    extractor = _meta_extractor(model, opts)   # network stream would otherwise wait (or time out)
    summary["compile_s"] = round(extractor.compile(), 2)
  if isinstance(source_spec, live_source.Source):
    source = source_spec
  else:
    source = live_source.open_source(source_spec, timeout_s=opts.timeout_s)
  status = _stream(source, extractor, opts, summary, put, video_out, slow_s)
  put(summary)
  if sink is not None:
    sink.close()
  summary["status"] = status
  return summary


# --------------------------------------------------------------------------------------------
# `run`'s steps: options and output, the stream's lifetime, one frame, one reading, summary.
# --------------------------------------------------------------------------------------------

def _check_options(opts: Options, out_file: str | None, video_out: str | None) -> None:
  """Raises ConfigError for a bad option, before anything is opened or compiled."""
  for flag, path in (("--out", out_file), ("--video_out", video_out)):
    if path and not pathlib.Path(path).absolute().parent.is_dir():
      raise ConfigError(f"{flag} {path}: its directory does not exist")
  for name in ("window_s", "stride_s", "hrv_window_s", "queue_s", "timeout_s", "stall_s"):
    if not getattr(opts, name) > 0:
      raise ConfigError(f"--{name}={getattr(opts, name)}: must be > 0")
  if opts.seconds is not None and not opts.seconds > 0:
    raise ConfigError(f"--seconds={opts.seconds}: must be > 0")
  if opts.detect_every < 1:
    raise ConfigError(f"--detect_every={opts.detect_every}: must be >= 1")
  for name in ("min_quality", "hrv_min_quality"):
    if not 0 <= getattr(opts, name) <= 1:
      raise ConfigError(f"--{name}={getattr(opts, name)}: must be within 0..1")


def _open_out(out_file: str | None) -> TextIO | None:
  """The --out file, opened for appending (None without one)."""
  try:
    return open(out_file, "a", encoding="utf-8") if out_file else None
  except OSError as e:
    raise ConfigError(f"--out {out_file}: cannot be written ({e})") from None


def _line_writer(emit: Callable[[str], None], sink: TextIO | None) -> Callable[[dict], None]:
  """put(obj): obj as one JSON line to `emit` and to `sink`, flushed at once so that a
  program following --out sees each reading when it is made."""

  def put(obj: dict) -> None:
    line = json.dumps(obj)
    emit(line)
    if sink is not None:
      sink.write(line + "\n")
      sink.flush()

  return put


def _new_summary(source_spec: "str | live_source.Source", opts: Options) -> dict[str, Any]:
  """The summary line's fields in their order, filled in as the stream runs."""
  return {"type": "summary", "source": str(getattr(source_spec, "name", source_spec)),
          "method": opts.method, "frames_read": 0, "frames_processed": 0, "frames_dropped": 0,
          "dropped_after_adaptation": 0, "readings": 0, "readings_with_hr": 0,
          "processing_fps": None, "median_latency_s": None, "end": None}


def _meta_extractor(model, opts: Options) -> MetaRPPG:
  """MetaRPPG for model = (config, state), keeping enough windows for the longest span."""
  config, state = model
  frames = int(math.ceil(max(opts.window_s, opts.hrv_window_s) * float(config.data.fps)))
  return MetaRPPG(config, state, max_frames=frames)


@dataclasses.dataclass
class _Loop:
  """What the reading loop carries from frame to frame.

  The grid runs at `extractor.fps`; `buf` holds its samples (crops uint8[n, 64, 64, 3]).
  `status` is the exit status so far; `latencies` (s) of the readings made; `last_text` and
  `trace` (f32[TRACE_S * fps] or None) are what `--video_out` draws until the next reading;
  `busy` (s) is the time spent on frames, for the processing fps.
  """
  opts: Options
  source: live_source.Source
  extractor: "Classical | MetaRPPG"
  reader: live_source.FrameReader
  tracker: face_track.FaceTracker
  grid: Grid
  buf: Buffer
  summary: dict[str, Any]
  put: Callable[[dict], None]
  video_out: str | None
  slow_s: float
  next_reading: float
  next_stall_note: float
  last_frame_wall: float = 0.0
  status: int = 0
  overlay: "Overlay | None" = None
  latencies: list[float] = dataclasses.field(default_factory=list)
  last_text: str = ""
  trace: np.ndarray | None = None
  busy: float = 0.0
  dropped_at_adapt: int | None = None

  @property
  def fps(self) -> float:
    return self.extractor.fps


def _stream(source: live_source.Source, extractor: "MetaRPPG | None", opts: Options,
            summary: dict[str, Any], put: Callable[[dict], None], video_out: str | None,
            slow_s: float) -> int:
  """Reads `source` until it ends, fails, stalls or is interrupted; returns the exit status.

  Readings go to `put` and the counts to `summary`. Whatever ends the stream, the reader is
  stopped, the previous SIGTERM handler restored and the MP4 closed.
  """
  loop = None
  previous = signal_lib.getsignal(signal_lib.SIGTERM)
  try:
    loop = _setup(source, extractor, opts, summary, put, video_out, slow_s)
    if threading_main():    # signal handlers can only be set on the main thread
      signal_lib.signal(signal_lib.SIGTERM, _on_term)
    loop.last_frame_wall = time.monotonic()     # the stall clock starts with the reader
    loop.reader.start()
    _read_all(loop)
    loop.reader.stop()
    try:
      loop.extractor.finish()
    except MetaRPPGError as e:
      summary["end"] = str(e)
      loop.status = 1
    _fill_summary(loop)
  except (KeyboardInterrupt, _Stop):
    summary["end"] = "interrupted"
    if loop is not None:
      loop.reader.stop()
  finally:
    if threading_main():
      signal_lib.signal(signal_lib.SIGTERM, previous)
    if loop is None:          # no reader took the source over
      source.close()
    elif loop.overlay is not None:
      try:
        loop.overlay.close()
        summary["video_out"] = video_out
      except DataError as e:
        summary["end"], loop.status = str(e), 1
  return loop.status if loop is not None else 0


def _setup(source: live_source.Source, extractor: "MetaRPPG | None", opts: Options,
           summary: dict[str, Any], put: Callable[[dict], None], video_out: str | None,
           slow_s: float) -> _Loop:
  """The tracker, the grid, the buffer and the (not yet started) reader of `source`."""
  if extractor is None:
    extractor = Classical(opts.method, source.fps)
  fps = extractor.fps
  tracker = face_track.FaceTracker(detect_every=opts.detect_every, enlarge=ENLARGE)
  # Room for the HRV span and for a model that lags the stream by up to LAG_S.
  capacity = int(math.ceil((max(opts.window_s, opts.hrv_window_s) + LAG_S) * fps))
  buf = Buffer(capacity, 64, int(round(opts.window_s * fps)))
  reader = live_source.FrameReader(source, queue_size=int(math.ceil(opts.queue_s * source.fps)),
                                   realtime=opts.realtime, max_seconds=opts.seconds)
  return _Loop(opts=opts, source=source, extractor=extractor, reader=reader, tracker=tracker,
               grid=Grid(fps), buf=buf, summary=summary, put=put, video_out=video_out,
               slow_s=slow_s, next_reading=opts.stride_s, next_stall_note=2 * opts.stride_s)


def _read_all(loop: _Loop) -> None:
  """Takes frames until the stream ends; an interruption or a failure ends it too, with its
  reason in the summary (the cleanup is the caller's)."""
  try:
    while _take(loop):
      pass
  except (KeyboardInterrupt, _Stop):
    loop.summary["end"] = "interrupted"
    loop.status = 0
  except MetaRPPGError as e:
    loop.summary["end"] = str(e)
    loop.status = 1


def _take(loop: _Loop) -> bool:
  """Processes the reader's next frame (or its end, or a wait); False when the stream ends."""
  item = loop.reader.get(timeout=0.2)
  if item is None:
    return _no_frame(loop)
  loop.next_stall_note = 2 * loop.opts.stride_s
  t0 = time.monotonic()
  if isinstance(item, live_source.End):
    loop.summary["end"] = item.reason
    loop.status = 1 if item.error else 0
    _add_samples(loop, loop.grid.flush())      # the last frame's grid points
    return False
  loop.last_frame_wall = t0
  if loop.slow_s:
    time.sleep(loop.slow_s)
  tracked = loop.tracker.update(item.image)
  loop.summary["frames_processed"] += 1
  _add_samples(loop, loop.grid.push(item.t, (tracked.crop, tracked.face, item.arrival)))
  if loop.video_out:
    if loop.overlay is None:
      height, width = item.image.shape[:2]
      loop.overlay = Overlay(loop.video_out, loop.source.fps, width, height)
    loop.overlay.write(item.image, item.t, tracked.box, loop.last_text, loop.trace)
  loop.busy += time.monotonic() - t0
  return True


def _no_frame(loop: _Loop) -> bool:
  """No frame came within the poll: a note every stride after 2 strides of silence, and the
  end of the stream after --stall_s. False when the stream has stalled."""
  idle = time.monotonic() - loop.last_frame_wall
  if idle > loop.opts.stall_s:
    loop.summary["end"] = f"{loop.source.name}: no frame for {idle:.0f} s (stream stalled)"
    loop.status = 1
    return False
  if idle > loop.next_stall_note:       # a live source that stops delivering
    loop.put({"type": "reading", "t": round(loop.buf.count / loop.fps, 3), "hr": None,
              "reason": f"no frame for {idle:.0f} s (stream stalled?)", "quality": None,
              "snr_db": None, "hrv": None, "adapted": loop.extractor.adapted,
              "latency_s": None})
    loop.summary["readings"] += 1
    loop.next_stall_note += loop.opts.stride_s
  return True


def _add_samples(loop: _Loop, samples: list[tuple[np.ndarray, bool, float]]) -> None:
  """Appends grid samples (crop uint8[64, 64, 3], face, arrival) and makes the readings that
  fall due on them."""
  for crop, face, arrival in samples:
    loop.buf.append(crop, face, arrival)
    loop.extractor.on_sample(loop.buf)
    if loop.extractor.adapted and loop.dropped_at_adapt is None:   # dropped so far: before it
      loop.dropped_at_adapt = loop.reader.dropped
    if (loop.buf.count - 1) / loop.fps + 1e-9 >= loop.next_reading:
      _make_reading(loop)


def _make_reading(loop: _Loop) -> None:
  """Emits the reading at the newest sample, with its latency, and keeps its text and signal
  trace for the annotated video."""
  buf, fps = loop.buf, loop.fps
  r = reading(loop.extractor, buf, loop.opts, fps)
  r["latency_s"] = round(time.monotonic() - float(buf.arrival[buf.last(1)][0]), 4)
  loop.latencies.append(r["latency_s"])
  loop.summary["readings"] += 1
  loop.summary["readings_with_hr"] += r["hr"] is not None
  loop.put(r)
  loop.next_reading += loop.opts.stride_s
  loop.last_text = (f"HR {r['hr']:.0f} bpm  q {r['quality']:.2f}" if r["hr"] is not None
                    else f"HR --  ({r['reason']})")
  if loop.video_out:
    n = int(round(TRACE_S * fps))
    got = loop.extractor.signal(buf, n, n)
    loop.trace = got[0] if not isinstance(got, str) else None


def _fill_summary(loop: _Loop) -> None:
  """The summary's counts once the stream has ended (dropped_after_adaptation: meta_rppg only)."""
  summary, reader = loop.summary, loop.reader
  summary["frames_read"] = reader.read
  summary["frames_dropped"] = reader.dropped
  if loop.opts.method == META:
    summary["dropped_after_adaptation"] = (
        reader.dropped - loop.dropped_at_adapt if loop.dropped_at_adapt is not None else None)
  else:
    summary.pop("dropped_after_adaptation")
  summary["adapted"] = loop.extractor.adapted
  summary["video_s"] = round(loop.buf.count / loop.fps, 3)
  summary["processing_fps"] = (round(summary["frames_processed"] / loop.busy, 1)
                               if loop.busy > 0 else None)
  summary["median_latency_s"] = (round(float(np.median(loop.latencies)), 4) if loop.latencies
                                 else None)
  summary["source_fps"] = loop.source.fps


def threading_main() -> bool:
  return threading.current_thread() is threading.main_thread()


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m metarppg_jax.stream",
      description="Live heart rate from a camera index, a video file or a URL.")
  p.add_argument("source", help="camera index (0), video file, or URL (rtsp://, http://, ...)")
  p.add_argument("--workdir", help="training workdir (its config.json and checkpoints)")
  p.add_argument("--checkpoint", help="latest | best | a checkpoint path (with --config)")
  p.add_argument("--config", help="config file; default WORKDIR/config.json")
  p.add_argument("--method", default=META,
                 help=f"{META} (default) or a classical method: "
                      f"{', '.join(sorted(baselines.METHODS))}")
  p.add_argument("--realtime", action="store_true",
                 help="pace a file at its own frame rate, as a camera delivers it")
  p.add_argument("--seconds", type=float, help="stop after N s of video")
  p.add_argument("--out", help="also append the JSON lines to this file")
  p.add_argument("--video_out", help="write the annotated stream to this MP4")
  p.add_argument("--window_s", type=float, default=10.0, help="HR window (s)")
  p.add_argument("--stride_s", type=float, default=1.0, help="seconds between readings")
  p.add_argument("--hrv_window_s", type=float, default=30.0, help="HRV window (s)")
  p.add_argument("--min_quality", type=float, default=0.25, help="least quality for an HR")
  p.add_argument("--hrv_min_quality", type=float, default=0.7, help="least quality for HRV")
  p.add_argument("--timeout_s", type=float, default=5.0,
                 help="open / read timeout of a network source (s)")
  p.add_argument("--stall_s", type=float, default=10.0,
                 help="end the stream after this long without a frame (s)")
  p.add_argument("--queue_s", type=float, default=2.0,
                 help="frames held between reader and processing (s of video)")
  p.add_argument("--detect_every", type=int, default=10,
                 help="run the face detector every N frames (fewer: faster, slower to follow)")
  return p


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  opts = Options(method=args.method, window_s=args.window_s, stride_s=args.stride_s,
                 hrv_window_s=args.hrv_window_s, min_quality=args.min_quality,
                 hrv_min_quality=args.hrv_min_quality, realtime=args.realtime,
                 seconds=args.seconds, queue_s=args.queue_s, timeout_s=args.timeout_s,
                 stall_s=args.stall_s, detect_every=args.detect_every)
  try:
    if opts.method != META and opts.method not in baselines.METHODS:
      raise ConfigError(f"--method {opts.method!r}: not one of "
                        f"{[META] + sorted(baselines.METHODS)}")
    model = (load_model(args.workdir, args.checkpoint, args.config) if opts.method == META
             else None)
    summary = run(args.source, opts, model=model, out_file=args.out, video_out=args.video_out)
  except MetaRPPGError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 0
  if summary["status"]:
    print(f"error: {summary['end']}", file=sys.stderr)
  return summary["status"]


if __name__ == "__main__":
  sys.exit(main())
