"""Devices, meshes and shardings: data-parallel meta-training over all devices and hosts.

One `jax.sharding.Mesh` over every device of every process, one axis `"data"`. The batch of
tasks (and the batch of evaluation videos) is split over it along its leading axis;
parameters, batch statistics, optimizer states, the prototype and the step counters are
replicated. The step is the single-device program: `jit` with explicit in/out shardings lets
GSPMD insert the collectives (all-reduces of the gradients, of the batch-norm moments, of the
loss means), so every device holds the same replicated state after each step and the result is
the one-device result up to float32 reduction order.

The LSTM state (h, c) f32[4, N, 60] has a task axis. It is sharded on N like the batch (when N
divides evenly over the mesh), so that with `meta.lstm_state_rule="given"` task i's state sits
on the device that holds task i; with the default "mean" rule its mean over N is one small
all-reduce. It is 2 x 4 x N x 60 floats either way: the choice is about locality, not memory.

Multi-host (`initialize_distributed`): jax's own multi-controller runtime. Every process runs
the same program on its local devices, reads its own shard of the tasks
(`input_pipeline.train_iterator(..., mesh=...)`, grain per-process sharding) and assembles the
global batch with `jax.make_array_from_process_local_data` (`input_pipeline.shard_batch`).
Checkpoints (orbax) are written cooperatively, every array once; `checkpoints.restore_*` onto
a target whose leaves carry the new mesh's shardings restores onto any device count.

  initialize_distributed(config) -> bool
  make_mesh(config, devices=None) -> Mesh
  replicated(mesh), data_sharded(mesh) -> NamedSharding
  train_state_shardings(state, mesh) -> pytree of NamedSharding (state or its eval_shape)
  batch_shardings(batch, mesh) -> pytree of NamedSharding
  put_replicated(x, mesh) -> x replicated on the mesh
  shard_train_state(state, mesh) -> state on the mesh
  create_sharded_train_state(config, key, mesh, *, num_tasks) -> state created on the mesh
  jit_sharded_step(step_fn, mesh, state, batch) -> jitted step(state, batch) -> (state, metrics)
  sharded_evaluate(config, mesh, *, adapt) -> evaluate(state, videos) -> dict
  to_host(tree) -> numpy tree (gathers arrays spread over several processes)
"""

import functools
import os
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import logging
import jax
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from metarppg_jax import compile_options
from metarppg_jax.errors import ConfigError

PyTree = Any
DATA = "data"

# The environment a launcher may set instead of the config (JAX reads the first itself).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


# --------------------------------------------------------------------------------------------
# Processes and the mesh.
# --------------------------------------------------------------------------------------------

def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"environment variable {name}={value!r}: must be an integer") from None


def _cluster_detected() -> bool:
  """A multi-process SLURM or Open MPI job: JAX finds coordinator and ranks by itself."""
  slurm = os.environ.get("SLURM_JOB_ID") and (_env_int("SLURM_NTASKS") or 1) > 1
  ompi = (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1
  return bool(slurm or ompi)


def initialize_distributed(config, *, initialization_timeout: int = 300) -> bool:
  """Starts JAX's multi-controller runtime when this is one process of several.

  Where the processes come from, first match wins:
    1. config.mesh.num_processes > 1: config.mesh.coordinator_address ("host:port" of process
       0), num_processes, process_id;
    2. the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (all three);
    3. a multi-process SLURM or Open MPI job (JAX's own cluster detection);
  otherwise one process: nothing to do. Call it before any other JAX call (it must precede
  the first use of the devices). Returns whether the distributed runtime is on.

  Raises:
    ConfigError: an incomplete or inconsistent set of values.
  """
  if jax.distributed.is_initialized():
    return True
  mesh = config.mesh
  kwargs = None
  if mesh.num_processes > 1:
    if not mesh.coordinator_address:
      raise ConfigError("mesh.coordinator_address: needed when mesh.num_processes > 1 "
                        "(host:port of process 0, reachable from every host)")
    if not 0 <= mesh.process_id < mesh.num_processes:
      raise ConfigError(f"mesh.process_id={mesh.process_id}: must be in [0, "
                        f"mesh.num_processes={mesh.num_processes})")
    kwargs = dict(coordinator_address=mesh.coordinator_address,
                  num_processes=mesh.num_processes, process_id=mesh.process_id)
  else:
    env = {k: os.environ.get(k) for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)}
    given = {k: v for k, v in env.items() if v}
    if given and len(given) < len(env):
      missing = sorted(set(env) - set(given))
      raise ConfigError(f"environment sets {sorted(given)} but not {missing}: set all three "
                        "(or use --config.mesh.*)")
    if given:
      num, pid = _env_int(ENV_NUM_PROCESSES), _env_int(ENV_PROCESS_ID)
      if num < 1 or not 0 <= pid < num:
        raise ConfigError(f"{ENV_PROCESS_ID}={pid} must be in [0, {ENV_NUM_PROCESSES}={num})")
      if num > 1:
        kwargs = dict(coordinator_address=env[ENV_COORDINATOR], num_processes=num,
                      process_id=pid)
    elif _cluster_detected():
      kwargs = {}
  if kwargs is None:
    return False
  jax.distributed.initialize(**kwargs, initialization_timeout=initialization_timeout)
  logging.info("process %d of %d; %d local devices, %d in all", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def make_mesh(config, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """The 1-D mesh ("data",) over `config.mesh.data` devices (-1: all of every process).

  `devices` (default `jax.devices()`) picks the pool. With several processes the mesh spans
  all devices (a mesh over a subset would leave processes without work).

  Raises:
    ConfigError: more devices asked for than there are, a subset with several processes, or
      data.tasks_per_batch not divisible by the mesh size.
  """
  pool = list(jax.devices() if devices is None else devices)
  size = config.mesh.data
  if size == -1:
    size = len(pool)
  if size > len(pool):
    raise ConfigError(f"mesh.data={size}: only {len(pool)} devices are available")
  if jax.process_count() > 1 and size != len(pool):
    raise ConfigError(f"mesh.data={size}: with {jax.process_count()} processes the mesh must "
                      f"span all {len(pool)} devices (-1)")
  tasks = config.data.tasks_per_batch
  if tasks % size:
    raise ConfigError(f"data.tasks_per_batch={tasks} cannot be split over the {size} devices "
                      f"of the mesh: use a multiple of {size} (or set mesh.data)")
  if size == len(pool) and devices is None:
    grid = mesh_utils.create_device_mesh((size,))  # topology-aware order on accelerators
  else:
    grid = np.asarray(pool[:size])
  return Mesh(grid, (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Split along the leading axis over the mesh's "data" axis."""
  return NamedSharding(mesh, P(DATA))


# --------------------------------------------------------------------------------------------
# Which array goes where.
# --------------------------------------------------------------------------------------------

def _data_size(mesh: Mesh) -> int:
  return mesh.shape[DATA]


def _is_lstm_state(path) -> bool:
  return any(getattr(k, "name", None) == "lstm_state" or getattr(k, "key", None) == "lstm_state"
             for k in path)


def train_state_shardings(state: PyTree, mesh: Mesh) -> PyTree:
  """NamedShardings for a `state.TrainState` (or its `jax.eval_shape`): the LSTM state (h, c)
  f32[4, N, 60] on its task axis N when N divides over the mesh, everything else replicated."""
  size = _data_size(mesh)

  def spec(path, leaf):
    shape = np.shape(leaf)
    if _is_lstm_state(path) and len(shape) == 3 and shape[1] % size == 0:
      return NamedSharding(mesh, P(None, DATA))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(spec, state)


def batch_shardings(batch: PyTree, mesh: Mesh) -> PyTree:
  """NamedShardings for a batch: leaves whose leading (task / video) axis divides over the
  mesh are split on it, other leaves (e.g. the reference config's `test_x` of fewshots + N
  windows, or scalars) replicated."""
  size = _data_size(mesh)

  def spec(leaf):
    shape = np.shape(leaf)
    if shape and shape[0] % size == 0:
      return data_sharded(mesh)
    return replicated(mesh)

  return jax.tree.map(spec, batch)


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _put(x, sharding: NamedSharding):
  """One leaf onto `sharding`: a global array is resharded; a host or process-local value
  (the same in every process) is cut into the shards this process holds."""
  if _is_key(x):
    return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.device_put(x, sharding)
  host = np.asarray(jax.device_get(x))
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_replicated(x, mesh: Mesh) -> jax.Array:
  """A host value (the same in every process) as an array replicated over the mesh."""
  return _put(x, replicated(mesh))


def shard_train_state(state: PyTree, mesh: Mesh) -> PyTree:
  """`state` placed per `train_state_shardings` (from host values, single-device arrays, or
  arrays on another mesh; in a multi-process run every process passes the same values)."""
  return jax.tree.map(_put, state, train_state_shardings(state, mesh))


def shard_host_batch(batch: PyTree, mesh: Mesh) -> PyTree:
  """A batch every process holds whole (e.g. tests, evaluation videos) -> global arrays placed
  per `batch_shardings`. For per-process shards of the training data use
  `input_pipeline.shard_batch` instead."""
  return jax.tree.map(_put, batch, batch_shardings(batch, mesh))


def create_sharded_train_state(config, key: jax.Array, mesh: Mesh, *, num_tasks: int) -> PyTree:
  """`state.create_train_state` run under jit with the state's shardings as outputs: every
  device initialises its own copy (no host round trip, works across processes)."""
  from metarppg_jax import state as state_lib  # pylint: disable=g-import-not-at-top  (models)
  create = functools.partial(state_lib.create_train_state, config, num_tasks=num_tasks)
  shardings = train_state_shardings(jax.eval_shape(create, key), mesh)
  return compile_options.jit(create, out_shardings=shardings)(key)


# --------------------------------------------------------------------------------------------
# The sharded programs.
# --------------------------------------------------------------------------------------------

def jit_sharded_step(step_fn: Callable, mesh: Mesh, state: PyTree, batch: PyTree) -> Callable:
  """`step_fn(state, batch) -> (state, metrics)` (e.g. `meta.meta_train_step(config)`)
  under jit with explicit shardings: the state per `train_state_shardings` in and out (its
  buffers donated), the batch per `batch_shardings`, the metrics replicated.

  `state` and `batch` (arrays or `jax.ShapeDtypeStruct`s) give the shapes the shardings are
  made for. Feed batches from `input_pipeline.shard_batch` / `train_iterator(mesh=...)` (or
  `shard_host_batch`) and the state from `shard_train_state` / `create_sharded_train_state`.
  """
  state_sh = train_state_shardings(state, mesh)
  batch_sh = batch_shardings(batch, mesh)
  return compile_options.jit(step_fn, in_shardings=(state_sh, batch_sh),
                              out_shardings=(state_sh, replicated(mesh)), donate_argnums=0)


def sharded_evaluate(config, mesh: Mesh, *, adapt: bool) -> Callable[[PyTree, np.ndarray], dict]:
  """`inference.evaluate_videos` with the videos split over the mesh.

  Returns evaluate(state, videos f32[V, S + Q, T, H, W, C]) -> numpy dict of
  `inference.evaluate_videos` (V rows), for a state placed by `shard_train_state`. `videos` is
  a host array, the same in every process; V need not divide over the mesh: it is padded with
  copies of the last video (each video is adapted and predicted on its own, so padding changes
  no other video's result) and the padding cut off. The program is `evaluate_videos`' own jit
  (compiled once per padded shape and kept across calls); the inputs' shardings place it.
  """
  from metarppg_jax import inference  # pylint: disable=g-import-not-at-top
  size = _data_size(mesh)

  def evaluate(state: PyTree, videos: np.ndarray) -> dict:
    videos = np.asarray(videos)
    num = videos.shape[0]
    pad = -num % size
    if pad:
      videos = np.concatenate([videos, np.repeat(videos[-1:], pad, axis=0)], axis=0)
    out = inference.evaluate_videos(config, state, _put(videos, data_sharded(mesh)),
                                    adapt=adapt)
    return jax.tree.map(lambda a: a[:num], to_host(out))

  return evaluate


def to_host(tree: PyTree) -> PyTree:
  """Numpy copies of a tree of arrays, gathering arrays whose shards live in several
  processes (a collective: every process must call it)."""
  def get(x):
    if _is_key(x):
      x = jax.random.key_data(x)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(get, tree)


def describe(mesh: Mesh) -> Mapping[str, Any]:
  """For logs and benchmark records: processes, devices, mesh shape and platform."""
  return {"processes": jax.process_count(), "devices": int(mesh.devices.size),
          "local_devices": jax.local_device_count(), "mesh": dict(mesh.shape),
          "platform": mesh.devices.flat[0].platform}
