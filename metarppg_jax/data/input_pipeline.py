"""The input pipeline: built videos -> windows -> meta-learning tasks -> sharded device batches.

Training (`train_dataset` / `train_iterator`): a task is one video and `windows_per_task`
(K = 3) consecutive windows of `window` frames from it: the adaptation window and the two
learning windows of one outer step. Task start frames are `preprocess.window_starts(T,
K * window, stride)` per video. The (video, start) index is shuffled with grain by seed (a new
permutation each epoch), cut per process (every `process_count`-th task from
`process_index`: disjoint across processes), loaded, normalised and batched into
N = `tasks_per_batch / process_count` tasks per process:

  {"x":       f32[N, K, T, 64, 64, 3]  preprocess.normalize_clip(frames, mask, normalization)
   "targets": i32[N, K, T]             preprocess.quantize_ppg(ppg) levels 0..39
   "valid":   bool[N, K]               the window has a defined target (PPG, not flat)
   "ppg":     f32[N, K, T]}

Iterators expose `get_state()` / `set_state(state)` (grain's, exact resume).
`shard_batch` puts a process-local batch on a mesh's "data" axis; `train_iterator` does it
with a small prefetch to device, keeping the resume state exact.

Evaluation (`eval_videos`): the same window loader, consecutive windows from the start of
each video (one video at a time).
"""

from __future__ import annotations

import collections
import os
from typing import Any, Iterator, Optional

import grain
import jax
import numpy as np

from metarppg_jax.data import preprocess
from metarppg_jax.errors import ConfigError

WINDOWS_PER_TASK = 3
TRAIN_KEYS = ("x", "targets", "valid", "ppg")


def load_windows(record: dict, starts: np.ndarray, *, window: int,
                 normalization: str, speed: float = 1.0) -> dict:
  """Windows of one video record, normalised, with targets: the one window loader.

  Args:
    record: a dataset record (frames uint8[T, 64, 64, 3], mask uint8[T, 64, 64], ppg f32[T],
      hr f32[T], has_ppg).
    starts: i[W] start frames.
    window: frames per window.
    normalization: "sound" | "pixel" | "reference" (preprocess.normalize_clip).
    speed: frames advanced per window frame (nearest frame): a window spans `window * speed`
      recorded frames and shows a pulse `speed` times faster (training's time-stretch
      augmentation; "hr" is scaled with it).

  Returns:
    {"x": f32[W, T, 64, 64, 3], "targets": i32[W, T], "valid": bool[W], "ppg": f32[W, T],
     "hr": f32[W, T], "frames": uint8[W, T, 64, 64, 3], "mask": uint8[W, T, 64, 64]}.
  """
  offsets = np.floor(np.arange(window) * speed + 1e-9).astype(np.int64)
  idx = np.asarray(starts, np.int64)[:, None] + offsets
  frames = record["frames"][idx]
  mask = record["mask"][idx]
  ppg = np.asarray(record["ppg"], np.float32)[idx]
  targets, valid = preprocess.quantize_ppg(ppg)
  valid = valid & bool(record["has_ppg"])
  return {
      "x": preprocess.normalize_clip(frames, mask, normalization),
      "targets": targets, "valid": valid, "ppg": ppg,
      "hr": np.asarray(record["hr"], np.float32)[idx] * np.float32(speed), "frames": frames,
      "mask": mask,
  }


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


class _LoadTask:
  """grain random map: (record, start), rng -> one task's K windows (train keys only), at a
  speed drawn uniformly from `speed` (the same for the task's K windows)."""

  def __init__(self, source, window, windows_per_task, normalization, speed):
    self._source = source
    self._window = window
    self._k = windows_per_task
    self._normalization = normalization
    self._speed = speed

  def __call__(self, entry, rng: np.random.Generator) -> dict:
    record = self._source[int(entry[0])]
    lo, hi = self._speed
    speed = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    span = int(np.ceil(self._window * speed))
    starts = int(entry[1]) + span * np.arange(self._k)
    w = load_windows(record, starts, window=self._window, normalization=self._normalization,
                     speed=speed)
    return {k: w[k] for k in TRAIN_KEYS}


def train_dataset(source, *, tasks_per_batch: int, window: int = preprocess.WINDOW,
                  stride: int = preprocess.WINDOW,
                  windows_per_task: int = WINDOWS_PER_TASK, normalization: str = "sound",
                  speed: tuple[float, float] = (1.0, 1.0), seed: int = 0, num_epochs: Optional[int] = None, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """The training batches of one process as a grain MapDataset (random access, resumable).

  Args:
    source: a random-access data source of video records (`build.load_dataset(...)[split]`).
    tasks_per_batch: N, tasks in the global batch (over all processes); divisible by
      `process_count`.
    window, stride: window length; frames between consecutive task starts of a video.
    windows_per_task: K consecutive windows a task.
    normalization: "sound" | "pixel" | "reference".
    speed: (lo, hi) time-stretch augmentation: each task is read at a speed drawn uniformly
      from [lo, hi] (1: as recorded; 1.25: every pulse 25 % faster), so a training set whose
      heart rates span 55-120 bpm also teaches 45-150. Tasks are only cut where `hi` fits.
    seed: shuffling and speed seed (every epoch is a different permutation of all tasks).
    num_epochs: None repeats forever.
    process_index, process_count: this process's shard (jax.process_index/count).

  Returns:
    MapDataset of batch dicts (see the module docstring), N / process_count tasks each; the
    last incomplete batch is dropped.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ConfigError(f"process_index {process_index} must be in [0, {process_count})")
  if tasks_per_batch % process_count:
    raise ConfigError(f"data.tasks_per_batch={tasks_per_batch} must be divisible by the "
                      f"number of processes ({process_count})")
  if normalization not in preprocess.NORMALIZATIONS:
    raise ConfigError(f"data.normalization must be one of {preprocess.NORMALIZATIONS}, got "
                      f"{normalization!r}")
  lo, hi = (float(v) for v in speed)
  if not 0 < lo <= hi:
    raise ConfigError(f"data.speed_min and data.speed_max must be 0 < min <= max, got "
                      f"{lo:g} and {hi:g}")
  span = int(np.ceil(window * hi))  # frames a window may need at the fastest speed
  index = task_index(source, window=span, stride=stride, windows_per_task=windows_per_task)
  ds = grain.MapDataset.source(index).shuffle(seed=seed).repeat(num_epochs)
  # Same permutation in every process; each takes every process_count-th task: disjoint.
  ds = ds[process_index::process_count]
  ds = ds.random_map(_LoadTask(source, window, windows_per_task, normalization, (lo, hi)),
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

  With a mesh, batches are global jax.Arrays sharded over its "data" axis (prefetched to
  device); without, numpy dicts. Either way `it.get_state()` / `it.set_state(s)` resume
  exactly. Reading uses `config.data.worker_count` processes (0: `read_threads` threads in
  this process, default one a core up to 8; numpy releases the GIL in the normalisation).
  """
  data = config.data
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  ds = train_dataset(source, tasks_per_batch=data.tasks_per_batch, window=window,
                     stride=data.stride, normalization=data.normalization,
                     speed=(data.speed_min, data.speed_max), seed=config.seed,
                     num_epochs=num_epochs, process_index=pi, process_count=pc)
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
  iterator = iter(iter_ds)
  if mesh is None:
    return iterator
  return DeviceIterator(iterator, lambda b: shard_batch(b, mesh), prefetch=prefetch)


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
    normalization: "sound" | "reference".
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
