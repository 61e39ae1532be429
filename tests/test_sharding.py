"""Sharded meta-training on fake CPU devices gives the one-device result.

Every run is a subprocess (this file run as a script, `worker`): the device count is fixed by
XLA_FLAGS before JAX is imported, so the pytest process keeps its single device. A run trains
a few `meta_train_step`s on a fixed batch of N = 4 tasks under `sharding.jit_sharded_step`,
evaluates 3 videos (padded to the mesh) under `sharding.sharded_evaluate`, and writes the
state, metrics and predictions to an .npz. tests/test_distributed.py runs the same worker as
two processes.

The fast tests switch psi off (`meta.synthetic_gradient=False`): psi takes the 60 frames of a
window as channels, so with it a window must hold 60 frames (models.WINDOW), which makes a step
far slower on this 2-core machine; the `slow` test runs the default config with psi.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve()
REPO = HERE.parents[1]
# A worker compiles the init, the step and the evaluation: about a minute of CPU, several on
# this shared 2-core machine under load.
TIMEOUT_S = 900
TASKS = 4
VIDEOS = 3       # not a multiple of 4 devices: the evaluation pads and cuts
FAST = dict(frames=8, size=32, steps=3, psi=False)
# Float32 reduction order (per-device partial sums, then an all-reduce) differs from one
# device's; a few steps keep the difference near float32 epsilon.
RTOL, ATOL = 2e-4, 2e-6


# --------------------------------------------------------------------------------------------
# The worker (runs in a subprocess).
# --------------------------------------------------------------------------------------------

def _config(opts):
  sys.path.insert(0, str(REPO / "configs"))
  import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.data.tasks_per_batch = TASKS
  config.meta.synthetic_gradient = opts["psi"]
  return config


def _batches(opts):
  """The same global batches in every process (seeded)."""
  rng = np.random.default_rng(0)
  n, t, s = TASKS, opts["frames"], opts["size"]
  batches = []
  for _ in range(opts["steps"]):
    batches.append({"x": rng.normal(size=(n, 3, t, s, s, 3)).astype(np.float32),
                    "targets": rng.integers(0, 40, size=(n, 3, t)).astype(np.int32),
                    "valid": np.array([[True, True, True], [True, False, True],
                                       [True, True, True], [True, True, False]])})
  videos = rng.normal(size=(VIDEOS, 2, t, s, s, 3)).astype(np.float32)
  return batches, videos


def _flat(tree, prefix):
  import jax  # pylint: disable=g-import-not-at-top
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {prefix + jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
          for p, v in leaves}


def worker(opts):
  """One run; see the module docstring. opts: devices (per process), processes, process_id,
  port, out, frames, size, steps, psi, save_after (save a checkpoint to `ckpt` after that many
  steps), restore (start from the checkpoint in `ckpt`)."""
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={opts['devices']}"
  t0 = time.monotonic()

  def log(what):
    print(f"{time.monotonic() - t0:7.1f}s {what}", flush=True)

  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if opts.get("cache"):  # workers of one session share compiled programs
    jax.config.update("jax_compilation_cache_dir", opts["cache"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  from metarppg_jax import checkpoints, meta, sharding  # pylint: disable=g-import-not-at-top
  from metarppg_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

  log("imported")
  config = _config(opts)
  if opts["processes"] > 1:
    config.mesh.coordinator_address = f"127.0.0.1:{opts['port']}"
    config.mesh.num_processes = opts["processes"]
    config.mesh.process_id = opts["process_id"]
  assert sharding.initialize_distributed(config, initialization_timeout=60) == (
      opts["processes"] > 1)
  mesh = sharding.make_mesh(config)
  assert mesh.devices.size == opts["devices"] * opts["processes"], mesh
  batches, videos = _batches(opts)
  per_process = TASKS // jax.process_count()
  lo = jax.process_index() * per_process

  def global_batch(b):  # each process feeds only its own tasks, as the input pipeline does
    return input_pipeline.shard_batch({k: v[lo:lo + per_process] for k, v in b.items()}, mesh)

  state = sharding.create_sharded_train_state(config, jax.random.PRNGKey(0), mesh,
                                              num_tasks=TASKS)
  log("state created")
  if opts.get("restore"):
    restored = checkpoints.restore_latest(opts["ckpt"], state)
    state = restored.state
    start = restored.step
  else:
    start = 0
  step = sharding.jit_sharded_step(meta.meta_train_step(config), mesh, state,
                                   global_batch(batches[0]))
  metrics = []
  mgrs = None
  for i in range(start, opts["steps"]):
    state, m = step(state, global_batch(batches[i]))
    metrics.append(sharding.to_host(m))
    log(f"step {i + 1}")
    if opts.get("save_after") == i + 1:
      mgrs = checkpoints.managers(opts["ckpt"], max_to_keep=1, async_save=True)
      checkpoints.save(mgrs, state, step=i + 1)
  if mgrs is not None:
    checkpoints.wait(mgrs)
    checkpoints.close(mgrs)

  out = _flat(sharding.to_host(state), "state/")
  out.update({f"metrics/{k}": np.stack([m[k] for m in metrics]) for k in metrics[0]})
  out["shardings/lstm_h"] = np.array(str(state.lstm_state[0].sharding.spec))
  out["shardings/theta"] = np.array(
      str(state.params["theta"]["conv1"]["kernel"].sharding.spec))
  evaluate = sharding.sharded_evaluate(config, mesh, adapt=True)
  out.update(_flat(evaluate(state, videos), "eval/"))
  log("evaluated")

  if jax.process_index() == 0:
    np.savez(opts["out"], **out)
  print("worker done", json.dumps({k: v for k, v in opts.items() if k != "out"}), flush=True)


# --------------------------------------------------------------------------------------------
# Starting workers.
# --------------------------------------------------------------------------------------------

def free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_worker(tmp_path, name, **opts):
  """Starts one worker process; returns (Popen, log path, out path)."""
  opts = {**FAST, "processes": 1, "process_id": 0, "port": 0, **opts}
  out = tmp_path / f"{name}.npz"
  log = tmp_path / f"{name}.log"
  opts["out"] = str(out)
  env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  env.pop("XLA_FLAGS", None)
  with open(log, "w") as f:
    proc = subprocess.Popen([sys.executable, str(HERE), json.dumps(opts)], stdout=f,
                            stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                            start_new_session=True)
  return proc, log, out


def wait_workers(started, timeout=TIMEOUT_S):
  """Waits for every (proc, log, out) by PID within `timeout` seconds in all; kills the rest
  (their process groups) and fails with the logs' tails if one fails or runs over."""
  deadline = time.monotonic() + timeout
  failed = []
  try:
    for proc, log, _ in started:
      try:
        rc = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
      except subprocess.TimeoutExpired:
        failed.append((log, "timed out"))
        continue
      if rc != 0:
        failed.append((log, f"exit status {rc}"))
  finally:
    for proc, _, _ in started:
      if proc.poll() is None:
        os.killpg(proc.pid, 9)
        proc.wait()
  if failed:
    report = "\n".join(f"--- {log.name}: {why}\n{log.read_text()[-3000:]}" for log, why in failed)
    pytest.fail(f"worker(s) failed:\n{report}")
  # Of a multi-process run only process 0 writes.
  return [dict(np.load(out)) if out.exists() else None for _, _, out in started]


def run_workers(tmp_path, *specs, timeout=TIMEOUT_S):
  """specs: (name, opts) pairs, all started at once; -> their outputs."""
  return wait_workers([start_worker(tmp_path, name, **opts) for name, opts in specs], timeout)


def assert_same_run(got: dict, want: dict, *, rtol=RTOL, atol=ATOL, norm_rtol=None):
  """Same state, metrics and predictions (float32 reduction-order tolerance): element-wise,
  or with `norm_rtol` leaf-wise, |got - want| <= norm_rtol |want| (2-norms), for runs whose
  gradients are long sums with cancellation (psi's synthetic gradients)."""
  keys = [k for k in want if k.split("/")[0] in ("state", "metrics", "eval")]
  assert set(keys) <= set(got), sorted(set(keys) - set(got))
  for k in keys:
    if k.startswith("eval/") and k.split("/")[1] in ("decision", "level"):
      continue  # thresholds of prob at 0.5: compared through prob
    if norm_rtol is None or want[k].dtype.kind != "f":
      np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)
      continue
    if re.search(r"/trace/theta/conv\d/bias$", k):
      # A bias before a train-mode batch norm has zero gradient: its momentum holds weight
      # decay plus rounding noise of the gradient sum, which any summation order changes.
      continue
    a, b = got[k].astype(np.float64), want[k].astype(np.float64)
    assert np.linalg.norm(a - b) <= norm_rtol * np.linalg.norm(b) + atol * np.sqrt(b.size), (
        k, np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compile_cache(tmp_path_factory) -> str:
  """A persistent compilation cache shared by the workers of one pytest session."""
  return str(tmp_path_factory.getbasetemp() / "jax_compilation_cache")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One run on 1 device and one on 4 (which saves a checkpoint after step 1), in parallel."""
  tmp = tmp_path_factory.mktemp("shard")
  cache = compile_cache(tmp_path_factory)
  one, four = run_workers(tmp, ("one", dict(devices=1, cache=cache)),
                          ("four", dict(devices=4, cache=cache, save_after=1,
                                        ckpt=str(tmp / "ckpt"))))
  return {"one": one, "four": four, "ckpt": tmp / "ckpt", "tmp": tmp, "cache": cache}


# --------------------------------------------------------------------------------------------
# Tests.
# --------------------------------------------------------------------------------------------

def test_shard_four_devices_match_one_device(runs):
  one, four = runs["one"], runs["four"]
  assert_same_run(four, one)
  assert four["metrics/loss"].shape == (FAST["steps"],)
  # The run moved: a test comparing two untrained states would prove nothing.
  assert not np.allclose(four["metrics/loss"][0], four["metrics/loss"][-1])
  assert four["eval/prob"].shape == (VIDEOS, 1, FAST["frames"], 40)


def test_shard_layout_state_replicated_lstm_state_on_tasks(runs):
  four = runs["four"]
  assert str(four["shardings/theta"]) == "P()"
  assert str(four["shardings/lstm_h"]) == "P(None, 'data')"


def test_shard_joint_batch_norm_uses_the_global_batch(runs):
  """joint mode on 4 devices, one task a device: the running batch-norm moments are those of
  all N tasks together (the one-device values), not of each device's task."""
  one, four = runs["one"], runs["four"]
  names = [k for k in one if k.startswith("state/batch_stats/theta/") and
           k.endswith(("/mean", "/var"))]
  assert len(names) == 10, names
  for k in names:
    assert not np.allclose(four[k], np.zeros_like(four[k]) + (k.endswith("/var"))), k  # moved
    np.testing.assert_allclose(four[k], one[k], rtol=RTOL, atol=ATOL, err_msg=k)


def test_shard_checkpoint_saved_on_four_devices_continues_on_one(runs):
  """Saved by the 4-device run after step 1; restored on 1 device, steps 2..3 give the
  uninterrupted 4-device run's state, losses and predictions."""
  (one,) = run_workers(runs["tmp"], ("restored", dict(devices=1, restore=True,
                                                      ckpt=str(runs["ckpt"]),
                                                      cache=runs["cache"])))
  four = runs["four"]
  assert one["metrics/loss"].shape == (FAST["steps"] - 1,)
  np.testing.assert_allclose(one["metrics/loss"], four["metrics/loss"][1:], rtol=RTOL,
                             atol=ATOL)
  assert_same_run({k: v for k, v in one.items() if not k.startswith("metrics/")},
                  {k: v for k, v in four.items() if not k.startswith("metrics/")})


@pytest.mark.slow
def test_shard_default_config_with_psi_matches_one_device(tmp_path, tmp_path_factory):
  """The default config (psi on, 60-frame windows, 32x32 frames): one step."""
  opts = dict(frames=60, size=32, steps=1, psi=True, cache=compile_cache(tmp_path_factory))
  one, four = run_workers(tmp_path, ("one", dict(devices=1, **opts)),
                          ("four", dict(devices=4, **opts)), timeout=900)
  # psi's synthetic gradient and its training target are gradients of gradients: long float32
  # sums with cancellation, so the summation order of 4 devices shows at the 1e-3 level.
  assert_same_run(four, one, norm_rtol=5e-3)
  np.testing.assert_allclose(four["metrics/gradloss"], one["metrics/gradloss"], rtol=RTOL)


@pytest.mark.slow
def test_shard_main_on_two_devices_matches_one_device(tmp_path):
  """`python -m metarppg_jax.main` itself (train.py's loop, checkpoints, evaluation) on a
  2-device mesh, one task a device, trains and evaluates like on 1 device."""
  args = ["--config", str(REPO / "configs" / "tiny.py"), "--config.data.tasks_per_batch=2",
          f"--config.data.data_dir={tmp_path / 'data'}", "--config.eval.every_epochs=0"]
  runs = {}
  for devices in (1, 2):  # one after the other: the first builds the data
    workdir = tmp_path / f"devices_{devices}"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, "-m", "metarppg_jax.main", *args,
                           f"--workdir={workdir}"], env=env, cwd=str(REPO), text=True,
                          capture_output=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"'devices': {devices}" in proc.stderr, proc.stderr[-3000:]
    runs[devices] = {"history": json.loads((workdir / "history.json").read_text()),
                     "metrics": json.loads((workdir / "metrics.json").read_text())}
  one, two = runs[1], runs[2]
  assert [h["step"] for h in two["history"]] == [h["step"] for h in one["history"]] == [1, 2, 3, 4]
  for key in ("loss", "ordloss", "gradloss"):
    np.testing.assert_allclose([h[key] for h in two["history"]],
                               [h[key] for h in one["history"]], rtol=2e-3, err_msg=key)
  for method in ("green", "pos"):  # no model: the same windows give the same numbers
    assert two["metrics"][method] == one["metrics"][method]
  for method in ("meta_rppg", "no_adaptation"):
    a, b = two["metrics"][method]["test"], one["metrics"][method]["test"]
    assert a["num_windows"] == b["num_windows"]
    np.testing.assert_allclose(a["mae"], b["mae"], atol=0.5, err_msg=method)


def test_shard_config_errors():
  """Mesh problems are ConfigErrors naming the field, before any work (in-process, 1 device)."""
  import jax  # pylint: disable=g-import-not-at-top
  from metarppg_jax import sharding  # pylint: disable=g-import-not-at-top
  from metarppg_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  config = _config(FAST)
  config.mesh.data = jax.device_count() + 1
  with pytest.raises(ConfigError, match="mesh.data"):
    sharding.make_mesh(config)
  config.mesh.data = -1
  config.data.tasks_per_batch = 3
  mesh = sharding.make_mesh(config)  # 3 tasks over 1 device is fine
  assert mesh.shape == {"data": jax.device_count()}
  os.environ.pop(sharding.ENV_PROCESS_ID, None)
  env = {sharding.ENV_COORDINATOR: "127.0.0.1:1", sharding.ENV_NUM_PROCESSES: "2"}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    with pytest.raises(ConfigError, match=sharding.ENV_PROCESS_ID):
      sharding.initialize_distributed(config)
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  assert not sharding.initialize_distributed(config)  # one process: nothing to start


if __name__ == "__main__":
  worker(json.loads(sys.argv[1]))
