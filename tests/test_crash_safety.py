"""Crash safety: a real training process killed with SIGKILL at three moments resumes
from the last complete checkpoint and ends exactly like an uninterrupted run.

One uninterrupted run (the reference) and one run that is killed three times and restarted:

  1. during a step (step 3 is computing; checkpoint 1 is complete, 2 complete or still being
     written asynchronously: under load the kill can catch its write too);
  2. during the asynchronous write of checkpoint 4 (orbax writes it in a background thread);
  3. right after checkpoint 5 is complete on disk;

then the fourth start runs to the end (6 steps over 2 epochs). Both runs must end with the
same final state (every leaf, bitwise, with the data iterator's position) and the same
training metrics (every loss term of every step, `history.json`); evaluation metrics are a
function of the final state (their run-to-run equality is tests/test_determinism.py's). Each
start must resume from the newest complete checkpoint (1 or 2, then 3 and 5).

The processes run `_DRIVER` below: `train.train` as `main` runs it, with markers written at
the moments to kill (the computation is untouched). Compiled
programs are shared between the processes through JAX's persistent compilation cache, so
only the first process compiles. The truncated-checkpoint fallback and the other-config
refusal are checked on the real training state here (checkpoints.py's own tests use a
stand-in state).
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from metarppg_jax import checkpoints
from metarppg_jax import configuration
from metarppg_jax.errors import CheckpointError

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.py"
TOTAL_STEPS = 6
RUN_TIMEOUT_S = 900   # a bound per process; the first one also builds data and compiles

OVERRIDES = {"checkpoint.every_steps": 1, "checkpoint.max_to_keep": 10,
             "checkpoint.async_save": True, "eval.every_epochs": 0, "optim.num_epochs": 2,
             "optim.steps_per_epoch": 3}

_DRIVER = textwrap.dedent("""
    import json, pathlib, sys, time
    from metarppg_jax import checkpoints, configuration, sharding, train

    workdir, overrides, kill_at, marker = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], \\
        pathlib.Path(sys.argv[4])
    moment, _, step = kill_at.partition(":")
    step = int(step or 0)
    config = configuration.from_file({tiny!r}, overrides)

    real_restore = checkpoints.restore_latest
    def restore_latest(*args, **kwargs):
      restored = real_restore(*args, **kwargs)
      print("RESTORED", restored.step if restored else 0, flush=True)
      return restored
    checkpoints.restore_latest = restore_latest

    real_jit = sharding.jit_sharded_step      # what train.py runs the step through
    def jit_step(*args, **kwargs):
      real_step = real_jit(*args, **kwargs)
      def step_fn(state, batch):
        if moment == "step" and int(state.step) + 1 == step:
          marker.write_text("computing")            # the step is about to run: kill now
          out = real_step(state, batch)
          import jax; jax.block_until_ready(out)
          marker.with_suffix(".done").write_text("")   # (the kill came too late if seen)
          time.sleep(600)
          return out
        return real_step(state, batch)
      return step_fn
    sharding.jit_sharded_step = jit_step

    real_save = checkpoints.save
    def save(mgrs, state, *, step, **kwargs):
      real_save(mgrs, state, step=step, **kwargs)
      if moment == "write" and step == {write_step}:
        marker.write_text("writing")                 # the async write is under way: kill now
        time.sleep(600)
      if moment == "after" and step == {after_step}:
        checkpoints.wait(mgrs)
        marker.write_text("written")                 # complete on disk: kill now
        time.sleep(600)
    checkpoints.save = save

    state = train.train(config, workdir)
    print("FINISHED", int(state.step), flush=True)
""")

KILLS = (("step:3", 2), ("write:4", 3), ("after:5", 5))   # (moment, newest complete step)


def _env(cache_dir):
  # The driver script lives in tmp: the checkout goes on the path (installed or not).
  path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
  return dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu",
              JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


class _Runner:
  """Starts the driver; kills it with SIGKILL once its marker appears."""

  def __init__(self, tmp, data_dir):
    self.tmp = tmp
    self.script = tmp / "driver.py"
    self.script.write_text(_DRIVER.format(tiny=str(TINY), write_step=4, after_step=5))
    self.overrides = json.dumps({**OVERRIDES, "data.data_dir": str(data_dir)})
    self.env = _env(tmp / "jax_cache")

  def run(self, workdir, kill_at="none"):
    marker = self.tmp / f"marker_{kill_at.replace(':', '_')}"
    for p in (marker, marker.with_suffix(".done")):
      p.unlink(missing_ok=True)
    log = open(self.tmp / f"log_{kill_at.replace(':', '_')}.txt", "w+")
    proc = subprocess.Popen(
        [sys.executable, str(self.script), str(workdir), self.overrides, kill_at, str(marker)],
        cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    killed_in_time = None
    try:
      deadline = time.monotonic() + RUN_TIMEOUT_S
      while proc.poll() is None and time.monotonic() < deadline:
        if kill_at != "none" and marker.exists():
          os.kill(proc.pid, signal.SIGKILL)
          proc.wait(timeout=30)
          killed_in_time = not marker.with_suffix(".done").exists()
          break
        time.sleep(0.01)
    finally:
      if proc.poll() is None:   # over time: never leave a process behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    log.seek(0)
    output = log.read()
    log.close()
    assert proc.returncode is not None
    if kill_at == "none":
      assert proc.returncode == 0, output[-4000:]
      assert f"FINISHED {TOTAL_STEPS}" in output, output[-4000:]
    else:
      assert proc.returncode == -signal.SIGKILL, (
          f"{kill_at}: the run ended on its own (rc {proc.returncode}) before the kill:\n"
          + output[-4000:])
    restored = [int(line.split()[1]) for line in output.splitlines()
                if line.startswith("RESTORED")]
    return restored, killed_in_time


def _config(data_dir):
  return configuration.from_file(TINY, {**OVERRIDES, "data.data_dir": str(data_dir)})


def _steps(workdir):
  """Finished checkpoint steps (orbax's temporary directories of interrupted writes excluded)."""
  mgr = checkpoints._manager(checkpoints.checkpoint_dir(workdir), max_to_keep=1,  # pylint: disable=protected-access
                             async_save=False, best=False, read_only=True)
  try:
    return sorted(mgr.all_steps())
  finally:
    mgr.close()


def _leaves(state):
  return jax.tree_util.tree_flatten_with_path(checkpoints.to_tree(state))[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("crash")
  data_dir = tmp / "data"
  runner = _Runner(tmp, data_dir)
  reference = tmp / "reference"
  restored, _ = runner.run(reference)            # also builds the data and fills the cache
  assert restored == [0]
  crashed = tmp / "crashed"
  starts, in_time, newest = [], {}, []
  for kill_at, _ in KILLS:
    restored, in_time[kill_at] = runner.run(crashed, kill_at)
    starts.extend(restored)
    newest.append(max(_steps(crashed)))   # the newest complete checkpoint after the kill
    if kill_at.startswith("write"):
      # Killed mid-write: step 4 must not count as a checkpoint.
      in_time[kill_at] = 4 not in _steps(crashed)
  restored, _ = runner.run(crashed)
  starts.extend(restored)
  return {"reference": reference, "crashed": crashed, "starts": starts, "in_time": in_time,
          "newest": newest, "config": _config(data_dir)}


def test_each_restart_resumes_from_the_last_complete_checkpoint(runs):
  # Starts: fresh, then after each kill the newest complete checkpoint.
  assert runs["starts"] == [0] + runs["newest"], (runs["starts"], runs["newest"])
  # Killed during step 3, checkpoint 2 may still have been in its asynchronous write (then
  # it is incomplete and the run resumes from 1); orbax finishes one write before starting
  # the next, so during checkpoint 4's write 3 is complete; after 5 is complete, 5.
  step_kill, write_kill, after_kill = runs["newest"]
  assert step_kill in (1, KILLS[0][1]) and (write_kill, after_kill) == (KILLS[1][1], KILLS[2][1])
  assert runs["in_time"]["step:3"], "the kill came after step 3 had finished"
  assert runs["in_time"]["write:4"], "checkpoint 4 was complete before the kill"
  assert _steps(runs["crashed"]) == list(range(1, TOTAL_STEPS + 1))


def test_killed_run_ends_exactly_like_an_uninterrupted_one(runs):
  target = checkpoints.target_state(runs["config"])
  final = {name: checkpoints.restore_latest(runs[name], target) for name in ("reference",
                                                                             "crashed")}
  assert final["reference"].step == final["crashed"].step == TOTAL_STEPS
  assert final["reference"].data_state == final["crashed"].data_state
  for (path, a), (_, b) in zip(_leaves(final["reference"].state),
                               _leaves(final["crashed"].state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                  err_msg=jax.tree_util.keystr(path))
  # Every loss term of every step; wall-clock entries (step_time_s) are not results.
  history = {n: [{k: v for k, v in h.items() if not k.endswith("_time_s")}
                 for h in json.loads((runs[n] / "history.json").read_text())]
             for n in ("reference", "crashed")}
  assert [h["step"] for h in history["crashed"]] == list(range(1, TOTAL_STEPS + 1))
  assert history["crashed"] == history["reference"]
  assert all(np.isfinite(h["loss"]) for h in history["reference"])


def test_truncated_newest_checkpoint_falls_back_to_the_previous(runs, tmp_path, caplog):
  workdir = tmp_path / "copy"
  shutil.copytree(runs["reference"] / "checkpoints", workdir / "checkpoints")
  newest = checkpoints.checkpoint_dir(workdir) / str(TOTAL_STEPS) / "state"
  data_files = [p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 64]
  assert data_files
  for p in data_files:   # a copy or disk that gave out half-way
    p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
  target = checkpoints.target_state(runs["config"])
  with caplog.at_level("WARNING"):
    restored = checkpoints.restore_latest(workdir, target)
  assert restored.step == TOTAL_STEPS - 1
  assert f"/{TOTAL_STEPS}" in caplog.text and "corrupt or truncated" in caplog.text
  expected = checkpoints.restore_path(
      checkpoints.checkpoint_dir(runs["reference"]) / str(TOTAL_STEPS - 1), target)
  for (path, a), (_, b) in zip(_leaves(expected.state), _leaves(restored.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                  err_msg=jax.tree_util.keystr(path))


def test_checkpoint_of_another_config_is_refused_naming_the_leaves(runs):
  n = runs["config"].data.tasks_per_batch
  other = _config(runs["config"].data.data_dir)
  other.data.tasks_per_batch = n + 1   # the LSTM state (h, c) is per task: [4, N, 60]
  with pytest.raises(CheckpointError) as info:
    checkpoints.restore_latest(runs["reference"], checkpoints.target_state(other))
  message = str(info.value)
  assert "does not fit this config" in message
  for leaf in ("lstm_state/0", "lstm_state/1"):
    assert f"{leaf}: shape [4, {n}, 60] in the checkpoint, [4, {n + 1}, 60] here" in message
  assert str(checkpoints.checkpoint_dir(runs["reference"]) / str(TOTAL_STEPS)) in message
