"""The input pipeline: built videos -> windows -> meta-learning tasks -> sharded device batches.

Training (`train_dataset` / `host_iterator` / `train_iterator`): a task is one video and
`windows_per_task`
(K = 3) consecutive windows of `window` frames from it: the adaptation window and the two
learning windows of one outer step. Task start frames are `preprocess.window_starts(T,
K * window, stride)` per video. The (video, start) index is shuffled with grain by seed (a new
permutation each epoch), cut per process (every `process_count`-th task from
`process_index`: disjoint across processes), gathered and batched into N =
`tasks_per_batch / process_count` tasks per process (host batches, HOST_KEYS):

  {"frames":  uint8[N, K, T, 64, 64, 3]
   "mask":    uint8[N, K, T, 64, 64]
   "targets": i32[N, K, T]             preprocess.quantize_ppg(ppg) levels 0..39
   "valid":   bool[N, K]               the window has a defined target (PPG, not flat)
   "ppg":     f32[N, K, T]}

and moved to the devices as they are (a third of the bytes of float32 frames), where
`normalize` (the jitted `preprocess.normalize_clip`) turns frames and masks into
"x": f32[N, K, T, 64, 64, 3] (`device_batch`; TRAIN_KEYS): the host's cores only gather.

Iterators expose `get_state()` / `set_state(state)` (grain's, exact resume).
`shard_batch` puts a process-local batch on a mesh's "data" axis; `train_iterator` does it
with a small prefetch to device, keeping the resume state exact.

Evaluation (`eval_videos`): the same window loader, consecutive windows from the start of
each video (one video at a time).
"""

from __future__ import annotations

import collections
import functools
import os
import threading
from typing import Any, Iterator, Optional

import grain
import jax
import jax.numpy as jnp
import numpy as np

from metarppg_jax import compile_options
from metarppg_jax.data import augment
from metarppg_jax.data import preprocess
from metarppg_jax.errors import ConfigError

WINDOWS_PER_TASK = 3
# Decoded records kept per reading process (RecordCache): all of the synthetic sets and of
# UBFC-rPPG / PURE's crops (1-2 GB); `config.data.cache_mb` overrides it.
CACHE_MB = 2048
HOST_KEYS = ("frames", "mask", "targets", "valid", "ppg")   # a task as the host loads it
TRAIN_KEYS = ("x", "targets", "valid", "ppg")              # ... as the step sees it


# The normalisation every caller uses (training on the device the step runs on; evaluation,
# predict and the stream on the host's): training batches cross to the device as uint8 frames
# and masks (4 B a pixel instead of 12 B of float32) and are normalised there, so that the
# host's cores only gather windows. normalize(frames, masks, mode) -> f32[..., T, H, W, 3].
normalize = compile_options.jit(preprocess.normalize_clip, static_argnames="mode")


def gather_windows(record: dict, starts: np.ndarray, *, window: int,
                   speed: float = 1.0) -> dict:
  """Windows of one video record with their targets, frames still uint8: the one window
  gather (`load_windows` normalises them; training normalises on the device).

  Args:
    record: a dataset record (frames uint8[T, 64, 64, 3], mask uint8[T, 64, 64], ppg f32[T],
      hr f32[T], has_ppg).
    starts: i[W] start frames.
    window: frames per window.
    speed: frames advanced per window frame (nearest frame): a window spans `window * speed`
      recorded frames and shows a pulse `speed` times faster (training's time-stretch
      augmentation; "hr" is scaled with it).

  Returns:
    {"frames": uint8[W, T, 64, 64, 3], "mask": uint8[W, T, 64, 64], "targets": i32[W, T],
     "valid": bool[W], "ppg": f32[W, T], "hr": f32[W, T]}.
  """
  offsets = np.floor(np.arange(window) * speed + 1e-9).astype(np.int64)
  starts = np.asarray(starts, np.int64)
  idx = starts[:, None] + offsets
  ppg = np.asarray(record["ppg"], np.float32)[idx]
  targets, valid = preprocess.quantize_ppg(ppg)
  if speed == 1 and starts.size and np.all(np.diff(starts) == window):
    # Consecutive windows (a training task, evaluation): views of one block, not copies.
    block = slice(int(starts[0]), int(starts[0]) + starts.size * window)
    frames = record["frames"][block].reshape(idx.shape + record["frames"].shape[1:])
    mask = record["mask"][block].reshape(idx.shape + record["mask"].shape[1:])
  else:
    frames, mask = record["frames"][idx], record["mask"][idx]
  return {
      "frames": frames, "mask": mask, "targets": targets,
      "valid": valid & bool(record["has_ppg"]), "ppg": ppg,
      "hr": np.asarray(record["hr"], np.float32)[idx] * np.float32(speed),
  }


def load_windows(record: dict, starts: np.ndarray, *, window: int,
                 normalization: str, speed: float = 1.0) -> dict:
  """`gather_windows` plus "x": f32[W, T, 64, 64, 3], the windows normalised (`normalize`
  with `normalization`: "sound" | "pixel" | "reference"), as numpy."""
  w = gather_windows(record, starts, window=window, speed=speed)
  w["x"] = np.asarray(normalize(w["frames"], w["mask"], normalization))
  return w


def task_index(source, *, window: int, stride: int,
               windows_per_task: int = WINDOWS_PER_TASK) -> np.ndarray:
  """All (record, start) tasks of a source: i64[M, 2]; one pass over the records.

  A video shorter than `windows_per_task * window` frames gives no task.
  """
  rows = []
  for r in range(len(source)):
    num_frames = int(source[r]["num_frames"])
    starts = preprocess.window_starts(num_frames, windows_per_task * window, stride)
    rows.append(np.stack([np.full_like(starts, r), starts], axis=1))
  index = np.concatenate(rows, axis=0) if rows else np.zeros((0, 2), np.int64)
  if index.shape[0] == 0:
    raise ConfigError(f"no training task: every video is shorter than {windows_per_task} "
                      f"windows of {window} frames")
  return index


class RecordCache:
  """The records most recently read, whole, up to `max_bytes`: a record is one video, read
  and decoded whole by the data source (40-50 ms for a 20 s video here), while a task's own
  windows are a 1 ms slice of it; tasks of a cached video skip the read. Thread-safe (grain's
  reading threads share it); each worker process has its own."""

  KEYS = ("frames", "mask", "ppg", "hr", "has_ppg")

  def __init__(self, source, max_bytes: int):
    self._source = source
    self._max = int(max_bytes)
    self.__setstate__(None)

  def __getstate__(self):  # to grain's worker processes: the source, not the cache or lock
    return {"_source": self._source, "_max": self._max}

  def __setstate__(self, state):
    if state:
      self.__dict__.update(state)
    self._lock = threading.Lock()
    self._records = collections.OrderedDict()
    self._bytes = 0

  def __getitem__(self, r: int) -> dict:
    with self._lock:
      record = self._records.get(r)
      if record is not None:
        self._records.move_to_end(r)
        return record
    full = self._source[r]   # outside the lock: threads read different records at once
    record = {k: full[k] for k in self.KEYS}
    size = sum(np.asarray(v).nbytes for v in record.values())
    with self._lock:
      if size <= self._max and r not in self._records:
        self._records[r] = record
        self._bytes += size
        while self._bytes > self._max:
          _, old = self._records.popitem(last=False)
          self._bytes -= sum(np.asarray(v).nbytes for v in old.values())
    return record


class _LoadTask:
  """grain random map: (record, start), rng -> one task's K windows (HOST_KEYS), at a
  speed drawn uniformly from `speed` (the same for the task's K windows), relit by
  `augment.illumination` when `light` > 0."""

  def __init__(self, source, window, windows_per_task, speed, light=0.0, fps=30.0):
    self._source = source   # a RecordCache
    self._window = window
    self._k = windows_per_task
    self._speed = speed
    self._light = light
    self._fps = fps

  def __call__(self, entry, rng: np.random.Generator) -> dict:
    record = self._source[int(entry[0])]
    lo, hi = self._speed
    speed = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    span = int(np.ceil(self._window * speed))
    starts = int(entry[1]) + span * np.arange(self._k)
    w = gather_windows(record, starts, window=self._window, speed=speed)
    if self._light > 0:
      w["frames"] = augment.illumination(w["frames"], rng, self._light, self._fps)
    return {k: w[k] for k in HOST_KEYS}


def train_dataset(source, *, tasks_per_batch: int, window: int = preprocess.WINDOW,
                  stride: int = preprocess.WINDOW,
                  windows_per_task: int = WINDOWS_PER_TASK,
                  speed: tuple[float, float] = (1.0, 1.0), seed: int = 0,
                  num_epochs: Optional[int] = None, process_index: int = 0,
                  process_count: int = 1, cache_mb: float = CACHE_MB, light: float = 0.0,
                  fps: float = 30.0) -> grain.MapDataset:
  """The host batches of one process as a grain MapDataset (random access, resumable):
  uint8 frames and masks (`device_batch` normalises them where the step runs).

  Args:
    source: a random-access data source of video records (`build.load_dataset(...)[split]`).
    tasks_per_batch: N, tasks in the global batch (over all processes); divisible by
      `process_count`.
    window, stride: window length; frames between consecutive task starts of a video.
    windows_per_task: K consecutive windows a task.
    speed: (lo, hi) time-stretch augmentation: each task is read at a speed drawn uniformly
      from [lo, hi] (1: as recorded; 1.25: every pulse 25 % faster), so a training set whose
      heart rates span 55-120 bpm also teaches 45-150. Tasks are only cut where `hi` fits.
    seed: shuffling and speed seed (every epoch is a different permutation of all tasks).
    num_epochs: None repeats forever.
    process_index, process_count: this process's shard (jax.process_index/count).
    cache_mb: the records kept decoded (`RecordCache`), per reading process.
    light: `augment.illumination` amplitude (0: off): in-band light fluctuations of up to
      this relative size added to every task.
    fps: the frame rate (of the fluctuation's time axis).

  Returns:
    MapDataset of batch dicts (see the module docstring), N / process_count tasks each; the
    last incomplete batch is dropped.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ConfigError(f"process_index {process_index} must be in [0, {process_count})")
  if tasks_per_batch % process_count:
    raise ConfigError(f"data.tasks_per_batch={tasks_per_batch} must be divisible by the "
                      f"number of processes ({process_count})")
  lo, hi = (float(v) for v in speed)
  if not 0 < lo <= hi:
    raise ConfigError(f"data.speed_min and data.speed_max must be 0 < min <= max, got "
                      f"{lo:g} and {hi:g}")
  span = int(np.ceil(window * hi))  # frames a window may need at the fastest speed
  index = task_index(source, window=span, stride=stride, windows_per_task=windows_per_task)
  ds = grain.MapDataset.source(index).shuffle(seed=seed).repeat(num_epochs)
  # Same permutation in every process; each takes every process_count-th task: disjoint.
  ds = ds[process_index::process_count]
  cache = RecordCache(source, cache_mb * 2 ** 20)
  if light < 0:
    raise ConfigError(f"data.augment_light must be >= 0, got {light:g}")
  ds = ds.random_map(_LoadTask(cache, window, windows_per_task, (lo, hi), light, fps),
                     seed=seed)
  return ds.batch(tasks_per_batch // process_count, drop_remainder=True)


def shard_batch(batch: dict, mesh: jax.sharding.Mesh, axis: str = "data") -> dict:
  """Process-local batch -> global jax.Arrays split over the mesh's `axis` along dim 0."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))
  devices = mesh.shape[axis]
  out = {}
  for k, v in batch.items():
    global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
    if global_shape[0] % devices:
      raise ConfigError(f"batch of {global_shape[0]} tasks cannot be split over {devices} "
                        f"devices of mesh axis '{axis}' (set data.tasks_per_batch to a "
                        "multiple)")
    out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
  return out


def device_batch(batch: dict, normalization: str,
                 mesh: Optional[jax.sharding.Mesh] = None) -> dict:
  """A host batch (HOST_KEYS, uint8 frames and masks) -> the step's batch (TRAIN_KEYS) on the
  device(s): sharded over `mesh`'s "data" axis (None: the default device), then "x" =
  `normalize(frames, mask, normalization)` there."""
  on = shard_batch(batch, mesh) if mesh is not None else jax.device_put(batch)
  return {"x": normalize(on["frames"], on["mask"], normalization),
          **{k: on[k] for k in TRAIN_KEYS if k != "x"}}


def host_iterator(config, source, *, process_index: Optional[int] = None,
                  process_count: Optional[int] = None, num_epochs: Optional[int] = None,
                  read_threads: Optional[int] = None, window: int = preprocess.WINDOW):
  """The host side of `train_iterator`: grain's iterator of host batches (HOST_KEYS, numpy),
  resumable with `get_state()` / `set_state(s)`. Reading uses `config.data.worker_count`
  processes (0: `read_threads` threads in this process, default one a core up to 8)."""
  data = config.data
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  ds = train_dataset(source, tasks_per_batch=data.tasks_per_batch, window=window,
                     stride=data.stride, speed=(data.speed_min, data.speed_max),
                     light=data.augment_light, fps=data.fps,
                     seed=config.seed, num_epochs=num_epochs, process_index=pi,
                     process_count=pc, cache_mb=data.cache_mb)
  threads = read_threads or min(8, os.cpu_count() or 1)
  iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                 prefetch_buffer_size=2 * threads))
  if data.worker_count > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain's worker processes read their settings from it
      raise ConfigError(
          f"data.worker_count={data.worker_count} needs absl's flags parsed (run through an "
          "absl entry point such as metarppg_jax.main, or call absl.flags.FLAGS(argv) first); "
          "or set data.worker_count=0 to read in threads")
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.worker_count))
  return iter(iter_ds)


class DeviceIterator:
  """Iterates batches already on devices, `prefetch` ahead; exact get_state/set_state.

  The state returned is that of the next batch `next()` will give, whatever is prefetched.
  """

  def __init__(self, iterator, put, prefetch: int = 2):
    self._it = iterator
    self._put = put
    self._prefetch = max(int(prefetch), 1)
    self._queue = collections.deque()

  def _fill(self):
    while len(self._queue) < self._prefetch:
      state = self._it.get_state()
      try:
        batch = next(self._it)
      except StopIteration:
        return
      self._queue.append((state, self._put(batch)))

  def __iter__(self):
    return self

  def __next__(self):
    self._fill()
    if not self._queue:
      raise StopIteration
    _, batch = self._queue.popleft()
    self._fill()
    return batch

  def get_state(self) -> Any:
    return self._queue[0][0] if self._queue else self._it.get_state()

  def set_state(self, state) -> None:
    self._queue.clear()
    self._it.set_state(state)


def train_iterator(config, source, *, mesh: Optional[jax.sharding.Mesh] = None,
                   process_index: Optional[int] = None, process_count: Optional[int] = None,
                   num_epochs: Optional[int] = None, prefetch: int = 2,
                   read_threads: Optional[int] = None, window: int = preprocess.WINDOW):
  """Training batches from `config` (the whole ConfigDict: `config.data`, `config.seed`).

  Batches (TRAIN_KEYS) are jax.Arrays, `device_batch` of `host_iterator`'s: sharded over the
  mesh's "data" axis (None: on the default device), normalised there with
  `config.data.normalization`, `prefetch` batches ahead. `it.get_state()` /
  `it.set_state(s)` resume exactly.
  """
  normalization = config.data.normalization
  if normalization not in preprocess.NORMALIZATIONS:
    raise ConfigError(f"data.normalization must be one of {preprocess.NORMALIZATIONS}, got "
                      f"{normalization!r}")
  iterator = host_iterator(config, source, process_index=process_index,
                           process_count=process_count, num_epochs=num_epochs,
                           read_threads=read_threads, window=window)
  return DeviceIterator(iterator, lambda b: device_batch(b, normalization, mesh),
                        prefetch=prefetch)


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def eval_videos(source, *, window: int = preprocess.WINDOW, num_windows: Optional[int] = None,
                normalization: str = "sound", process_index: int = 0,
                process_count: int = 1, rgb: bool = True) -> Iterator[dict]:
  """Per video, consecutive windows from its start (videos in record order).

  Args:
    source: a random-access data source of video records.
    window: frames per window.
    num_windows: the first this many windows of each video; None: all full windows. Videos
      with fewer are still given (with fewer windows); the caller decides.
    normalization: "sound" | "pixel" | "reference".
    process_index, process_count: this process evaluates videos index, index + count, ...
    rgb: compute "rgb" (else None: only the classical methods read it).

  Yields:
    {"x": f32[W, T, 64, 64, 3], "targets": i32[W, T], "valid": bool[W], "ppg": f32[W, T],
     "hr": f32[W, T], "rgb": f32[W, T, 3] (preprocess.masked_rgb_means of the raw crops),
     "fps": float, "has_ppg": bool, "has_hr": bool, "video_id": str, "subject": str,
     "domain": str}.
  """
  for r in range(process_index, len(source), process_count):
    record = source[r]
    starts = preprocess.window_starts(record["frames"].shape[0], window, window)
    if num_windows is not None:
      starts = starts[:num_windows]
    if starts.size == 0:
      continue
    w = load_windows(record, starts, window=window, normalization=normalization)
    yield {
        "x": w["x"], "targets": w["targets"], "valid": w["valid"], "ppg": w["ppg"],
        "hr": w["hr"],
        "rgb": preprocess.masked_rgb_means(w["frames"], w["mask"]) if rgb else None,
        "fps": float(record["fps"]), "has_ppg": bool(record["has_ppg"]),
        "has_hr": bool(record["has_hr"]), "video_id": _text(record["video_id"]),
        "subject": _text(record["subject"]), "domain": _text(record["domain"]),
    }
