"""Checkpoints: orbax managers for the latest and the best state, resume, original import.

Layout under the workdir:

  checkpoints/latest/<step>/   every `checkpoint.every_steps` steps and at the end; the newest
                               `checkpoint.max_to_keep` are kept
  checkpoints/best/<step>/     the one with the lowest validation MAE (`val_mae`)

Each step directory holds three items: `state` (the TrainState as a tree of arrays), `data`
(the training data iterator's position, JSON) and `info` (step, epoch, validation MAE, JSON).
With the data position and the RNG in the checkpoint, a resumed run continues exactly like an
uninterrupted one.

Restoring checks the checkpoint against the target state before reading: a checkpoint written
with another config (shapes or dtypes differ) is refused with a `CheckpointError` naming the
mismatching leaves. A step that cannot be read (a truncated or corrupt file) is reported and
the previous good one is used (`restore`, which="latest").

An original release checkpoint (`.pth` / `.npz`) converts into a state through
`original_checkpoint.load` and `state.state_from_original` (`load_original`), and into an
orbax checkpoint evaluate can use with `import_original`.
"""

import os
import pathlib
from typing import Any, NamedTuple

from absl import logging
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from metarppg_jax.errors import CheckpointError

PyTree = Any
LATEST = "latest"
BEST = "best"
ORIGINAL_SUFFIXES = (".pth", ".pt", ".npz")


class Managers(NamedTuple):
  """The two orbax managers of a workdir."""
  latest: ocp.CheckpointManager
  best: ocp.CheckpointManager


class Restored(NamedTuple):
  """A restored checkpoint: the state, the data iterator's position (None when the source had
  none, e.g. an original checkpoint), the step and where it came from."""
  state: PyTree
  data_state: Any
  step: int
  path: str


def checkpoint_dir(workdir: str | os.PathLike, which: str = LATEST) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / "checkpoints" / which


def _manager(directory: pathlib.Path, *, max_to_keep: int, async_save: bool, best: bool,
             read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else max_to_keep,
      enable_async_checkpointing=async_save,
      best_fn=(lambda m: m["val_mae"]) if best else None,
      best_mode="min",
      keep_checkpoints_without_metrics=False,
      create=not read_only,
      read_only=read_only,  # a reader deletes, creates and writes nothing
  )
  handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
              "info": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def managers(workdir: str | os.PathLike, *, max_to_keep: int = 3,
             async_save: bool = True) -> Managers:
  """Managers for WORKDIR/checkpoints/{latest,best}."""
  return Managers(
      _manager(checkpoint_dir(workdir, LATEST), max_to_keep=max_to_keep, async_save=async_save,
               best=False),
      _manager(checkpoint_dir(workdir, BEST), max_to_keep=1, async_save=async_save, best=True))


# --------------------------------------------------------------------------------------------
# State <-> plain tree of arrays.
# --------------------------------------------------------------------------------------------

def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_tree(state: PyTree) -> dict:
  """The state as nested dicts of arrays (typed PRNG keys as their raw uint32 data)."""
  tree = flax.serialization.to_state_dict(state)
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_tree(target: PyTree, tree: dict) -> PyTree:
  """Inverse of `to_tree` onto the structure (and key types) of `target`."""
  target_tree = flax.serialization.to_state_dict(target)
  tree = jax.tree.map(
      lambda t, x: jax.random.wrap_key_data(jnp.asarray(x), impl=jax.random.key_impl(t))
      if _is_key(t) else jnp.asarray(x, dtype=t.dtype), target_tree, tree)
  return flax.serialization.from_state_dict(target, tree)


def _abstract(tree: dict) -> dict:
  """Restore targets; a leaf that is a jax.Array brings its sharding, so a checkpoint written
  on one mesh restores onto the target's (another device count; `sharding.shard_train_state`)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype,
      sharding=x.sharding if isinstance(x, jax.Array) else None), tree)


def _leaf_names(tree) -> dict[str, Any]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in flat}


def _check_fits(saved_meta: PyTree, target: dict, source: str) -> None:
  """CheckpointError naming the leaves whose shape/dtype differ, or that only one side has."""
  saved = _leaf_names(saved_meta)
  wanted = _leaf_names(target)
  problems = []
  for name in sorted(set(wanted) - set(saved)):
    problems.append(f"{name}: missing from the checkpoint")
  for name in sorted(set(saved) - set(wanted)):
    problems.append(f"{name}: in the checkpoint but not in this model")
  for name in sorted(set(saved) & set(wanted)):
    s, w = saved[name], wanted[name]
    s_shape, w_shape = tuple(getattr(s, "shape", ())), tuple(np.shape(w))
    s_dtype = np.dtype(getattr(s, "dtype", np.float32))
    w_dtype = np.dtype(w.dtype)
    if s_shape != w_shape:
      problems.append(f"{name}: shape {list(s_shape)} in the checkpoint, {list(w_shape)} here")
    elif s_dtype != w_dtype:
      problems.append(f"{name}: dtype {s_dtype} in the checkpoint, {w_dtype} here")
  if problems:
    shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
    raise CheckpointError(
        f"{source}: checkpoint does not fit this config (was it written with another "
        "config?):\n  " + "\n  ".join(shown))


# --------------------------------------------------------------------------------------------
# Save.
# --------------------------------------------------------------------------------------------

def save(mgrs: Managers, state: PyTree, *, step: int, data_state: Any = None,
         info: dict | None = None, val_mae: float | None = None) -> None:
  """Saves `state` as step `step` (asynchronously when the managers are async).

  data_state: the data iterator's position (JSON-serialisable), stored for exact resume.
  val_mae: validation MAE; when given (and finite) the state is also offered to the best
    manager, which keeps the lowest.
  """
  tree = to_tree(state)
  info = dict(info or {}, step=int(step))
  if val_mae is not None:
    info["val_mae"] = float(val_mae)
  args = ocp.args.Composite(state=ocp.args.StandardSave(tree),
                            data=ocp.args.JsonSave({"iterator": data_state}),
                            info=ocp.args.JsonSave(info))
  if mgrs.latest.latest_step() != step:
    mgrs.latest.save(step, args=args)
  if val_mae is not None and np.isfinite(val_mae) and mgrs.best.latest_step() != step:
    mgrs.best.save(step, args=args, metrics={"val_mae": float(val_mae)})


def wait(mgrs: Managers) -> None:
  """Blocks until pending asynchronous saves are on disk."""
  mgrs.latest.wait_until_finished()
  mgrs.best.wait_until_finished()


def close(mgrs: Managers) -> None:
  mgrs.latest.close()
  mgrs.best.close()


# --------------------------------------------------------------------------------------------
# Restore.
# --------------------------------------------------------------------------------------------

def _restore_step(mgr: ocp.CheckpointManager, step: int, target: PyTree) -> Restored:
  directory = pathlib.Path(mgr.directory) / str(step)
  tree = to_tree(target)
  try:
    meta = mgr.item_metadata(step)
    saved_meta = meta["state"] if meta is not None else None
  except Exception as e:  # pylint: disable=broad-except  (metadata unreadable: corrupt)
    raise _Corrupt(f"{directory}: checkpoint is corrupt or truncated: its metadata cannot be "
                   f"read ({_brief(e)})") from e
  if saved_meta is None:
    raise _Corrupt(f"{directory}: checkpoint is corrupt or truncated: no state metadata")
  saved_meta = getattr(saved_meta, "tree", saved_meta)
  _check_fits(saved_meta, tree, str(directory))
  try:
    out = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(tree)),
        data=ocp.args.JsonRestore(),
        info=ocp.args.JsonRestore()))
    state = from_tree(target, out["state"])
    jax.block_until_ready(state)
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore errors vary)
    raise _Corrupt(f"{directory}: checkpoint is corrupt or truncated ({_brief(e)})") from e
  bad = [n for n, x in _leaf_names(to_tree(state)).items()
         if jnp.issubdtype(x.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(x)))]
  if bad:
    raise _Corrupt(f"{directory}: checkpoint holds non-finite values in {bad[:5]}")
  data = out["data"] or {}
  return Restored(state, data.get("iterator"), int(step), str(directory))


class _Corrupt(CheckpointError):
  """A checkpoint step that cannot be read (as opposed to one that does not fit)."""


def _brief(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _restore_newest_good(mgr: ocp.CheckpointManager, target: PyTree) -> Restored | None:
  """The newest readable step; corrupt ones are logged and skipped. None when there is none."""
  steps = sorted(mgr.all_steps(), reverse=True)
  errors = []
  for step in steps:
    try:
      restored = _restore_step(mgr, step, target)
    except _Corrupt as e:
      logging.warning("%s; trying the previous checkpoint", e)
      errors.append(str(e))
      continue
    if errors:
      logging.warning("restored step %d from %s after skipping %d unreadable checkpoint(s)",
                      step, mgr.directory, len(errors))
    return restored
  if errors:
    raise CheckpointError("no readable checkpoint in "
                          f"{mgr.directory}:\n  " + "\n  ".join(errors))
  return None


def latest_step(workdir: str | os.PathLike) -> int | None:
  directory = checkpoint_dir(workdir, LATEST)
  if not directory.is_dir():
    return None
  mgr = _manager(directory, max_to_keep=1, async_save=False, best=False, read_only=True)
  try:
    return mgr.latest_step()
  finally:
    mgr.close()


def restore_latest(workdir: str | os.PathLike, target: PyTree) -> Restored | None:
  """The newest good checkpoint of WORKDIR/checkpoints/latest onto `target`'s structure, or
  None when the workdir has none (a fresh run)."""
  directory = checkpoint_dir(workdir, LATEST)
  if not directory.is_dir():
    return None
  mgr = _manager(directory, max_to_keep=1, async_save=False, best=False, read_only=True)
  try:
    return _restore_newest_good(mgr, target)
  finally:
    mgr.close()


def restore_best(workdir: str | os.PathLike, target: PyTree) -> Restored:
  """The checkpoint with the lowest validation MAE in WORKDIR/checkpoints/best."""
  directory = checkpoint_dir(workdir, BEST)
  if not directory.is_dir():
    raise CheckpointError(f"{directory}: no best checkpoint (was validation run during "
                          "training? see eval.every_epochs)")
  mgr = _manager(directory, max_to_keep=1, async_save=False, best=True, read_only=True)
  try:
    step = mgr.best_step()
    if step is None:
      step = mgr.latest_step()
    if step is None:
      raise CheckpointError(f"{directory}: no best checkpoint")
    return _restore_step(mgr, step, target)
  finally:
    mgr.close()


def restore_path(path: str | os.PathLike, target: PyTree) -> Restored:
  """A checkpoint given by path: one step directory (`.../checkpoints/latest/40`), a manager
  directory (its newest good step), or a workdir (its latest)."""
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise CheckpointError(f"{path}: no such checkpoint")
  if (path / "checkpoints" / LATEST).is_dir():
    restored = restore_latest(path, target)
    if restored is None:
      raise CheckpointError(f"{path}: the workdir holds no checkpoint")
    return restored
  if path.name.isdigit() and (path / "state").exists():
    mgr = _manager(path.parent, max_to_keep=1, async_save=False, best=False, read_only=True)
    try:
      if int(path.name) not in mgr.all_steps():
        raise CheckpointError(f"{path}: not a finished checkpoint (an interrupted save?)")
      return _restore_step(mgr, int(path.name), target)
    finally:
      mgr.close()
  mgr = _manager(path, max_to_keep=1, async_save=False, best=False, read_only=True)
  try:
    restored = _restore_newest_good(mgr, target)
  finally:
    mgr.close()
  if restored is None:
    raise CheckpointError(f"{path}: not a checkpoint (expected a workdir, a checkpoint directory "
                          "or step, or an original .pth/.npz file)")
  return restored


def target_state(config) -> PyTree:
  """A freshly initialised TrainState of `config`: what checkpoints are restored onto."""
  from metarppg_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  return state_lib.create_train_state(config, jax.random.PRNGKey(config.seed),
                                      num_tasks=config.data.tasks_per_batch)


# --------------------------------------------------------------------------------------------
# The original release's checkpoints.
# --------------------------------------------------------------------------------------------

def is_original(path: str | os.PathLike) -> bool:
  return str(path).endswith(ORIGINAL_SUFFIXES)


def load_original(path: str | os.PathLike, config) -> PyTree:
  """A TrainState from an original `.pth` / `.npz` (parameters, batch statistics, prototype,
  LSTM state; optimizer state fresh, step 0)."""
  from metarppg_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from metarppg_jax import original_checkpoint  # pylint: disable=g-import-not-at-top
  original = original_checkpoint.load(path)
  expected_n = config.data.tasks_per_batch
  n = original.lstm_state[0].shape[1]
  if n != expected_n:
    raise CheckpointError(
        f"{path}: its LSTM state (h, c) is for N={n} clips but data.tasks_per_batch="
        f"{expected_n}; set --config.data.tasks_per_batch={n}")
  return state_lib.state_from_original(config, original)


def import_original(path: str | os.PathLike, config, workdir: str | os.PathLike) -> pathlib.Path:
  """Writes an original checkpoint as an orbax checkpoint (step 0) under WORKDIR/checkpoints;
  returns the step directory. `evaluate` then restores it like any other."""
  state = load_original(path, config)
  mgrs = managers(workdir, max_to_keep=1, async_save=False)
  try:
    step = int(getattr(state, "step", 0))
    save(mgrs, state, step=step, info={"imported_from": os.fspath(path)})
    wait(mgrs)
  finally:
    close(mgrs)
  return checkpoint_dir(workdir, LATEST) / str(step)


def restore(config, workdir: str | os.PathLike, target: PyTree) -> Restored:
  """What `config.restore_from` names: "" or "latest" (the workdir's newest good checkpoint),
  "best", a path to an orbax checkpoint, or an original `.pth` / `.npz`.

  Raises CheckpointError when there is nothing to restore.
  """
  source = config.restore_from
  if source in ("", LATEST):
    restored = restore_latest(workdir, target)
    if restored is None:
      raise CheckpointError(
          f"{checkpoint_dir(workdir, LATEST)}: no checkpoint to evaluate; train first, or set "
          "--config.restore_from=PATH (an orbax checkpoint or an original .pth/.npz)")
    return restored
  if source == BEST:
    return restore_best(workdir, target)
  if is_original(source):
    return Restored(load_original(source, config), None, 0, os.fspath(source))
  return restore_path(source, target)

