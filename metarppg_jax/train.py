"""Training: the meta-learning loop with logging, checkpoints, resume and validation.

`train_and_evaluate(config, workdir)` validates the config, builds (on first use) and loads
the dataset, resumes from the newest good checkpoint in the workdir if there is one, runs
`optim.num_epochs x optim.steps_per_epoch` outer iterations of `meta.make_meta_train_step`,
and evaluates at the end (`evaluate.evaluate`).

- The learning rates follow the per-epoch cosine schedule from `state.epoch` (1-based), which
  the loop sets before each epoch's first step.
- Checkpoints (`checkpoints.py`): every `checkpoint.every_steps` steps and at the end, with the
  data iterator's position, so a resumed run continues exactly like an uninterrupted one;
  every `eval.every_epochs` epochs the validation split's MAE (Meta-rPPG, per window) is
  computed and the best state kept.
- Logging: TensorBoard event files under WORKDIR/tensorboard, the metrics history in
  WORKDIR/history.json (the training-curve plot), a progress bar.
- Devices (`sharding.py`): one mesh over every device of every process (`config.mesh`); the
  batch of tasks is split over it, the state replicated, the step jitted with explicit
  shardings. One CPU is the one-device mesh: the same program.
- A non-finite loss stops training with a message naming the step and the loss term, leaving
  the last good checkpoint as it was (`optim.nonfinite="stop"`); with "skip" the step's update
  is dropped and training goes on.
"""

import json
import math
import os
import pathlib
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorboardX
import tqdm

from metarppg_jax import checkpoints
from metarppg_jax import configuration
from metarppg_jax import evaluate as evaluate_lib
from metarppg_jax import meta
from metarppg_jax.state import TrainState
from metarppg_jax import sharding
from metarppg_jax.data import input_pipeline
from metarppg_jax.errors import MetaRPPGError

HISTORY_FILE = evaluate_lib.HISTORY_FILE
_STEP_KEYS = ("x", "targets", "valid")  # what meta's step takes from a training batch


class NonFiniteLoss(MetaRPPGError):
  """Training produced a NaN/inf loss (optim.nonfinite="stop")."""


def _shortest_video(source) -> int:
  return min(int(np.shape(source[i]["frames"])[0]) for i in range(len(source)))


def _test_windows(config: ml_collections.ConfigDict, source) -> dict | None:
  """With `meta.test_in_step` (the reference config): the held-out video's first
  fewshots + N windows that the original's in-step transductive test uses, from frame 0."""
  if not config.meta.test_in_step:
    return None
  video = next(input_pipeline.eval_videos(
      source, window=config.data.window,
      num_windows=config.meta.fewshots + config.data.tasks_per_batch,
      normalization=config.data.normalization))
  return {"test_x": np.asarray(video["x"]), "test_targets": np.asarray(video["targets"])}


def _nonfinite_terms(metrics: dict) -> list[str]:
  return [k for k, v in metrics.items()
          if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.all(np.isfinite(v))]


@jax.jit
def _all_finite(tree) -> jax.Array:
  """Whether every float leaf is finite: a diverging update can overflow the weights while
  the loss it was computed from is still finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves))


def _read_history(workdir: pathlib.Path, upto_step: int) -> list[dict]:
  """The history of the run being resumed, cut at the restored step."""
  path = workdir / HISTORY_FILE
  if not path.is_file() or upto_step == 0:
    return []
  try:
    history = json.loads(path.read_text())
  except json.JSONDecodeError:
    logging.warning("%s is not valid JSON; the training curves restart here", path)
    return []
  return [h for h in history if h.get("step", 0) <= upto_step]


def _primary() -> bool:
  """Files other than checkpoints are written by process 0 only (orbax coordinates those)."""
  return jax.process_index() == 0


def _write_history(workdir: pathlib.Path, history: list[dict]) -> None:
  if not _primary():
    return
  tmp = workdir / (HISTORY_FILE + ".tmp")
  tmp.write_text(json.dumps(history, allow_nan=True))
  os.replace(tmp, workdir / HISTORY_FILE)


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
  sources = evaluate_lib.load_splits(config, workdir)
  state = train(config, workdir, sources=sources)
  results = evaluate_lib.evaluate(config, workdir, state=state, sources=sources)
  writer = tensorboardX.SummaryWriter(os.fspath(workdir / "tensorboard"),
                                      write_to_disk=_primary())
  for method, splits in results["metrics"].items():
    for split, m in splits.items():
      if math.isfinite(m.get("mae", float("nan"))):
        writer.add_scalar(f"{split}/{method}/mae", m["mae"], int(state.step))
  writer.close()
  return results


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
  if sources is None:
    sources = evaluate_lib.load_splits(config, workdir)
  train_source = evaluate_lib.split_source(config, sources, config.data.train_split)
  eval_source = evaluate_lib.split_source(config, sources, config.data.eval_split)
  configuration.check_against_data(
      config, split=config.data.train_split, num_frames=_shortest_video(train_source),
      purpose="train", source=config.data.dataset)
  configuration.check_against_data(
      config, split=config.data.eval_split, num_frames=_shortest_video(eval_source),
      purpose="eval", source=config.data.dataset)
  val_source = sources.get("validation") if config.eval.every_epochs else None

  mesh = sharding.make_mesh(config)
  # The restore target carries the mesh's shardings: a checkpoint written on any device
  # count lands replicated (and its LSTM state split) on this one.
  state = sharding.shard_train_state(checkpoints.target_state(config), mesh)
  restored = checkpoints.restore_latest(workdir, state)
  data_iter = input_pipeline.train_iterator(config, train_source, mesh=mesh)
  if restored is not None:
    state = restored.state
    if restored.data_state is not None:
      data_iter.set_state(restored.data_state)
    logging.info("resumed from %s (step %d)", restored.path, restored.step)
  else:
    # The original's prototype and LSTM-state update before training, on the first window of
    # the first batch; the iterator is rewound so training still starts with that batch.
    position = data_iter.get_state()
    state = meta.update_prototype(config, state, next(data_iter)["x"][:, 0])
    state = sharding.shard_train_state(state, mesh)
    data_iter.set_state(position)
  logging.info("devices: %s", sharding.describe(mesh))
  start = int(state.step)
  history = _read_history(workdir, start)

  test_windows = _test_windows(config, sources.get("validation") or eval_source)
  if test_windows:
    test_windows = sharding.shard_host_batch(test_windows, mesh)
  steps_per_epoch = config.optim.steps_per_epoch
  total = config.optim.num_epochs * steps_per_epoch
  step_fn = meta.make_meta_train_step(config)
  train_step = None  # jitted with the shardings of the first batch
  mgrs = checkpoints.managers(workdir, max_to_keep=config.checkpoint.max_to_keep,
                              async_save=config.checkpoint.async_save)
  writer = tensorboardX.SummaryWriter(os.fspath(workdir / "tensorboard"),
                                      write_to_disk=_primary())
  try:
    with tqdm.tqdm(total=total, initial=start, desc="train", unit="step",
                   dynamic_ncols=True, disable=None) as bar:
      for step in range(start, total):
        epoch = step // steps_per_epoch + 1
        if int(state.epoch) != epoch:
          state = state.replace(epoch=sharding.put_replicated(
              np.asarray(epoch, np.asarray(state.epoch).dtype), mesh))
        batch = {k: v for k, v in next(data_iter).items() if k in _STEP_KEYS}
        if test_windows:
          batch.update(test_windows)
        # The step donates its input state; "skip" keeps a copy to fall back to.
        backup = jax.tree.map(jnp.copy, state) if config.optim.nonfinite == "skip" else None
        if train_step is None:
          train_step = sharding.jit_sharded_step(step_fn, mesh, state, batch)
        started = time.perf_counter()
        new_state, metrics = train_step(state, batch)
        metrics = sharding.to_host(metrics)  # waits for the step
        metrics["step_time_s"] = np.float32(time.perf_counter() - started)
        bad = _nonfinite_terms(metrics)
        if not bad and not bool(sharding.to_host(_all_finite(new_state.params))):
          bad = ["parameters"]  # the losses were finite, the update overflowed
        if bad:
          where = f"step {step + 1} (epoch {epoch})"
          values = ", ".join(f"{k}={np.asarray(metrics[k]).tolist()}" if k in metrics
                             else "the updated parameters are not finite" for k in bad)
          if config.optim.nonfinite == "stop":
            last = mgrs.latest.latest_step()
            kept = ("no checkpoint was written before it" if last is None else
                    f"the last checkpoint (step {last}) is the last good state")
            raise NonFiniteLoss(
                f"non-finite loss at {where}: {values}; training stopped, {kept}. Lower "
                "optim.lr, or set optim.nonfinite=skip to drop such steps")
          logging.warning("non-finite loss at %s: %s; step skipped", where, values)
          state = backup.replace(step=backup.step + 1)
        else:
          state = new_state
        done = step + 1
        record = {"step": done, "epoch": epoch,
                  **{k: float(np.mean(v)) for k, v in metrics.items()
                     if np.issubdtype(np.asarray(v).dtype, np.number)}}
        history.append(record)
        if done % config.log_every_steps == 0 or done == total:
          for k, v in record.items():
            if k not in ("step", "epoch"):
              writer.add_scalar(f"train/{k}", v, done)
          bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                           if k in ("loss", "ordinal_loss")} or None)
        bar.update(1)

        val_mae = None
        end_of_epoch = done % steps_per_epoch == 0
        if (end_of_epoch and val_source is not None
            and (done // steps_per_epoch) % config.eval.every_epochs == 0):
          val_mae = evaluate_lib.validation_mae(config, state, val_source, mesh=mesh)
          writer.add_scalar("validation/mae", val_mae, done)
          history[-1]["val_mae"] = val_mae
          logging.info("epoch %d: validation MAE %.3f bpm", epoch, val_mae)
        if done % config.checkpoint.every_steps == 0 or done == total or val_mae is not None:
          _write_history(workdir, history)
          checkpoints.save(mgrs, state, step=done, data_state=data_iter.get_state(),
                           info={"epoch": epoch}, val_mae=val_mae)
    checkpoints.wait(mgrs)
  finally:
    checkpoints.close(mgrs)
    writer.close()
    _write_history(workdir, history)
  return state
