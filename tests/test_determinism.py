"""Determinism: same seed, same config, same machine -> identical metrics, run twice.

Two fresh trainings of the tiny setting (data built once, shared) must give bitwise equal
training histories (every loss of every step), final states and metrics.json; a third with
another seed must differ (so the comparison can fail). Evaluation is included: it adapts a
copy of the model to each test video and scores every method.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from metarppg_jax import checkpoints
from metarppg_jax import configuration
from metarppg_jax import evaluate
from metarppg_jax import history as history_lib
from metarppg_jax import train
from metarppg_jax.data import splits

pytestmark = pytest.mark.slow

TINY = pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py"


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """Programs compiled by the first run are loaded (not recompiled) by the next ones."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  saved = {n: getattr(jax.config, n) for n in names}
  jax.config.update(names[0], str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update(names[1], 0.0)
  jax.config.update(names[2], 0)
  yield
  for n, v in saved.items():
    jax.config.update(n, v)


def _run(workdir, data_dir, seed):
  config = configuration.from_file(TINY, {
      "seed": seed, "data.data_dir": str(data_dir), "optim.num_epochs": 1,
      "optim.steps_per_epoch": 3, "checkpoint.every_steps": 3, "eval.every_epochs": 0})
  sources = splits.load(config, workdir)
  state = train.train(config, workdir, sources=sources)
  evaluate.evaluate(config, workdir, state=state, sources=sources, plots=False)
  history = json.loads((workdir / history_lib.FILE).read_text())
  # Every loss term of every step; wall-clock entries (step_time_s) are not results.
  return {"history": [{k: v for k, v in h.items() if not k.endswith("_time_s")}
                      for h in history],
          "metrics": json.loads((workdir / "metrics.json").read_text()),
          "state": [np.asarray(x) for x in jax.tree.leaves(checkpoints.to_tree(state))]}


def _same_state(a, b):
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_same_seed_same_results(tmp_path, compilation_cache):
  del compilation_cache
  data_dir = tmp_path / "data"
  first = _run(tmp_path / "first", data_dir, seed=0)
  second = _run(tmp_path / "second", data_dir, seed=0)
  assert [h["step"] for h in first["history"]] == [1, 2, 3]
  assert first["history"] == second["history"]
  assert first["metrics"] == second["metrics"]
  assert _same_state(first["state"], second["state"])
  assert np.isfinite(first["metrics"]["meta_rppg"]["test"]["mae"])

  other = _run(tmp_path / "other_seed", data_dir, seed=1)
  assert other["history"] != first["history"]
  assert not _same_state(other["state"], first["state"])
