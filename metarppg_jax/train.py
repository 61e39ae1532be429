"""Training: the meta-learning loop with logging, checkpoints, resume and validation.

`train_and_evaluate(config, workdir)` validates the config, builds (on first use) and loads
the dataset, resumes from the newest good checkpoint in the workdir if there is one, runs
`optim.num_epochs x optim.steps_per_epoch` outer iterations of `meta.meta_train_step`,
and evaluates at the end (`evaluate.evaluate`).

- The step runs inside one jitted program (`_guarded`) that sets the epoch from the step
  (1-based; it drives the per-epoch cosine schedules) and, with `optim.nonfinite="skip"`,
  keeps the previous state (`jnp.where`) when a loss or an updated weight is not finite.
- The host waits for the device only when it needs the metrics: every `log_every_steps`
  steps, before a checkpoint or a validation, and at the end. Every step's metrics still
  reach the history (WORKDIR/history.json, `history.py`).
- Checkpoints (`checkpoints.py`): every `checkpoint.every_steps` steps and at the end, with the
  data iterator's position, so a resumed run continues exactly like an uninterrupted one;
  every `eval.every_epochs` epochs the validation split's MAE (Meta-rPPG, per window) is
  computed and the best state kept.
- Logging: TensorBoard event files under WORKDIR/tensorboard, one progress bar (loss, step
  time, ETA), a line a checkpoint and a validation (`console.say`).
- Devices (`sharding.py`): one mesh over every device of every process (`config.mesh`); the
  batch of tasks is split over it, the state replicated, the step jitted with explicit
  shardings. One CPU is the one-device mesh: the same program.
- A non-finite loss stops training with a message naming the step and the loss term, leaving
  the last good checkpoint as it was (`optim.nonfinite="stop"`: the metrics are checked before
  every checkpoint); with "skip" the step's update is dropped and training goes on.
"""

import math
import os
import pathlib
import time
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorboardX
import tqdm

from metarppg_jax import checkpoints
from metarppg_jax import configuration
from metarppg_jax import console
from metarppg_jax import evaluate as evaluate_lib
from metarppg_jax import history as history_lib
from metarppg_jax import meta
from metarppg_jax import sharding
from metarppg_jax.data import input_pipeline
from metarppg_jax.data import preprocess
from metarppg_jax.data import splits
from metarppg_jax.errors import MetaRPPGError
from metarppg_jax.state import TrainState

_STEP_KEYS = ("x", "targets", "valid")  # what meta's step takes from a training batch


class NonFiniteLoss(MetaRPPGError):
  """Training produced a NaN/inf loss (optim.nonfinite="stop")."""


def _primary() -> bool:
  """Files other than checkpoints are written by process 0 only (orbax coordinates those)."""
  return jax.process_index() == 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains (or resumes) the configured model in `workdir`, then evaluates it.

  Returns:
    The results of `evaluate.evaluate` on the final state (also in WORKDIR/metrics.json).
  Raises:
    ConfigError before any work for a bad config; NonFiniteLoss when a loss is NaN/inf and
    optim.nonfinite="stop" (the last checkpoint is the last good state).
  """
  configuration.validate(config)
  workdir = configuration.prepare_workdir(workdir)  # ConfigError if it cannot be written
  sources = splits.load(config, workdir)
  state = train(config, workdir, sources=sources)
  results = evaluate_lib.evaluate(config, workdir, state=state, sources=sources)
  writer = tensorboardX.SummaryWriter(os.fspath(workdir / "tensorboard"),
                                      write_to_disk=_primary())
  for method, by_split in results["metrics"].items():
    for split, m in by_split.items():
      if math.isfinite(m.get("mae", float("nan"))):
        writer.add_scalar(f"{split}/{method}/mae", m["mae"], int(state.step))
  writer.close()
  return results


# --------------------------------------------------------------------------------------------
# Before the loop: data, state, the jitted step.
# --------------------------------------------------------------------------------------------

def _test_windows(config: ml_collections.ConfigDict, source) -> dict | None:
  """With `meta.test_in_step` (the reference config): the held-out video's first
  fewshots + N windows that the original's in-step transductive test uses, from frame 0."""
  if not config.meta.test_in_step:
    return None
  video = next(input_pipeline.eval_videos(
      source, window=preprocess.WINDOW,
      num_windows=config.meta.fewshots + config.data.tasks_per_batch,
      normalization=config.data.normalization))
  return {"test_x": np.asarray(video["x"]), "test_targets": np.asarray(video["targets"])}


def _checked_sources(config: ml_collections.ConfigDict, sources: dict):
  """(train source, eval source), each long enough for its windows (ConfigError if not)."""
  out = []
  for split, purpose in ((config.data.train_split, "train"), (config.data.eval_split, "eval")):
    source = splits.source(config, sources, split)
    configuration.check_against_data(config, split=split,
                                     num_frames=splits.shortest_video(source),
                                     purpose=purpose, source=config.data.dataset)
    out.append(source)
  return tuple(out)


def _initial_state(config, workdir, mesh, data_iter) -> TrainState:
  """The newest good checkpoint of the workdir (and the data position it saved), or a fresh
  state after the original's prototype and LSTM-state update on the first batch's window 0
  (the iterator rewound, so training still starts with that batch)."""
  # The restore target carries the mesh's shardings: a checkpoint written on any device
  # count lands replicated (and its LSTM state split) on this one.
  state = sharding.shard_train_state(checkpoints.target_state(config), mesh)
  restored = checkpoints.restore_latest(workdir, state)
  if restored is not None:
    if restored.data_state is not None:
      data_iter.set_state(restored.data_state)
    console.say("resumed from %s (step %d)", restored.path, restored.step)
    return restored.state
  position = data_iter.get_state()
  state = meta.update_prototype(config, state, next(data_iter)["x"][:, 0])
  data_iter.set_state(position)
  return sharding.shard_train_state(state, mesh)


def _all_finite(tree) -> jax.Array:
  """Whether every float leaf is finite: a diverging update can overflow the weights while
  the loss it was computed from is still finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.floating)]))


def _guarded(step_fn: Callable, steps_per_epoch: int, skip: bool) -> Callable:
  """step(state, batch) -> (state, {"metrics", "params_finite"}): the epoch set from the step
  first; with `skip` a step whose metrics or updated weights are not finite leaves the state as
  it was but for the step count."""
  def step(state, batch):
    state = state.replace(epoch=(state.step // steps_per_epoch + 1).astype(state.epoch.dtype))
    new, metrics = step_fn(state, batch)
    params_finite = _all_finite(new.params)
    if skip:
      ok = params_finite & _all_finite(metrics)
      kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
      new = kept.replace(step=new.step)
    return new, {"metrics": metrics, "params_finite": params_finite}
  return step


# --------------------------------------------------------------------------------------------
# The loop.
# --------------------------------------------------------------------------------------------

class _Run(NamedTuple):
  """What the loop writes to and feeds the step with, besides the state and the data."""
  workdir: pathlib.Path
  mesh: jax.sharding.Mesh
  mgrs: checkpoints.Managers
  writer: tensorboardX.SummaryWriter
  test_windows: dict | None      # the reference config's in-step test, else None
  validation: Any                # evaluate.EvalData of the validation split, or None


def _records(pending: list, elapsed_s: float) -> list[dict]:
  """History records of the steps in `pending` [(step, epoch, device output)], fetched in one
  transfer; the interval's wall time is shared equally among its steps. Each record carries
  "_params_finite" until `_accept` drops it."""
  fetched = sharding.to_host([out for _, _, out in pending])
  records = []
  for (done, epoch, _), out in zip(pending, fetched):
    values = {k: float(np.mean(v)) for k, v in out["metrics"].items()
              if np.issubdtype(np.asarray(v).dtype, np.number)}
    records.append({"step": done, "epoch": epoch, **values,
                    "step_time_s": elapsed_s / len(pending),
                    "_params_finite": bool(out["params_finite"])})
  return records


def _accept(new: list[dict], records: list[dict], nonfinite: str,
            last_checkpoint: int | None) -> None:
  """Appends `new` to `records`. A step with a non-finite loss or weights raises
  NonFiniteLoss ("stop"; the steps before it are kept) or is logged as skipped ("skip")."""
  for r in new:
    finite_params = r.pop("_params_finite")
    bad = [f"{k}={v}" for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad and not finite_params:
      bad = ["the updated parameters are not finite"]  # finite losses, overflowed update
    where = f"step {r['step']} (epoch {r['epoch']})"
    if bad and nonfinite == "stop":
      kept = ("no checkpoint was written before it" if last_checkpoint is None else
              f"the last checkpoint (step {last_checkpoint}) is the last good state")
      raise NonFiniteLoss(
          f"non-finite loss at {where}: {', '.join(bad)}; training stopped, {kept}. Lower "
          "optim.lr, or set optim.nonfinite=skip to drop such steps")
    if bad:
      logging.warning("non-finite loss at %s: %s; step skipped", where, ", ".join(bad))
    records.append(r)


def _log(records: list[dict], writer, bar, log_every: int, total: int) -> None:
  """TensorBoard scalars of every `log_every`-th step (and the last); the bar's numbers."""
  for r in records:
    if r["step"] % log_every == 0 or r["step"] == total:
      for k, v in r.items():
        if k not in ("step", "epoch"):
          writer.add_scalar(f"train/{k}", v, r["step"])
  last = records[-1]
  bar.set_postfix(loss=f"{last['loss']:.4g}", step_s=f"{last['step_time_s']:.3g}")
  bar.update(len(records))


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          sources: dict | None = None) -> TrainState:
  """The training loop (module docstring); resumes from the workdir's newest good checkpoint.

  Returns:
    The final TrainState (also the last checkpoint).
  Raises:
    NonFiniteLoss as `train_and_evaluate`.
  """
  configuration.validate(config)
  workdir = configuration.prepare_workdir(workdir)  # ConfigError if it cannot be written
  if _primary():
    configuration.write(config, workdir)
  sources = splits.load(config, workdir) if sources is None else sources
  train_source, eval_source = _checked_sources(config, sources)
  mesh = sharding.make_mesh(config)
  data_iter = input_pipeline.train_iterator(config, train_source, mesh=mesh)
  state = _initial_state(config, workdir, mesh, data_iter)
  console.say("devices: %s", sharding.describe(mesh))
  test_windows = _test_windows(config, sources.get("validation") or eval_source)
  validation = None
  if config.eval.every_epochs and sources.get("validation") is not None:
    validation = evaluate_lib.load_eval_data(config, sources["validation"], "validation",
                                             rgb=False)
  run = _Run(workdir, mesh,
             checkpoints.managers(workdir, max_to_keep=config.checkpoint.max_to_keep,
                                  async_save=config.checkpoint.async_save),
             tensorboardX.SummaryWriter(os.fspath(workdir / "tensorboard"),
                                        write_to_disk=_primary()),
             test_windows and sharding.shard_host_batch(test_windows, mesh), validation)
  records = history_lib.read(workdir, upto_step=int(state.step))
  try:
    state = _loop(config, run, state, data_iter, records)
    checkpoints.wait(run.mgrs)
  finally:
    checkpoints.close(run.mgrs)
    run.writer.close()
    if _primary():
      history_lib.write(workdir, records)
  return state


def _loop(config, run: _Run, state: TrainState, data_iter, records: list[dict]) -> TrainState:
  """Steps from state.step to the end, appending every step's record to `records`."""
  per_epoch = config.optim.steps_per_epoch
  total = config.optim.num_epochs * per_epoch
  start = int(state.step)
  guarded = _guarded(meta.meta_train_step(config), per_epoch,
                     config.optim.nonfinite == "skip")
  train_step = None  # jitted with the shardings of the first batch
  pending, since = [], time.perf_counter()
  with tqdm.tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                 disable=None) as bar:
    for done in range(start + 1, total + 1):
      epoch = (done - 1) // per_epoch + 1
      batch = {k: v for k, v in next(data_iter).items() if k in _STEP_KEYS}
      batch.update(run.test_windows or {})
      if train_step is None:
        train_step = sharding.jit_sharded_step(guarded, run.mesh, state, batch)
      state, out = train_step(state, batch)
      pending.append((done, epoch, out))
      validate = (run.validation is not None and done % per_epoch == 0
                  and (done // per_epoch) % config.eval.every_epochs == 0)
      save = done % config.checkpoint.every_steps == 0 or done == total or validate
      if not (save or done % config.log_every_steps == 0):
        continue
      new = _records(pending, time.perf_counter() - since)
      _accept(new, records, config.optim.nonfinite, run.mgrs.latest.latest_step())
      _log(new, run.writer, bar, config.log_every_steps, total)
      pending, since = [], time.perf_counter()
      val_mae = None
      if validate:
        val_mae = evaluate_lib.validation_mae(config, state, run.validation, mesh=run.mesh)
        run.writer.add_scalar("validation/mae", val_mae, done)
        records[-1]["val_mae"] = val_mae
        console.say("epoch %d: validation MAE %.3f bpm", epoch, val_mae)
      if save:
        if _primary():
          history_lib.write(run.workdir, records)
        checkpoints.save(run.mgrs, state, step=done, data_state=data_iter.get_state(),
                         info={"epoch": epoch}, val_mae=val_mae)
        console.say("checkpoint saved: step %d", done)
  return state
