"""The pretrained Meta-rPPG model shipped inside the package.

`load()` gives the config it was trained with and its state, ready for `predict` and
`stream`; `export()` writes a trained state in the same form (`experiments/make_pretrained.py`
remakes the shipped one). The files, in `metarppg_jax/weights/`:

- `config.json`: the resolved training config;
- `model.npz`: the arrays a prediction needs (step, parameters, batch statistics, prototype, LSTM
  state), keyed by their path in the state ("params/theta/conv1/kernel"); no optimizer state,
  so the file stays about the size of the parameters (1.5 MB);
- `info.json`: how it was made and what it measured (the command, training steps, the
  validation and test figures).
"""

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np

from metarppg_jax import configuration
from metarppg_jax.errors import CheckpointError

WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "weights"
MODEL_FILE = "model.npz"
INFO_FILE = "info.json"
MODEL_PARTS = ("step", "params", "batch_stats", "prototype", "lstm_state")


def _flat(tree: Any) -> dict[str, np.ndarray]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
          for path, leaf in leaves}


def _model_parts(state) -> dict[str, Any]:
  return {name: getattr(state, name) for name in MODEL_PARTS}


def export(config, state, directory: str | os.PathLike = WEIGHTS_DIR,
           info: dict | None = None) -> pathlib.Path:
  """Writes `state`'s model parts, `config` and `info` into `directory`; returns it."""
  out = pathlib.Path(directory)
  out.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out / MODEL_FILE, **_flat(jax.device_get(_model_parts(state))))
  (out / configuration.CONFIG_FILE).write_text(configuration.to_json(config) + "\n")
  (out / INFO_FILE).write_text(json.dumps(info or {}, indent=2, sort_keys=True) + "\n")
  return out


def info(directory: str | os.PathLike = WEIGHTS_DIR) -> dict:
  """What `info.json` says of the model (empty when there is none)."""
  path = pathlib.Path(directory) / INFO_FILE
  return json.loads(path.read_text()) if path.is_file() else {}


def load(directory: str | os.PathLike = WEIGHTS_DIR):
  """(config, TrainState) of the packaged model (or of an `export` directory).

  Raises CheckpointError when the files are missing or do not fit the config's shapes.
  """
  from metarppg_jax import checkpoints  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  path = directory / MODEL_FILE
  if not path.is_file():
    raise CheckpointError(
        f"{path}: no pretrained model there; remake it with `python experiments/"
        "make_pretrained.py`, or give a training workdir (--workdir)")
  config = configuration.read(directory)
  target = checkpoints.target_state(config)
  wanted = _flat(_model_parts(target))
  with np.load(path) as saved:
    arrays = {k: saved[k] for k in saved.files}
  bad = sorted(f"{k}: {list(arrays[k].shape) if k in arrays else 'missing'} in the file, "
               f"{list(v.shape)} expected" for k, v in wanted.items()
               if k not in arrays or arrays[k].shape != v.shape)
  if bad:
    raise CheckpointError(f"{path}: does not fit its config.json: " + "; ".join(bad[:5]))
  parts = jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(_model_parts(target)),
      [jax.numpy.asarray(arrays[k], dtype=v.dtype) for k, v in wanted.items()])
  return config, target.replace(**parts)
