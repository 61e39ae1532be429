"""Input pipeline: task windows, determinism, resume, process sharding, device sharding, eval."""

import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest

from metarppg_jax.data import input_pipeline as ip
from metarppg_jax.data import preprocess
from metarppg_jax.errors import ConfigError

W = 8   # a short window keeps the tests small; the code does not care


def make_record(r, num_frames, *, has_ppg=True):
  rng = np.random.default_rng(r)
  t = np.arange(num_frames)
  return {
      "frames": rng.integers(0, 256, (num_frames, 64, 64, 3), dtype=np.uint8),
      "mask": (rng.random((num_frames, 64, 64)) > 0.3).astype(np.uint8),
      # Encodes (video, frame) so windows can be traced back: 1000 r + frame.
      "ppg": (1000.0 * r + t).astype(np.float32) if has_ppg else np.zeros(num_frames,
                                                                          np.float32),
      "hr": np.full(num_frames, 60.0 + r, np.float32),
      "has_ppg": has_ppg, "has_hr": True, "fps": 30.0, "num_frames": num_frames,
      "subject": f"s{r}".encode(), "video_id": f"v{r}".encode(), "domain": b"source",
  }


@pytest.fixture(scope="module")
def source():
  # 5 videos; lengths give 1..4 tasks of 3 windows at stride W (and one too short).
  return [make_record(r, n) for r, n in enumerate([3 * W, 4 * W + 3, 2 * W, 6 * W, 5 * W])]


def tasks_of(batch):
  """(video, start) of each task, checking its windows are consecutive frames of one video."""
  out = []
  for ppg in batch["ppg"]:
    flat = ppg.reshape(-1)
    video, start = divmod(int(flat[0]), 1000)
    np.testing.assert_array_equal(flat, 1000 * video + start + np.arange(3 * W))
    out.append((video, start))
  return out


def all_tasks(source, stride=W):
  return {(r, int(s)) for r, rec in enumerate(source)
          for s in preprocess.window_starts(len(rec["ppg"]), 3 * W, stride)}


def test_task_index(source):
  index = ip.task_index(source, window=W, stride=W)
  assert {tuple(map(int, row)) for row in index} == all_tasks(source)
  assert not any(r == 2 for r, _ in all_tasks(source))   # 2 windows only: no task
  with pytest.raises(ConfigError, match="shorter than 3 windows"):
    ip.task_index(source[2:3], window=W, stride=W)


def test_batch_contents(source):
  ds = ip.train_dataset(source, tasks_per_batch=2, window=W, stride=W, seed=0)
  host = ds[0]
  assert host["frames"].shape == (2, 3, W, 64, 64, 3) and host["frames"].dtype == np.uint8
  assert host["mask"].shape == (2, 3, W, 64, 64) and host["mask"].dtype == np.uint8
  batch = jax.device_get(ip.device_batch(host, "sound"))
  assert set(batch) == set(ip.TRAIN_KEYS)
  assert batch["x"].shape == (2, 3, W, 64, 64, 3) and batch["x"].dtype == np.float32
  assert batch["targets"].shape == (2, 3, W) and batch["targets"].dtype == np.int32
  assert batch["valid"].shape == (2, 3) and batch["valid"].all()
  assert batch["ppg"].shape == (2, 3, W)
  for n, (video, start) in enumerate(tasks_of(batch)):
    idx = start + np.arange(3 * W).reshape(3, W)
    rec = source[video]
    np.testing.assert_allclose(
        batch["x"][n], preprocess.normalize_clip(rec["frames"][idx], rec["mask"][idx], "sound"),
        atol=1e-6)
    np.testing.assert_array_equal(batch["targets"][n], preprocess.quantize_ppg(rec["ppg"][idx])[0])
  ref = jax.device_get(ip.device_batch(host, "reference"))
  video, start = tasks_of(ref)[0]
  idx = start + np.arange(3 * W).reshape(3, W)
  np.testing.assert_allclose(ref["x"][0], preprocess.normalize_clip(
      source[video]["frames"][idx], source[video]["mask"][idx], "reference"), rtol=1e-6)


@pytest.mark.parametrize("mode", preprocess.NORMALIZATIONS)
def test_normalize_is_normalize_clip_jitted(mode):
  """The normalisation every caller uses is preprocess.normalize_clip jitted: the same values
  eager and jitted, and from uint8 frames (exact int32 sums) as from float frames (float32
  sums), also for a window without skin and frames without skin inside a window."""
  rng = np.random.default_rng(0)
  t = 60
  face = rng.integers(60, 200, (1, 1, 64, 64, 3))
  drift = np.linspace(0, 10, t)[None, :, None, None, None]
  frames = np.clip(face + drift + rng.normal(0, 3, (4, t, 64, 64, 3)), 0, 255).astype(np.uint8)
  mask = (rng.random((4, t, 64, 64)) > 0.3).astype(np.uint8)
  mask[1] = 0
  mask[2, :5] = 0
  want = np.asarray(preprocess.normalize_clip(frames, mask, mode))
  tol = {"sound": 1e-6, "pixel": 1e-4, "reference": 1e-4}[mode]   # outputs ~0.2, ~1, ~100
  for x in (frames, frames.astype(np.float32)):
    got = np.asarray(ip.normalize(x, mask, mode))
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
  w = ip.load_windows({"frames": frames[0], "mask": mask[0], "ppg": np.zeros(t), "hr":
                       np.zeros(t), "has_ppg": False}, np.array([0]), window=t,
                      normalization=mode)
  np.testing.assert_array_equal(w["x"], np.asarray(ip.normalize(frames[:1], mask[:1], mode)))
  with pytest.raises(ValueError, match="must be"):
    ip.normalize(frames, mask[..., :3], mode)


def test_one_epoch_covers_every_task_once_and_seeds_shuffle(source):
  def epoch(seed, stride=W):
    ds = ip.train_dataset(source, tasks_per_batch=1, window=W, stride=stride, seed=seed,
                          num_epochs=1)
    return [t for b in ds for t in tasks_of(b)]
  a, b, c = epoch(0), epoch(0), epoch(1)
  assert a == b and a != c
  assert sorted(a) == sorted(all_tasks(source)) == sorted(c)
  assert sorted(epoch(0, stride=3)) == sorted(all_tasks(source, stride=3))
  two = [t for b in ip.train_dataset(source, tasks_per_batch=1, window=W, stride=W, seed=0,
                                     num_epochs=2) for t in tasks_of(b)]
  assert two[:len(a)] == a and two[len(a):] != a and sorted(two[len(a):]) == sorted(a)


def test_process_shards_are_disjoint(source):
  shards = []
  for p in range(2):
    ds = ip.train_dataset(source, tasks_per_batch=2, window=W, stride=W, seed=3, num_epochs=1,
                          process_index=p, process_count=2)
    shards.append([t for b in ds for t in tasks_of(b)])
    assert all(len(b["frames"]) == 1 for b in ds)   # 2 global tasks = 1 a process
  assert not set(shards[0]) & set(shards[1])
  assert set(shards[0]) | set(shards[1]) == all_tasks(source)
  with pytest.raises(ConfigError, match="divisible"):
    ip.train_dataset(source, tasks_per_batch=3, window=W, stride=W, process_count=2)


def config(**data):
  cfg = ml_collections.ConfigDict({"seed": 7, "data": {
      "tasks_per_batch": 2, "stride": W, "normalization": "sound",
      "worker_count": 0, "speed_min": 1.0, "speed_max": 1.0, "augment_light": 0.0,
      "fps": 30.0, "cache_mb": 64.0}})
  cfg.data.update(data)
  return cfg


def test_resume_from_state_is_exact(source):
  it = ip.train_iterator(config(), source, window=W)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [tasks_of(next(it)) for _ in range(4)]
  fresh = ip.train_iterator(config(), source, window=W)
  fresh.set_state(state)
  assert [tasks_of(next(fresh)) for _ in range(4)] == expected


def test_device_iterator_shards_and_resumes_exactly(source):
  mesh = jax.make_mesh((1,), ("data",))
  it = ip.train_iterator(config(), source, mesh=mesh, prefetch=3, window=W)
  first = next(it)
  assert isinstance(first["x"], jax.Array) and first["x"].shape == (2, 3, W, 64, 64, 3)
  for k in ip.TRAIN_KEYS:   # normalised on the device, still split over "data"
    assert first[k].sharding.is_equivalent_to(
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")), first[k].ndim), k
  next(it)
  state = it.get_state()   # three batches are prefetched beyond it: must not matter
  expected = [tasks_of(jax.device_get(next(it))) for _ in range(3)]
  plain = ip.train_iterator(config(), source, window=W)
  plain.set_state(state)
  assert [tasks_of(next(plain)) for _ in range(3)] == expected
  it.set_state(state)
  assert [tasks_of(jax.device_get(next(it))) for _ in range(3)] == expected


def test_shard_batch_over_two_devices(tmp_path):
  script = textwrap.dedent("""
      import os
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
      import jax, numpy as np
      from metarppg_jax.data import input_pipeline as ip
      from metarppg_jax.errors import ConfigError
      mesh = jax.make_mesh((2,), ("data",))
      batch = {"x": np.arange(4 * 3, dtype=np.float32).reshape(4, 3)}
      out = ip.shard_batch(batch, mesh)["x"]
      assert out.shape == (4, 3)
      shards = sorted((s.index[0].start, np.asarray(s.data).tolist())
                      for s in out.addressable_shards)
      assert shards == [(0, [[0, 1, 2], [3, 4, 5]]), (2, [[6, 7, 8], [9, 10, 11]])], shards
      try:
        ip.shard_batch({"x": np.zeros((3, 1))}, mesh)
        raise SystemExit("no error for 3 tasks on 2 devices")
      except ConfigError:
        pass
      print("ok")
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_hr_only_videos_have_no_valid_targets():
  source = [make_record(0, 3 * W, has_ppg=False), make_record(1, 3 * W)]
  ds = ip.train_dataset(source, tasks_per_batch=2, window=W, stride=W, num_epochs=1)
  batch = ds[0]
  has_ppg = batch["ppg"].reshape(2, -1).any(axis=1)
  assert sorted(has_ppg) == [False, True]
  np.testing.assert_array_equal(batch["valid"], np.repeat(has_ppg[:, None], 3, axis=1))


def test_eval_videos(source):
  videos = list(ip.eval_videos(source, window=W, normalization="sound"))
  assert [v["video_id"] for v in videos] == [f"v{r}" for r in range(5)]
  for r, v in enumerate(videos):
    rec = source[r]
    n = len(rec["ppg"]) // W
    idx = np.arange(n * W).reshape(n, W)
    assert v["x"].shape == (n, W, 64, 64, 3) and v["ppg"].shape == (n, W)
    np.testing.assert_array_equal(v["ppg"], rec["ppg"][idx])
    np.testing.assert_array_equal(v["hr"], rec["hr"][idx])
    np.testing.assert_allclose(v["rgb"], preprocess.masked_rgb_means(rec["frames"][idx],
                                                                     rec["mask"][idx]))
    np.testing.assert_allclose(v["x"], preprocess.normalize_clip(rec["frames"][idx],
                                                                 rec["mask"][idx], "sound"),
                               atol=1e-6)
    assert v["fps"] == 30.0 and v["subject"] == f"s{r}" and v["valid"].all()
  first = list(ip.eval_videos(source, window=W, num_windows=2))
  assert all(v["x"].shape[0] == 2 for v in first)
  half = [v["video_id"] for v in ip.eval_videos(source, window=W, process_index=1,
                                                 process_count=2)]
  assert half == ["v1", "v3"]


def test_benchmark_pipeline_reports_units(source, load_experiment):
  figures = load_experiment("benchmark").benchmark_pipeline(config(), source, num_batches=2,
                                                            warmup=1, read_threads=1, window=W)
  assert set(figures) == {"pipeline_tasks_per_s", "pipeline_cpu_s_per_task",
                          "pipeline_device_tasks_per_s", "pipeline_bytes_per_task",
                          "pipeline_startup_s"}
  assert all(v > 0 for v in figures.values())


def test_speed_augmentation_reads_each_task_at_one_drawn_speed(source):
  """Each task's windows advance `speed` frames per window frame (nearest), one speed a task,
  consecutive; targets are the quantised PPG at those frames; resume stays exact."""
  ds = ip.train_dataset(source, tasks_per_batch=1, window=W, stride=W, speed=(0.8, 1.3),
                        seed=3)
  index = ip.task_index(source, window=int(np.ceil(W * 1.3)), stride=W)
  for i in range(4):
    assert ds[i]["frames"].shape[:3] == (1, ip.WINDOWS_PER_TASK, W)
  # The speed drawn for the same element is the same every time (a pure function of the seed).
  np.testing.assert_array_equal(ds[2]["ppg"], ds[2]["ppg"])
  record = source[0]
  ppg = np.asarray(record["ppg"], np.float32)
  for speed in (0.8, 1.0, 1.25):
    w = ip.load_windows(record, np.array([0, 9]), window=W, normalization="sound",
                        speed=speed)
    idx = np.array([0, 9])[:, None] + np.floor(np.arange(W) * speed + 1e-9).astype(int)
    np.testing.assert_array_equal(w["ppg"], ppg[idx])
  assert len(index) <= len(ip.task_index(source, window=W, stride=W))


def test_speed_range_is_checked(source):
  with pytest.raises(ConfigError, match="speed_min"):
    ip.train_dataset(source, tasks_per_batch=1, window=W, stride=W, speed=(1.2, 1.0))


class _Counting(list):
  """A source that counts its record reads."""
  reads = 0

  def __getitem__(self, r):
    self.reads += 1
    return super().__getitem__(r)


def test_record_cache_reads_each_record_once_within_its_bound(source):
  import pickle  # pylint: disable=g-import-not-at-top
  plain = ip.train_dataset(source, tasks_per_batch=2, window=W, stride=W, seed=0, cache_mb=0)
  cached = ip.train_dataset(source, tasks_per_batch=2, window=W, stride=W, seed=0)
  for i in range(6):   # the same batches, cache or not
    for k in ip.HOST_KEYS:
      np.testing.assert_array_equal(plain[i][k], cached[i][k])
  counting = _Counting(source)
  size = [sum(np.asarray(rec[k]).nbytes for k in ip.RecordCache.KEYS) for rec in source]
  cache = ip.RecordCache(counting, max_bytes=size[0] + size[1])
  for r in (0, 0, 1, 0, 1):
    assert cache[r]["frames"] is source[r]["frames"]
  assert counting.reads == 2
  cache[2]                   # over the bound: evicts the least recently used, 0
  cache[1]
  assert counting.reads == 3
  cache[0]
  assert counting.reads == 4
  clone = pickle.loads(pickle.dumps(cache))   # grain's worker processes: an empty cache
  clone[0]
  assert clone._records.keys() == {0}


def test_light_augmentation_changes_frames_not_targets(source):
  plain = ip.train_dataset(source, tasks_per_batch=1, window=W, stride=W, seed=1)
  lit = ip.train_dataset(source, tasks_per_batch=1, window=W, stride=W, seed=1,
                         light=0.05)
  assert not np.array_equal(plain[0]["frames"], lit[0]["frames"])
  np.testing.assert_array_equal(plain[0]["ppg"], lit[0]["ppg"])     # the targets stay
  with pytest.raises(ConfigError, match="augment_light"):
    ip.train_dataset(source, tasks_per_batch=1, window=W, stride=W, light=-1.0)
