r"""Speed of the method on this machine: the figures of the README's speed sections.

    python experiments/benchmark.py [--json PATH] [--sections outer_step,eval,matmul]
        [--original DIR] [--config configs/reference.py] [--tasks 3 --size 64 --fewshots 1]
        [--repeats 7] [--eval_videos 1,4] [--precision default|highest]

Each section is one function `bench_<name>(args, out)` writing figures into one dict, keys
with their unit: outer_step_median_s, outer_step_spread_s (interquartile range),
outer_step_min_s, compile_s, outer_step_flops, gflops_per_s (XLA's FLOP count of the compiled
outer step / its median time); per count V of `--eval_videos`, eval_<V>v_median_s,
eval_<V>v_spread_s, eval_<V>v_compile_s and eval_<V>v_frames_per_s (V videos' transductive
tests in one `inference.evaluate_videos` call, frames counted over the query frames; an
out-of-memory count records eval_<V>v_error instead); matmul_peak_gflops_per_s (a jitted
float32 4096 matmul); peak_memory_mb (the process's maximum resident set);
device_peak_memory_mb (an accelerator's peak bytes in use, where it reports them); the load
average at the start and end. Section `scaling` (not run by default: `--sections scaling`)
adds the scaling-out table: `scaling` (one row per fake CPU device count of
`--scaling_devices`, each run in its own process) and
scaling_<d>dev_outer_step_median_s, scaling_<d>dev_tasks_per_s,
scaling_<d>dev_ring_bytes_per_device_per_step, scaling_allreduce_bytes_per_step. Defaults: the
reference config, 3 tasks x 60 frames x 64x64, fewshots 1, as the original's defaults.

`--original DIR` (a checkout of the original PyTorch release, eugenelet/Meta-rPPG; torch from
the `[torch]` extra) times the original at the same settings in the same run, each of its
repeats right after one of ours (the machine's other load falls on both alike):
original_outer_step_median_s (its training loop's body: adaptation window, two learning
windows, the fewshot test, the prototype update), original_eval_median_s and
original_eval_frames_per_s (its `fewshot_test`: fewshots support + `--tasks` query windows of
one video), and the ratios outer_step_vs_original (ours / its time: below 1 is faster),
eval_vs_original and eval_<V>v_vs_original (our query frames/s / its). Without it there is no
ratio: figures from another machine or another hour are not a comparison.

The data section imports the data pipeline (tensorflow-datasets, grain, PyAV, OpenCV) only
when it runs: sections outer_step, eval and matmul need only jax, flax, optax, numpy, scipy
and ml_collections (a GPU machine).
"""

import argparse
import fractions
import functools
import json
import os
import resource
import statistics
import sys
import time

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from metarppg_jax import configuration
from metarppg_jax import hparams
from metarppg_jax import inference
from metarppg_jax import meta
from metarppg_jax import state as state_lib
from metarppg_jax.data import preprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _timed(fn, repeats):
  return _interleaved({"fn": fn}, repeats)["fn"]


def _interleaved(runs, repeats):
  """{name: fn} -> {name: [s]}: each fn (its result waited for) timed `repeats` times, taking
  turns, one call of each a round, so that load that comes and goes on a shared machine falls
  on every one alike; one untimed round first (first calls pay for compilation, allocation,
  torch's lazy set-up)."""
  for fn in runs.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, fn in runs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return times


def _spread(times):
  q = np.percentile(times, [25, 75])
  return float(q[1] - q[0])


def _record(out, prefix, times):
  out[f"{prefix}_median_s"] = statistics.median(times)
  out[f"{prefix}_spread_s"] = _spread(times)
  out[f"{prefix}_min_s"] = min(times)


def compile_step(step, state, batch):
  """A jitted `step(state, batch) -> (state, metrics)` compiled.
  -> (run: one step on the last state, compile_s, XLA's FLOP count)."""
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  last = [state, None]  # the state is donated: each step takes the last one's

  def run():
    last[:] = compiled(last[0], batch)
    return last[1]

  run.state = lambda: last[0]
  return run, compile_s, flops


def time_step(step, state, batch, repeats):
  """Compiles a jitted `step(state, batch) -> (state, metrics)` (state donated), runs it once
  to warm up (`_interleaved`), then `repeats` timed times. -> (compile_s, XLA's FLOP count, [s], last state)."""
  run, compile_s, flops = compile_step(step, state, batch)
  times = _timed(run, repeats)
  return compile_s, flops, times, run.state()


def step_batch(config, n, size, fewshots):
  """A batch for the outer step: n tasks x 3 windows x 60 frames of size x size (plus the
  in-step test windows when the config has them)."""
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  batch = {"x": _clips(keys[0], (n, 3, 60, size, size, 3)),
           "targets": jax.random.randint(keys[1], (n, 3, 60), 0, 40),
           "valid": jnp.ones((n, 3), bool)}
  if config.meta.test_in_step:
    batch["test_x"] = _clips(keys[2], (fewshots + n, 60, size, size, 3))
    batch["test_targets"] = jax.random.randint(keys[1], (fewshots + n, 60), 0, 40)
  return batch


def _clips(key, shape):
  """Video-like inputs: smooth random images with small per-frame changes."""
  return 0.1 * jax.random.normal(key, shape, jnp.float32)


def _config(args):
  return configuration.from_file(args.config, {"meta.fewshots": args.fewshots})


def bench_matmul(args, out):
  a = jnp.ones((4096, 4096), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))
  t = min(_timed(lambda: f(a), 5))
  out["matmul_peak_gflops_per_s"] = 2 * 4096 ** 3 / t / 1e9


def _interleaved_with_original(args, config, runs: dict, which: str) -> dict:
  """`_interleaved(runs)`, with the original release's `which` ("step" or "test") timed as
  runs["original"] between them when --original names a checkout."""
  if not args.original:
    return _interleaved(runs, args.repeats)
  original = original_runs(args, config)
  try:
    return _interleaved(dict(runs, original=original[which]), args.repeats)
  finally:
    original["close"]()


def bench_outer_step(args, out):
  """Our outer step (and the original's, with --original) at the same settings."""
  config = _config(args)
  n, s = args.tasks, args.size
  state = state_lib.create_train_state(config, jax.random.PRNGKey(0), num_tasks=n)
  batch = step_batch(config, n, s, args.fewshots)
  state = meta.update_prototype(config, state, batch["x"][:, 0])
  run, out["compile_s"], flops = compile_step(meta.make_meta_train_step(config), state, batch)
  times = _interleaved_with_original(args, config, {"ours": run}, "step")
  _record(out, "outer_step", times["ours"])
  out["outer_step_flops"] = flops
  out["gflops_per_s"] = flops / out["outer_step_median_s"] / 1e9
  if args.original:
    _record(out, "original_outer_step", times["original"])
    out["outer_step_vs_original"] = (out["outer_step_median_s"]
                                     / out["original_outer_step_median_s"])


def bench_eval(args, out):
  """The transductive test of V videos in one call for each V of --eval_videos (and the
  original's test of one video, with --original): fewshots support + `tasks` query windows a
  video, as the original's test (its queries are the LSTM state's batch)."""
  config = _config(args)
  n, s, fs = args.tasks, args.size, args.fewshots
  state = state_lib.create_train_state(config, jax.random.PRNGKey(0), num_tasks=n)
  counts = [int(v) for v in args.eval_videos.split(",")]
  out["eval_videos"] = counts
  runs = {}
  for v in counts:
    clips = _clips(jax.random.PRNGKey(2), (v, fs + n, 60, s, s, 3))
    run = functools.partial(inference.evaluate_videos, config, state, clips, adapt=True)
    out["eval_batching"] = inference.video_batching(clips)
    try:
      t0 = time.perf_counter()
      jax.block_until_ready(run())  # compiles
      out[f"eval_{v}v_compile_s"] = time.perf_counter() - t0
      runs[v] = run
    except jax.errors.JaxRuntimeError as e:  # out of memory on a device: the other counts go on
      out[f"eval_{v}v_error"] = str(e).split("\n")[0][:300]
  times = _interleaved_with_original(args, config, runs, "test")
  if args.original:
    _record(out, "original_eval", times.pop("original"))
    out["original_eval_frames_per_s"] = n * 60 / out["original_eval_median_s"]
  for v, t in times.items():
    _record(out, f"eval_{v}v", t)
    out[f"eval_{v}v_frames_per_s"] = v * n * 60 / out[f"eval_{v}v_median_s"]
    if args.original:
      name = "eval_vs_original" if v == 1 else f"eval_{v}v_vs_original"
      out[name] = out[f"eval_{v}v_frames_per_s"] / out["original_eval_frames_per_s"]


# --------------------------------------------------------------------------------------------
# The original PyTorch release, run side by side (--original).
# --------------------------------------------------------------------------------------------

def check_original(orig_dir):
  """SystemExit with what to do unless torch is installed and orig_dir is a checkout."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("torch") is None:
    raise SystemExit("--original needs torch: pip install -e \".[torch]\"")
  if not os.path.isfile(os.path.join(orig_dir, "model", "main_model.py")):
    raise SystemExit(
        f"--original {orig_dir}: no model/main_model.py there; check out the original release "
        "(eugenelet/Meta-rPPG), e.g. git clone https://github.com/eugenelet/Meta-rPPG DIR")


def import_original(orig_dir):
  """The original's `meta_rPPG` class, imported from its checkout at `orig_dir`.

  As `../shared/reference/make_reference.py` does, with two environment patches that leave
  its computation alone: matplotlib and sklearn, imported by its data code but unused here,
  are stubbed where not installed, and `scipy.signal.hann` (removed from SciPy) is aliased to
  `scipy.signal.windows.hann`. The third (clone) is `_contiguous_clone`, around each call.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  import importlib.machinery  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  import scipy.signal  # pylint: disable=g-import-not-at-top
  import scipy.signal.windows  # pylint: disable=g-import-not-at-top
  check_original(orig_dir)
  for name in ("matplotlib", "matplotlib.pyplot", "sklearn", "sklearn.preprocessing"):
    try:
      importlib.import_module(name)
    except ImportError:
      stub = types.ModuleType(name)
      stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
      sys.modules[name] = stub
  if not hasattr(sys.modules["sklearn.preprocessing"], "normalize"):
    sys.modules["sklearn.preprocessing"].normalize = None
  if not hasattr(scipy.signal, "hann"):
    scipy.signal.hann = scipy.signal.windows.hann
  if os.path.abspath(orig_dir) not in sys.path:
    sys.path.insert(0, os.path.abspath(orig_dir))
  from model.main_model import meta_rPPG  # pylint: disable=g-import-not-at-top,import-error
  return meta_rPPG


def _contiguous_clone(fn):
  """fn with Tensor.clone() contiguous while it runs, as in PyTorch 1.5, which the original
  ran on: its ordinal layer's .view() needs it (values unchanged, only the layout)."""
  import torch  # pylint: disable=g-import-not-at-top

  def wrapped():
    plain = torch.Tensor.clone

    def clone(self, *a, **k):
      k.setdefault("memory_format", torch.contiguous_format)
      return plain(self, *a, **k)

    torch.Tensor.clone = clone
    try:
      return fn()
    finally:
      torch.Tensor.clone = plain
  return wrapped


def original_runs(args, config):
  """The original model at our settings in a process of its own (`_original_worker`: its
  environment patches, stubs and sys.path stay out of ours, and our runtime's threads out of
  its way). Under other load its OpenMP threads collapse (a step 38 s against 3.1-4.0 s
  quiet, in a process of its own too): compare runs on a quiet machine. -> {"step",
  "test"}: each runs one of `_original_model`'s on it and returns once done; "close" ends it."""
  import subprocess  # pylint: disable=g-import-not-at-top
  cmd = [sys.executable, os.path.abspath(__file__), "--original_worker", "--original",
         args.original, "--config", args.config, "--tasks", str(args.tasks), "--size",
         str(args.size), "--fewshots", str(args.fewshots)]
  child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  info = json.loads(child.stdout.readline() or "null")
  if info is None:
    raise SystemExit(f"the original's worker failed (exit {child.wait()}): see its errors above")
  args.original_info = info

  def ask(what):
    child.stdin.write(what + "\n")
    child.stdin.flush()
    if child.stdout.readline().strip() != "done":
      raise SystemExit(f"the original's worker failed on {what!r} (exit {child.wait()})")
  def close():
    child.stdin.close()
    child.wait()
  return {"step": lambda: ask("step"), "test": lambda: ask("test"), "close": close}


def _original_worker(args):
  """The child of `original_runs`: one JSON line of torch's version and threads, then runs
  "step" or "test" for each such line on stdin, answering "done" (its prints go to stderr)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  protocol = sys.stdout
  with contextlib.redirect_stdout(sys.stderr):
    runs = _original_model(args, _config(args))
    protocol.write(json.dumps({"original_torch_version": torch.__version__,
                               "original_torch_threads": torch.get_num_threads()}) + "\n")
    protocol.flush()
    for line in sys.stdin:
      runs[line.strip()]()
      protocol.write("done\n")
      protocol.flush()


def _original_model(args, config):
  """The original model at our settings (tasks, frame size, fewshots, adaptation position),
  float32, torch's default threads. -> {"step": one outer iteration as its train.py runs it
  (adaptation window, two learning windows, its `testing` (the fewshot test), the prototype
  update), "test": its `fewshot_test` on fewshots support + `tasks` query windows}; each
  returns None once done (torch runs eagerly)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  meta_rppg = import_original(args.original)
  n, s, fs = args.tasks, args.size, args.fewshots
  opt = argparse.Namespace(
      name="meta_rPPG", checkpoints_dir="checkpoints", gpu_ids="", lstm_num_layers=2,
      batch_size=n, fewshots=fs, lr=1e-3, adapt_position=config.meta.adapt_position,
      continue_train=False, print_net=False, win_size=60)
  gen = torch.Generator().manual_seed(1)
  x = 0.1 * torch.randn((n, 3, 60, 3, s, s), generator=gen)  # its layout: [N, T, C, H, W]
  t = torch.randint(0, 40, (n, 3, 60), generator=gen)
  test = {"input": 0.1 * torch.randn((fs + n, 60, 3, s, s), generator=gen),
          "rPPG": torch.randint(0, 40, (fs + n, 60), generator=gen)}
  window = lambda i: {"input": x[:, i], "rPPG": t[:, i]}
  cwd = os.getcwd()
  with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
    os.chdir(tmp)  # it makes ./checkpoints
    try:
      model = meta_rppg(opt, isTrain=True)
      model.setup(opt)
    finally:
      os.chdir(cwd)
  model.set_input(window(0))
  _contiguous_clone(model.update_prototype)()  # as its train.py, before the loop

  def step():
    model.B_net.feed_hc([model.h, model.c])
    for i in range(3):
      model.set_input(window(i))
      if i == 0:
        model.new_theta_update(1)  # adaptation phase
      else:
        model.new_psi_phi_update(1)  # learning phase
    fewshot_test()
    model.set_input(window(0))
    model.update_prototype()

  def fewshot_test():
    model.set_input(test)
    model.fewshot_test(1)
    model.train()

  return {"step": _contiguous_clone(step), "test": _contiguous_clone(fewshot_test)}


# --------------------------------------------------------------------------------------------
# Scaling out: the sharded outer step on 1, 2, 4, ... devices.
# --------------------------------------------------------------------------------------------

def _tree_bytes(tree):
  return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape))
                 for x in jax.tree.leaves(tree)))


def communication_per_step(config, params, devices):
  """Bytes the data-parallel outer step all-reduces, from the parameter shapes.

  With the parameters replicated and the tasks split, every gradient of a replicated
  parameter is summed over the devices once per optimizer step: `fewshots` synthetic-gradient
  steps on the adapted nets (meta.adapt_position), then per learning window (2) theta and phi
  and, with the synthetic gradient, psi. Batch-norm moments and loss terms add a few KB. A ring
  all-reduce sends 2 (d - 1) / d of the buffer per device.
  """
  s = hparams.from_config(config)
  size = {k: _tree_bytes(v) for k, v in params.items()}
  windows = 2 if s.meta_learning else 3
  learn = ("theta", "phi") + (("psi",) if s.meta_learning and s.synthetic_gradient else ())
  adapt = s.adapted_nets if s.meta_learning and s.synthetic_gradient else ()
  total = windows * sum(size[k] for k in learn) + s.fewshots * sum(size[k] for k in adapt)
  return {"param_bytes": size, "allreduce_bytes_per_step": total,
          "ring_bytes_per_device_per_step": 2 * (devices - 1) / devices * total}


def _scaling_worker(args):
  """One device count (set by XLA_FLAGS before this process imported JAX): the sharded step."""
  from metarppg_jax import sharding  # pylint: disable=g-import-not-at-top
  config = _config(args)
  n, s = args.scaling_tasks, args.size
  config.data.tasks_per_batch = n
  mesh = sharding.make_mesh(config)
  batch = step_batch(config, n, s, args.fewshots)
  batch = sharding.shard_host_batch(jax.device_get(batch), mesh)
  state = sharding.create_sharded_train_state(config, jax.random.PRNGKey(0), mesh, num_tasks=n)
  step = sharding.jit_sharded_step(meta.meta_train_step(config), mesh, state, batch)
  compile_s, flops, times, state = time_step(step, state, batch, args.repeats)
  median = statistics.median(times)
  devices = int(mesh.devices.size)
  return {"devices": devices, "tasks": n, "outer_step_median_s": median,
          "outer_step_spread_s": _spread(times), "compile_s": compile_s,
          "tasks_per_s": n / median,
          "flops_per_device": flops,
          **communication_per_step(config, jax.device_get(state.params), devices)}


def bench_scaling(args, out):
  """Outer step time and tasks/s on 1, 2, 4 (`--scaling_devices`) fake CPU devices, each in
  its own process (the device count is fixed before JAX starts), N = `--scaling_tasks` tasks
  (a global batch: each device gets N / d), and the all-reduce volume from the shapes.

  Fake devices share this machine's cores, so expect no speed-up: the table shows that the
  sharded program is correct to run and what the partitioning costs (`overhead_vs_1`).
  """
  import subprocess  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  rows = []
  for d in [int(v) for v in args.scaling_devices.split(",")]:
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "row.json")
      cmd = [sys.executable, os.path.abspath(__file__), "--scaling_worker", path,
             "--config", args.config, "--size", str(args.size), "--fewshots",
             str(args.fewshots), "--repeats", str(args.repeats), "--scaling_tasks",
             str(args.scaling_tasks)]
      env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={d}",
                 JAX_PLATFORMS="cpu")
      subprocess.run(cmd, env=env, check=True, timeout=args.scaling_timeout_s)
      with open(path) as f:
        rows.append(json.load(f))
  base = rows[0]["outer_step_median_s"]
  for row in rows:
    row["overhead_vs_1"] = row["outer_step_median_s"] / base
  out["scaling"] = rows
  for row in rows:
    d = row["devices"]
    out[f"scaling_{d}dev_outer_step_median_s"] = row["outer_step_median_s"]
    out[f"scaling_{d}dev_tasks_per_s"] = row["tasks_per_s"]
    out[f"scaling_{d}dev_ring_bytes_per_device_per_step"] = row["ring_bytes_per_device_per_step"]
  out["scaling_allreduce_bytes_per_step"] = rows[0]["allreduce_bytes_per_step"]


def benchmark_generation(seconds: float = 60.0, domain: str = "shifted",
                         size: tuple[int, int] = (128, 128), repeats: int = 2) -> dict:
  """Time to generate one minute of video (median over `repeats` videos).

  Returns wall-clock and process CPU seconds per minute of video (CPU time is the steadier
  figure on a shared machine), keys with their unit.
  """
  from metarppg_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  wall, cpu = [], []
  for r in range(repeats):
    w0, c0 = time.perf_counter(), time.process_time()
    synthetic.generate_video(r, seconds=seconds, domain=domain, size=size)
    wall.append(time.perf_counter() - w0)
    cpu.append(time.process_time() - c0)
  per_minute = 60.0 / seconds
  return {"synthetic_s_per_video_minute": float(np.median(wall)) * per_minute,
          "synthetic_cpu_s_per_video_minute": float(np.median(cpu)) * per_minute,
          "synthetic_frame_size": f"{size[0]}x{size[1]}", "synthetic_domain": domain}


def benchmark_build(name: str, *, manual_dir: str, data_dir: str,
                    config: Optional[str] = None) -> dict:
  """Build throughput of a real-format dataset, decode and face detection included (e.g.
  synthetic videos written in the UBFC layout by `python -m metarppg_jax.data.synthetic`, built
  with ubfc_rppg).

  Returns:
    {"build_frames_per_s": stored frames / wall s, "build_cpu_s_per_frame": process CPU s a
     stored frame, "build_frames": count, "build_s": wall s}.
  """
  from metarppg_jax.data import build  # pylint: disable=g-import-not-at-top
  wall, cpu = time.perf_counter(), time.process_time()
  builder = build.build_dataset(name, data_dir=data_dir, manual_dir=manual_dir, config=config,
                                overwrite=True)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  sources = builder.as_data_source()
  frames = sum(int(src[i]["num_frames"]) for src in sources.values() for i in range(len(src)))
  return {"build_frames_per_s": frames / wall, "build_cpu_s_per_frame": cpu / max(frames, 1),
          "build_frames": frames, "build_s": wall}


def write_long_face_video(folder: str, *, seconds: float, fps: float = 61.0,
                          size: tuple[int, int] = (580, 780), codec: str = "mjpeg") -> int:
  """A long face video in the UBFC-rPPG DATASET_2 layout (folder/vid.avi, ground_truth.txt).

  A 2 s synthetic face clip is rendered small (rendering 780x580 takes 0.25 s a frame),
  upscaled to `size` (H, W), and played forwards and backwards to `seconds`, streamed into
  the encoder (the video is never in memory). MJPEG: encoding H.264 (MAHNOB's codec) at this
  size takes minutes here, and the decoder's memory is a few frames either way.

  Returns:
    The number of frames written.
  """
  from metarppg_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  import av  # pylint: disable=g-import-not-at-top
  import cv2  # pylint: disable=g-import-not-at-top
  clip = synthetic.generate_video(0, seconds=2.0, fps=fps, domain="source",
                                  size=(size[0] // 4, size[1] // 4))
  period = np.concatenate([np.arange(len(clip.ppg)), np.arange(len(clip.ppg) - 2, 0, -1)])
  n = int(round(seconds * fps))
  order = period[np.arange(n) % len(period)]
  os.makedirs(folder, exist_ok=True)
  with av.open(os.path.join(folder, "vid.avi"), mode="w") as container:
    stream = container.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuvj420p"
    for k in order:
      image = cv2.resize(clip.frames[k], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
      for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  t = np.arange(n) / fps
  with open(os.path.join(folder, "ground_truth.txt"), "w") as f:
    for row in (clip.ppg[order], np.full(n, 72.0), t):
      f.write(" ".join(f"{x:.7e}" for x in row) + "\n")
  return n


_BUILD_CHILD = """
import hashlib, sys
import numpy as np
from metarppg_jax.data import build
builder = build.build_dataset("ubfc_rppg", data_dir=sys.argv[1], manual_dir=sys.argv[2],
                              overwrite=True)
digest = hashlib.sha256()
for split, src in sorted(builder.as_data_source().items()):
  for i in range(len(src)):
    for k in ("frames", "mask", "ppg", "hr"):
      digest.update(np.ascontiguousarray(src[i][k]).tobytes())
print("DIGEST", digest.hexdigest())
"""


# Prepended to a child's code: at exit it prints its own peak RSS. Linux's rusage ru_maxrss
# of a child starts from its parent's RSS at the fork (the mm the exec replaced), so a large
# parent (a test worker) would hide the child's own peak; VmHWM is the exec'd image's alone.
_PEAK_HOOK = """
import atexit as _atexit
def _print_peak():
  for _line in open("/proc/self/status"):
    if _line.startswith("VmHWM:"):
      print("CHILD_PEAK_KB", int(_line.split()[1]), flush=True)
_atexit.register(_print_peak)
"""


def _child_peak(code: str, args: list, pythonpath: Optional[str],
                cwd: Optional[str] = None) -> tuple[float, float, str]:
  """Runs `python -c code *args` in `cwd` -> (its own peak RSS in MB, wall s, stdout).

  The peak is the child's VmHWM (`_PEAK_HOOK`), else (no /proc) its rusage ru_maxrss.
  `python -c` puts its working directory first on sys.path: run it outside a checkout, or
  that checkout's package wins over `pythonpath`."""
  import subprocess  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if pythonpath:  # another checkout (e.g. an older commit): its package first
    env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
  hook = _PEAK_HOOK if os.path.exists("/proc/self/status") else ""
  t0 = time.perf_counter()
  proc = subprocess.Popen([sys.executable, "-c", hook + code, *args], env=env, cwd=cwd,
                          stdout=subprocess.PIPE, text=True)
  stdout = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)   # this child's own rusage
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    raise RuntimeError(f"child failed ({proc.returncode}): {code.strip()[:80]}...")
  peak_mb = usage.ru_maxrss / 1024
  lines = []
  for line in stdout.splitlines():
    if line.startswith("CHILD_PEAK_KB "):
      peak_mb = int(line.split()[1]) / 1024
    else:
      lines.append(line)
  return peak_mb, time.perf_counter() - t0, "\n".join(lines) + ("\n" if lines else "")


def benchmark_build_memory(seconds: tuple = (30.0, 60.0), *, fps: float = 61.0,
                           size: tuple[int, int] = (580, 780),
                           baseline: Optional[str] = None,
                           baseline_seconds: Optional[tuple] = None) -> dict:
  """Peak memory of building one MAHNOB-sized video (780x580 at 61 fps, resampled to 30 fps),
  each build in its own process (its max RSS), for each length in `seconds`.

  baseline: a checkout of another commit (e.g. `git worktree add --detach DIR <commit>`) whose
    build is measured on the same videos (`baseline_seconds`, default `seconds`) in the same
    run, and whose stored examples are compared byte for byte.

  Returns:
    {"build_video": "WxH@fps", "build_memory": [{"seconds", "frames", "decoded_mb" (the whole
     video as uint8 RGB), "peak_mb", "wall_s"[, "baseline_peak_mb", "baseline_wall_s",
     "identical"]}], "build_import_peak_mb" (a process that only imports the build),
     "build_peak_memory_mb" (the longest video's)}.
  """
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  root = tempfile.mkdtemp(prefix="metarppg_bench_build_")
  rows = []
  try:
    idle, _, _ = _child_peak("from metarppg_jax.data import build", [], None, root)
    for sec in seconds:
      manual = os.path.join(root, f"v{sec:g}")
      frames = write_long_face_video(os.path.join(manual, "subject1"), seconds=sec, fps=fps,
                                     size=size)
      row = {"seconds": sec, "frames": frames,
             "decoded_mb": frames * size[0] * size[1] * 3 / 2 ** 20}
      peak, wall, out = _child_peak(_BUILD_CHILD, [os.path.join(root, "d"), manual], None,
                                    root)
      row.update(peak_mb=peak, wall_s=wall)
      if baseline and sec in (baseline_seconds or seconds):
        peak, wall, base_out = _child_peak(_BUILD_CHILD, [os.path.join(root, "b"), manual],
                                           baseline, root)
        row.update(baseline_peak_mb=peak, baseline_wall_s=wall,
                   identical=_digest(out) == _digest(base_out))
      rows.append(row)
      shutil.rmtree(manual)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  return {"build_video": f"{size[1]}x{size[0]}@{fps:g}fps mjpeg", "build_memory": rows,
          "build_import_peak_mb": idle, "build_peak_memory_mb": rows[-1]["peak_mb"]}


def _digest(stdout: str) -> str:
  return [line.split()[1] for line in stdout.splitlines() if line.startswith("DIGEST")][-1]


def benchmark_pipeline(config, source, *, num_batches: int = 20, warmup: int = 10,
                       read_threads: Optional[int] = None,
                       window: int = preprocess.WINDOW) -> dict:
  """Training-pipeline throughput on this machine, after `warmup` batches (the record cache
  filled, as in a training run past its first epoch).

  Returns:
    {"pipeline_tasks_per_s": tasks a second the host side sustains (`host_iterator`: grain
       gathering uint8 windows, what the cores do while a GPU normalises and trains),
     "pipeline_cpu_s_per_task": its process CPU time a task (all threads),
     "pipeline_device_tasks_per_s": `train_iterator`'s, normalisation on the default device
       included (on a CPU-only machine that is these same cores),
     "pipeline_bytes_per_task": what a task moves to the device (uint8 frames and masks),
     "pipeline_startup_s": to the first batch}.
  """
  from metarppg_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  out = {}
  for name, make in (
      ("pipeline", lambda: input_pipeline.host_iterator(config, source,
                                                        read_threads=read_threads,
                                                        window=window)),
      ("pipeline_device", lambda: input_pipeline.train_iterator(config, source,
                                                                read_threads=read_threads,
                                                                window=window))):
    start = time.perf_counter()
    it = make()
    batch = next(it)
    if name == "pipeline":
      out["pipeline_startup_s"] = time.perf_counter() - start
      out["pipeline_bytes_per_task"] = sum(
          batch[k][0].nbytes for k in input_pipeline.HOST_KEYS)
    for _ in range(warmup):
      next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(num_batches):
      batch = next(it)
    jax.block_until_ready(batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tasks = num_batches * batch["targets"].shape[0]
    out[f"{name}_tasks_per_s"] = tasks / wall
    if name == "pipeline":
      out["pipeline_cpu_s_per_task"] = cpu / tasks
  return out


# One H100's consumption, from the step's FLOPs: its dense float32 peak (67 TFLOP/s SXM, 51
# PCIe; TF32 tensor cores, which XLA uses for float32 convolutions by default, are several
# times faster, so this rate is a lower bound of what it consumes) at a utilisation typical of
# small convolutions.
H100_PEAK_FLOPS = 60e12
H100_UTILISATION = 0.4
PIPELINE_TARGET = 10   # the pipeline should sustain this many H100s
# A measured GPU outer step (configs/reference.py, 3 tasks, default precision, on an H200 with
# jax 0.11.2: experiments/results/benchmark_gpu_outer_step.txt). Its XLA FLOP count there is
# 15 GFLOP, not the CPU's 159 (cuDNN's convolutions are not counted alike): the FLOP estimate
# and this measurement bracket what one GPU consumes.
GPU_STEP_S = 0.02297


def outer_step_flops(args) -> float:
  """XLA's FLOP count of the compiled outer step at the benchmark's settings."""
  config = _config(args)
  n = args.tasks
  state = state_lib.create_train_state(config, jax.random.PRNGKey(0), num_tasks=n)
  batch = step_batch(config, n, args.size, args.fewshots)
  cost = meta.make_meta_train_step(config).lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def h100_consumption(flops_per_step: float, tasks_per_step: int) -> dict:
  """Tasks a second one H100 trains on at `H100_UTILISATION` of `H100_PEAK_FLOPS`."""
  step_s = flops_per_step / (H100_PEAK_FLOPS * H100_UTILISATION)
  return {"h100_step_s_estimate": step_s, "h100_tasks_per_s_estimate": tasks_per_step / step_s,
          "h100_estimate_assumptions": (
              f"outer step of {tasks_per_step} tasks = {flops_per_step / 1e9:.0f} GFLOP (XLA "
              f"count) at {H100_UTILISATION:.0%} of {H100_PEAK_FLOPS / 1e12:.0f} TFLOP/s "
              "(H100 dense float32; TF32 would consume faster)")}


def bench_data(args, out):
  """The data side: synthetic generation per video minute, the build's peak memory on
  MAHNOB-sized videos (`--build_seconds`, against the checkout `--build_baseline` when given),
  and the training pipeline's tasks/s on the built synthetic `small` dataset (built into
  --data_dir on first use) against `PIPELINE_TARGET` times one H100's consumption
  (`h100_consumption`; pipeline_vs_target >= 1: enough), against as many GPUs at the measured
  `GPU_STEP_S` (pipeline_vs_measured_gpu_target) and against this machine's outer step
  (pipeline_margin_over_training)."""
  from metarppg_jax.data import build  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  seconds = tuple(float(v) for v in args.build_seconds.split(",") if v)
  if seconds:
    baseline_seconds = tuple(float(v) for v in args.build_baseline_seconds.split(",") if v)
    out.update(benchmark_build_memory(seconds, baseline=args.build_baseline or None,
                                      baseline_seconds=baseline_seconds or None))
  out.update(benchmark_generation(seconds=60.0, domain="shifted", repeats=2))
  config = configuration.from_file(os.path.join(REPO, "configs", "default.py"))
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="metarppg_bench_data_")
  source = build.load_dataset(config.data.dataset, data_dir, config.data.builder_config)
  out.update(benchmark_pipeline(config, source["train"], num_batches=100))
  flops = out.get("outer_step_flops") or outer_step_flops(args)
  out.update(h100_consumption(flops, args.tasks))
  out["pipeline_target_tasks_per_s"] = PIPELINE_TARGET * out["h100_tasks_per_s_estimate"]
  out["pipeline_vs_target"] = out["pipeline_tasks_per_s"] / out["pipeline_target_tasks_per_s"]
  out["gpu_step_s_measured"] = GPU_STEP_S
  out["gpu_tasks_per_s_measured"] = 3 / GPU_STEP_S
  out["pipeline_vs_measured_gpu_target"] = (
      out["pipeline_tasks_per_s"] / (PIPELINE_TARGET * out["gpu_tasks_per_s_measured"]))
  if "outer_step_median_s" in out:
    out["pipeline_margin_over_training"] = (
        out["pipeline_tasks_per_s"] * out["outer_step_median_s"] / args.tasks)


def speed_table(f: dict) -> str:
  """The README's speed table (markdown) from the figures of one run (`--table JSON`)."""
  def s(key):
    return f"{f[key]:.2f} s" if key in f else "-"

  def spread(key):
    return f" (IQR {f[key]:.2f})" if key in f else ""

  rows = [("| | metarppg_jax | original release | ratio |"), "|---|---|---|---|"]
  ratio = f.get("outer_step_vs_original")
  if "outer_step_median_s" in f:
    rows.append(f"| outer step, median of {f['repeats']} | {s('outer_step_median_s')}"
                f"{spread('outer_step_spread_s')}, compile {f['compile_s']:.0f} s | "
                f"{s('original_outer_step_median_s')}{spread('original_outer_step_spread_s')} | "
                + (f"{ratio:.2f}x the time |" if ratio else "- |"))
  orig_fps = f.get("original_eval_frames_per_s")
  for v in f.get("eval_videos", []):
    if f"eval_{v}v_error" in f:
      rows.append(f"| {v} videos' transductive tests in one call | {f[f'eval_{v}v_error']} "
                  "| - | - |")
      continue
    name = "eval_vs_original" if v == 1 else f"eval_{v}v_vs_original"
    what = ("one video's transductive test" if v == 1
            else f"{v} videos' transductive tests in one call")
    original = (f"{s('original_eval_median_s')}, {orig_fps:.0f} query frames/s"
                if orig_fps and v == 1 else "-")
    rows.append(f"| {what} ({f['fewshots']} support + {f['tasks']} query windows each) | "
                f"{s(f'eval_{v}v_median_s')}, {f[f'eval_{v}v_frames_per_s']:.0f} query frames/s"
                f" | {original}{spread('original_eval_spread_s') if v == 1 else ''} | "
                + (f"{f[name]:.2f}x the frames/s |" if name in f else "- |"))
  if "outer_step_flops" in f:
    rows.append(f"| outer step: XLA's FLOPs, achieved | {f['outer_step_flops'] / 1e9:.0f} GFLOP, "
                f"{f['gflops_per_s']:.1f} GFLOP/s | - | - |")
  if "matmul_peak_gflops_per_s" in f:
    rows.append(f"| float32 matmul peak (4096^2) | {f['matmul_peak_gflops_per_s']:.0f} GFLOP/s "
                "| - | - |")
  rows.append(f"| peak memory of the process | {f['peak_memory_mb'] / 1024:.1f} GB | - | - |")
  if "load_average_at_start" in f:
    rows.append(f"| the machine's load average (1 min), start / end | "
                f"{f['load_average_at_start']:.1f} / {f['load_average_at_end']:.1f} | | |")
  return "\n".join(rows)


SECTIONS = {"matmul": bench_matmul, "outer_step": bench_outer_step, "eval": bench_eval,
            "scaling": bench_scaling, "data": bench_data}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--json", help="write the figures here")
  ap.add_argument("--sections", default="matmul,outer_step,eval")
  ap.add_argument("--config", default=os.path.join(REPO, "configs", "reference.py"))
  ap.add_argument("--tasks", type=int, default=3)
  ap.add_argument("--size", type=int, default=64)
  ap.add_argument("--fewshots", type=int, default=1)
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--eval_videos", default="1,4",
                  help="section eval: video counts, each timed as one evaluate_videos call")
  ap.add_argument("--original", default="",
                  help="a checkout of the original PyTorch release: timed side by side")
  ap.add_argument("--precision", choices=("default", "highest"), default="default",
                  help="jax_default_matmul_precision (highest: float32 on GPUs, no TF32)")
  ap.add_argument("--scaling_devices", default="1,2,4",
                  help="section scaling: fake CPU device counts, one process each")
  ap.add_argument("--scaling_tasks", type=int, default=4,
                  help="section scaling: tasks in the global batch (divisible by each count)")
  ap.add_argument("--scaling_timeout_s", type=float, default=1800)
  ap.add_argument("--data_dir", default="",
                  help="section data: where the synthetic dataset is (built on first use)")
  ap.add_argument("--build_seconds", default="30,60,180",
                  help="section data: lengths of the 780x580 61 fps videos whose build's peak "
                  "memory is measured (empty: none)")
  ap.add_argument("--build_baseline", default="",
                  help="section data: a checkout of another commit whose build is measured "
                  "too (git worktree add --detach DIR COMMIT), on the same videos")
  ap.add_argument("--build_baseline_seconds", default="30,60",
                  help="section data: the lengths the baseline builds (a build that decodes "
                  "the whole video needs 83 MB a second of it: 5 GB a minute)")
  ap.add_argument("--table", help="print the README's speed table from this JSON and exit")
  ap.add_argument("--scaling_worker", help=argparse.SUPPRESS)  # internal: JSON row path
  ap.add_argument("--original_worker", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.table:
    with open(args.table) as f:
      print(speed_table(json.load(f)))
    return 0
  if args.original_worker:
    _original_worker(args)
    return 0
  if args.scaling_worker:
    row = _scaling_worker(args)
    with open(args.scaling_worker, "w") as f:
      json.dump(row, f)
    return 0
  if args.original:
    check_original(args.original)  # fails now, not after our compilation
  if args.precision == "highest":
    jax.config.update("jax_default_matmul_precision", "highest")
  out = {"jax_version": jax.__version__, "devices": [str(d) for d in jax.devices()],
         "tasks": args.tasks, "size": args.size, "fewshots": args.fewshots,
         "config": os.path.relpath(args.config, REPO), "precision": args.precision,
         "repeats": args.repeats, "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "load_average_at_start": os.getloadavg()[0]}
  for name in args.sections.split(","):
    if name not in SECTIONS:
      ap.error(f"unknown section {name!r}; known: {sorted(SECTIONS)}")
    SECTIONS[name](args, out)
    if args.json:  # after each section: a run cut off by a time limit keeps what it measured
      with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"[{name}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in out.items()), flush=True)
  out.update(getattr(args, "original_info", {}))
  out["load_average_at_end"] = os.getloadavg()[0]  # the machine's other work (1 min)
  device_stats = jax.devices()[0].memory_stats()  # None on CPU
  if device_stats and "peak_bytes_in_use" in device_stats:
    out["device_peak_memory_mb"] = device_stats["peak_bytes_in_use"] / 2**20
  out["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps(out, indent=1))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
