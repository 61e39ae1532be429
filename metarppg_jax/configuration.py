"""Loading and validating experiment configs (one `ml_collections.ConfigDict` tree).

Every field a config may hold is listed in `SCHEMA` with its type and the values it may take.
`validate(config)` raises `ConfigError` naming the field and the problem for an unknown or
missing field, a wrong type or a value out of range, before any work starts;
`check_against_data` does the checks that need the dataset (a window longer than the videos).
`write(config, workdir)` stores the resolved config as `WORKDIR/config.json`.

Configs are Python files with `get_config()` (flax-examples style); `from_file(path, overrides)`
loads one outside absl flags (tests, notebooks, scripts).
"""

import importlib.util
import json
import math
import os
import pathlib
from typing import Any, Callable, Mapping

import ml_collections

from metarppg_jax.data.preprocess import NORMALIZATIONS, WINDOW  # WINDOW: frames a model window has
from metarppg_jax.errors import ConfigError

METHODS = ("meta_rppg", "no_adaptation", "pos", "chrom", "green", "ica", "lgi", "pbv", "omit")
CLASSICAL_METHODS = ("green", "chrom", "pos", "ica", "lgi", "pbv", "omit")
LEARNED_METHODS = ("meta_rppg", "no_adaptation")
CONFIG_FILE = "config.json"


# --------------------------------------------------------------------------------------------
# The schema: field -> (python type, check(value) -> problem or None).
# --------------------------------------------------------------------------------------------

def _one_of(*choices):
  def check(v):
    return None if v in choices else f"must be one of {list(choices)}"
  return check


def _range(lo=None, hi=None, *, lo_open=False, hi_open=False):
  def check(v):
    if isinstance(v, float) and not math.isfinite(v):
      return "must be a finite number"
    if lo is not None and (v < lo or (lo_open and v == lo)):
      return f"must be {'>' if lo_open else '>='} {lo}"
    if hi is not None and (v > hi or (hi_open and v == hi)):
      return f"must be {'<' if hi_open else '<='} {hi}"
    return None
  return check


def _equals(expected, why):
  def check(v):
    return None if v == expected else f"must be {expected} ({why})"
  return check


def _any(v):
  del v
  return None


def _mesh_devices(v):
  return None if v == -1 or v >= 1 else "must be -1 (all devices) or >= 1"


_POSITIVE = _range(0, lo_open=True)
_NON_NEGATIVE = _range(0)
_AT_LEAST_1 = _range(1)
_UNIT = _range(0, 1)

SCHEMA: dict[str, tuple[type, Callable[[Any], str | None]]] = {
    "mode": (str, _one_of("train", "evaluate")),
    "method": (str, _one_of(*METHODS)),
    "seed": (int, _NON_NEGATIVE),
    "restore_from": (str, _any),
    "log_every_steps": (int, _AT_LEAST_1),
    # model
    "model.ordinal_head": (str, _one_of("sound", "reference")),
    "model.dtype": (str, _one_of("float32", "float64")),
    # meta-learning
    "meta.adapt_position": (str, _one_of("extractor", "estimator", "both")),
    "meta.fewshots": (int, _AT_LEAST_1),
    "meta.inner_mode": (str, _one_of("joint", "per_task")),
    "meta.synthetic_gradient": (bool, _any),
    "meta.prototype": (bool, _any),
    "meta.meta_learning": (bool, _any),
    "meta.supervised_adapt_step": (bool, _any),
    "meta.carry_lstm_state": (bool, _any),
    "meta.test_in_step": (bool, _any),
    "meta.psi_in_prototype_update": (bool, _any),
    "meta.mask_invalid_windows": (bool, _any),
    "meta.lstm_state_rule": (str, _one_of("mean", "given")),
    "meta.proto_momentum": (float, _range(0, 1, hi_open=True)),
    "meta.psi_target": (str, _one_of("learning", "support")),
    "meta.inner_rates": (str, _one_of("fixed", "learned")),
    # optimisation
    "optim.lr": (float, _POSITIVE),
    "optim.adapt_lr": (float, _NON_NEGATIVE),
    "optim.rates_lr": (float, _NON_NEGATIVE),
    "optim.momentum": (float, _range(0, 1, hi_open=True)),
    "optim.weight_decay": (float, _NON_NEGATIVE),
    "optim.cosine_t_max": (int, _AT_LEAST_1),
    "optim.cosine_floor": (float, _UNIT),
    "optim.num_epochs": (int, _AT_LEAST_1),
    "optim.steps_per_epoch": (int, _AT_LEAST_1),
    "optim.nonfinite": (str, _one_of("stop", "skip")),
    # data
    "data.dataset": (str, lambda v: None if v else "must name a dataset"),
    "data.builder_config": (str, _any),
    "data.data_dir": (str, _any),
    "data.manual_dir": (str, _any),
    "data.stride": (int, _AT_LEAST_1),
    "data.tasks_per_batch": (int, _AT_LEAST_1),
    "data.normalization": (str, _one_of(*NORMALIZATIONS)),
    "data.fps": (float, _POSITIVE),
    "data.speed_min": (float, _POSITIVE),
    "data.speed_max": (float, _POSITIVE),
    "data.augment_light": (float, _NON_NEGATIVE),
    "data.cache_mb": (float, _NON_NEGATIVE),
    "data.train_split": (str, lambda v: None if v else "must name a split"),
    "data.eval_split": (str, lambda v: None if v else "must name a split"),
    "data.worker_count": (int, _NON_NEGATIVE),
    # evaluation
    "eval.hr_window_s": (float, _POSITIVE),
    "eval.hr_stride_s": (float, _POSITIVE),
    "eval.hr_estimator": (str, _one_of("sound", "reference")),
    "eval.queries": (int, _AT_LEAST_1),
    "eval.every_epochs": (int, _NON_NEGATIVE),
    # devices
    "mesh.data": (int, _mesh_devices),
    "mesh.coordinator_address": (str, _any),
    "mesh.num_processes": (int, _AT_LEAST_1),
    "mesh.process_id": (int, _NON_NEGATIVE),
    # checkpoints
    "checkpoint.every_steps": (int, _AT_LEAST_1),
    "checkpoint.max_to_keep": (int, _AT_LEAST_1),
    "checkpoint.async_save": (bool, _any),
}


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _type_problem(value: Any, kind: type) -> str | None:
  if kind is bool:
    return None if isinstance(value, bool) else "must be True or False"
  if kind is int:
    return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
  if kind is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return None if ok else "must be a number"
  return None if isinstance(value, kind) else f"must be a {kind.__name__}"


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every field of `config` against `SCHEMA`; returns it unchanged.

  Raises:
    ConfigError: naming every unknown or missing field, and every field with a wrong type or a
      value out of range (all problems at once, one a line).
  """
  flat = _flatten(config)
  problems = []
  for name in sorted(set(flat) - set(SCHEMA)):
    close = [k for k in SCHEMA if k.split(".")[-1] == name.split(".")[-1]]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    problems.append(f"unknown field {name!r}{hint}")
  for name in sorted(set(SCHEMA) - set(flat)):
    problems.append(f"missing field {name!r}")
  for name, (kind, check) in SCHEMA.items():
    if name not in flat:
      continue
    value = flat[name]
    problem = _type_problem(value, kind) or check(value)
    if problem:
      problems.append(f"{name}={value!r}: {problem}")
  if not problems:
    mesh = config.mesh
    if mesh.process_id >= mesh.num_processes:
      problems.append(f"mesh.process_id={mesh.process_id}: must be < mesh.num_processes="
                      f"{mesh.num_processes}")
    if mesh.num_processes > 1 and not mesh.coordinator_address:
      problems.append("mesh.coordinator_address: needed when mesh.num_processes > 1")
    meta = config.meta
    if meta.lstm_state_rule != "given":
      # Both run their estimator calls from (h, c) as stored, one state a task.
      for name, why in (("carry_lstm_state", "the carried state is per task, as the original's"),
                        ("test_in_step", "the original's test runs its queries from (h, c) "
                                         "as stored")):
        if meta[name]:
          problems.append(f"meta.{name}=True needs meta.lstm_state_rule='given' ({why})")
    if meta.inner_rates == "learned":
      # The rates are learned from the loss after the joint inner step, and applied to
      # theta at test time: they need that step and a theta that it adapts.
      for ok, need in ((meta.meta_learning and meta.synthetic_gradient,
                        "meta.meta_learning and meta.synthetic_gradient on"),
                       (meta.inner_mode == "joint", "meta.inner_mode='joint'"),
                       (meta.adapt_position != "estimator",
                        "meta.adapt_position 'extractor' or 'both'")):
        if not ok:
          problems.append(f"meta.inner_rates='learned' needs {need}")
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
  return config


def frames_needed(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Frames a video must have: training takes 3 consecutive windows a task (each spanning
  up to `data.speed_max` times a window), evaluation `meta.fewshots + eval.queries` windows a
  video."""
  w = WINDOW
  return {"train": 3 * math.ceil(w * config.data.speed_max),
          "eval": (config.meta.fewshots + config.eval.queries) * w}


def check_against_data(config: ml_collections.ConfigDict, *, split: str, num_frames: int,
                       purpose: str, source: str) -> None:
  """ConfigError when the videos of `split` (the shortest has `num_frames` frames) are too
  short for `purpose` ("train" or "eval"); `source` names the dataset in the message."""
  need = frames_needed(config)[purpose]
  if num_frames < need:
    how = (f"3 windows of {WINDOW} frames at data.speed_max={config.data.speed_max:g}"
           if purpose == "train" else
           f"(meta.fewshots={config.meta.fewshots} + eval.queries={config.eval.queries}) "
           f"windows of {WINDOW} frames")
    raise ConfigError(
        f"a model window ({WINDOW} frames) is too long for {source} split {split!r}: "
        f"{purpose} needs {how} = {need} frames but its shortest video has {num_frames} frames; "
        "use fewer eval.queries / meta.fewshots or longer videos")
  hr_frames = int(round(config.eval.hr_window_s * config.data.fps))
  if purpose == "eval" and hr_frames > config.eval.queries * WINDOW:
    raise ConfigError(
        f"eval.hr_window_s={config.eval.hr_window_s} s ({hr_frames} frames at data.fps="
        f"{config.data.fps}) is longer than the evaluated signal: eval.queries="
        f"{config.eval.queries} windows of {WINDOW} frames")


# --------------------------------------------------------------------------------------------
# Files.
# --------------------------------------------------------------------------------------------

def _config_attribute(path: pathlib.Path, name: str) -> Any:
  """Attribute `name` of a config file loaded by path (ml_collections style): a config file is
  user code, so any failure is a ConfigError naming the file."""
  if not path.is_file():
    raise ConfigError(f"{path}: config file not found")
  spec = importlib.util.spec_from_file_location(f"_metarppg_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"{path}: could not load the config file: {type(e).__name__}: {e}") from e
  if not hasattr(module, name):
    raise ConfigError(f"{path}: a config file here must define {name}")
  return getattr(module, name)


def _get_config(path: pathlib.Path) -> ml_collections.ConfigDict:
  """A config file's `get_config()`, not validated."""
  get_config = _config_attribute(path, "get_config")
  try:
    return get_config()
  except ConfigError:
    raise
  except Exception as e:  # a config file is user code: report where it failed
    raise ConfigError(f"{path}: could not load the config file: {type(e).__name__}: {e}") from e


def overrides_of(path: str | os.PathLike) -> dict[str, Any]:
  """The `OVERRIDES` dict of a derived config file (e.g. configs/ablation_*.py): what it
  changes in the config it is `based_on`."""
  return dict(_config_attribute(pathlib.Path(path), "OVERRIDES"))


def from_file(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None
              ) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, with dotted-name overrides applied, validated.

  `overrides` e.g. {"optim.num_epochs": 1, "data.builder_config": "tiny"}; an unknown name is a
  ConfigError.
  """
  config = _get_config(pathlib.Path(path))
  apply_overrides(config, overrides or {})
  return validate(config)


def based_on(config_file: str | os.PathLike, overrides: Mapping[str, Any],
             base: str = "default.py") -> ml_collections.ConfigDict:
  """What a derived config file's `get_config()` returns: the config file `base` beside
  `config_file` (pass `__file__`) with dotted-name `overrides` applied (not validated yet:
  main and `from_file` validate the final config).

    def get_config():
      return configuration.based_on(__file__, {"data.dataset": "pure", "eval.queries": 14})
  """
  config = _get_config(pathlib.Path(config_file).resolve().parent / base)
  apply_overrides(config, overrides)
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets dotted fields in place; ConfigError for a field the config does not have."""
  for name, value in overrides.items():
    *parents, leaf = name.split(".")
    node = config
    for p in parents:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise ConfigError(f"unknown field {name!r}")
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"unknown field {name!r}")
    if isinstance(node[leaf], float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    try:
      node[leaf] = value
    except TypeError as e:
      raise ConfigError(f"{name}={value!r}: {e}") from e


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def prepare_workdir(workdir: str | os.PathLike) -> pathlib.Path:
  """Creates the workdir if needed and checks that files can be written there.

  Returns the absolute path. Raises ConfigError naming the workdir and the OS's reason (a
  path below a regular file, a read-only or full disk, no permission) before any work.
  """
  path = pathlib.Path(workdir).absolute()
  probe = path / f".write_test.{os.getpid()}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise ConfigError(f"--workdir {path}: not writable ({e.strerror or e}: "
                      f"{e.filename or path}); choose a folder you can write to") from None
  return path


def write(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> pathlib.Path:
  """Writes the resolved config to WORKDIR/config.json; returns its path."""
  path = prepare_workdir(workdir) / CONFIG_FILE
  path.write_text(to_json(config) + "\n")
  return path


# Fields added after config.json files were first written, with the value that means what a
# config without them meant: `read` fills them in so older workdirs and exports still load.
ADDED_FIELDS = {"data.speed_min": 1.0, "data.speed_max": 1.0, "data.augment_light": 0.0,
                "data.cache_mb": 2048.0, "meta.inner_rates": "fixed", "optim.rates_lr": 1e-5}


def read(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a workdir was run with (WORKDIR/config.json), validated (fields of
  `ADDED_FIELDS` it predates are filled in)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise ConfigError(f"{path}: no config.json in the workdir (was it trained here?)")
  try:
    data = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path}: not valid JSON ({e})") from e
  for name, value in ADDED_FIELDS.items():
    section, field = name.split(".")
    if isinstance(data.get(section), dict):
      data[section].setdefault(field, value)
  return validate(ml_collections.ConfigDict(data))
