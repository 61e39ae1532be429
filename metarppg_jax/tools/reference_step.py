r"""`reference_check --step`: one outer iteration of the original, from an original checkpoint.

    python -m metarppg_jax.tools.reference_check --step --checkpoint CKPT --inputs STEP.npz \
        --adapt_position extractor|estimator|both --fewshots N --out OUT.npz [--x64] \
        [--expect REF.npz]

Runs `meta.make_meta_train_step` under `configs/reference.py` (the original's behaviour) from
the checkpoint with fresh optimizers at epoch 1, on the step file's windows: `x`, `targets`
(adaptation phase and prototype update), `x_step1`, `t_step1`, `x_step2`, `t_step2` (learning
phase), `x_test`, `t_test` (the transductive test: first `fewshots` windows the support, the
rest the queries); every window set holds N clips, N = the batch of the checkpoint's (h, c).
Writes the keys of `shared/reference/parity_step_<pos>_fs<n>.npz` in the original's names and
PyTorch layouts (through `original_checkpoint.to_flat`). `--x64` runs everything in float64
(checkpoint and inputs cast), for the `*_f64.npz` twins.
"""

import pathlib
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from metarppg_jax import configuration
from metarppg_jax import meta
from metarppg_jax import original_checkpoint
from metarppg_jax import state as state_lib
from metarppg_jax.errors import ConfigError, DataError

STEP_KEYS = ("x", "targets", "x_step1", "t_step1", "x_step2", "t_step2", "x_test", "t_test")


def reference_config(adapt_position: str, fewshots: int):
  """The repository's configs/reference.py with the position and number of steps set."""
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "reference.py"
  if not path.is_file():
    raise ConfigError(f"{path}: not found; the parity step needs the repository's configs "
                      "(run it from a checkout, installed with `pip install -e .`)")
  return configuration.from_file(path, {"meta.adapt_position": adapt_position,
                                        "meta.fewshots": fewshots})


def load_step_inputs(path: str, dtype=np.float32) -> dict[str, np.ndarray]:
  """The step file's windows, checked: x-like keys f[N, T, H, W, 3], targets i32[N, T]."""
  from metarppg_jax.tools import reference_check  # pylint: disable=g-import-not-at-top
  data = reference_check.read_npz(path, "step inputs")
  missing = [k for k in STEP_KEYS if k not in data]
  if missing:
    raise DataError(f"{path}: missing keys {missing} (a step file holds {list(STEP_KEYS)})")
  out = {}
  for xk, tk in (("x", "targets"), ("x_step1", "t_step1"), ("x_step2", "t_step2"),
                 ("x_test", "t_test")):
    x, t = data[xk], data[tk]
    if x.ndim != 5 or x.shape[-1] != 3:
      raise DataError(f"{path}: {xk!r} has shape {list(x.shape)}, expected [N, T, H, W, 3]")
    if t.shape != x.shape[:2]:
      raise DataError(f"{path}: {tk!r} has shape {list(t.shape)}, expected {list(x.shape[:2])}")
    if t.min() < 0 or t.max() > 39:
      raise DataError(f"{path}: {tk!r} must hold levels in 0..39")
    out[xk], out[tk] = x.astype(dtype), t.astype(np.int32)
  shapes = {out[k].shape[1:] for k in ("x", "x_step1", "x_step2", "x_test")}
  if len(shapes) != 1:
    raise DataError(f"{path}: the window sets differ in [T, H, W, C]: {sorted(shapes)}")
  if not out["x"].shape[0] == out["x_step1"].shape[0] == out["x_step2"].shape[0]:
    raise DataError(f"{path}: 'x', 'x_step1', 'x_step2' must hold the same number of clips")
  return out


def _flat(params, stats, like: original_checkpoint.OriginalState, dtype):
  """Flat PyTorch-named arrays of (possibly partial) trees; missing parts from `like`."""
  full_params = dict(like.params, **params)
  full_stats = dict(like.batch_stats, **stats)
  return original_checkpoint.to_flat(original_checkpoint.OriginalState(
      full_params, full_stats, like.prototype, like.lstm_state), dtype=dtype)


def _is_buffer(key):
  return ".running_" in key or key.endswith("num_batches_tracked")


def _select(flat: Mapping[str, np.ndarray], net: str, prefix: str, *, params=True,
            buffers=True) -> dict[str, np.ndarray]:
  out = {}
  for key, value in flat.items():
    if not key.startswith(net + "/"):
      continue
    if (_is_buffer(key) and buffers) or (not _is_buffer(key) and params):
      out[f"{prefix}/{key}"] = value
  return out


def run_reference_step(original: original_checkpoint.OriginalState, inputs: Mapping[str, np.ndarray],
                       adapt_position: str, fewshots: int) -> dict[str, np.ndarray]:
  """One outer iteration from `original`; every stage keyed as `parity_step_*.npz`."""
  config = reference_config(adapt_position, fewshots)
  n = inputs["x"].shape[0]
  if original.lstm_state[0].shape[1] != n:
    raise DataError(f"the step inputs hold {n} clips but the checkpoint's (h, c) is for "
                    f"{original.lstm_state[0].shape[1]}: they must match")
  if inputs["x_test"].shape[0] != fewshots + n:
    raise DataError(f"'x_test' holds {inputs['x_test'].shape[0]} windows: expected fewshots "
                    f"+ N = {fewshots + n} (the queries run from the checkpoint's (h, c))")
  dtype = np.asarray(original.prototype).dtype
  state = state_lib.state_from_original(config, original)
  batch = {
      "x": jnp.stack([inputs["x"], inputs["x_step1"], inputs["x_step2"]], axis=1),
      "targets": jnp.stack([inputs["targets"], inputs["t_step1"], inputs["t_step2"]], axis=1),
      "test_x": jnp.asarray(inputs["x_test"]),
      "test_targets": jnp.asarray(inputs["t_test"]),
  }
  step = meta.make_meta_train_step(config, trace=True)
  state, metrics = step(state, batch)
  metrics = jax.device_get(metrics)
  state = jax.device_get(state)
  tr = metrics.pop("trace")
  rec = {}
  for name in ("adapt/fewloss", "adapt/ordloss", "learn1/ordloss", "learn1/fewloss",
               "learn1/gradloss", "learn2/ordloss", "learn2/fewloss", "learn2/gradloss"):
    rec[name] = np.asarray(metrics[name], dtype)
  # Losses come back as float32 metrics; recompute nothing, but keep x64 precision where the
  # trace holds it (test loss below is float64 in x64 runs).
  sup = _flat(tr["adapt/sup/params"], {}, original, dtype)
  rec.update(_select(sup, "A", "adapt/sup", buffers=False))
  adapted = _flat(tr["adapt/params"], tr["adapt/stats"], original, dtype)
  rec.update(_select(adapted, "A", "adapt"))
  rec.update(_select(adapted, "B", "adapt", buffers=False))
  rec["adapt/synthetic_grad"] = np.asarray(tr["adapt/synthetic_grad"], dtype)
  learned = _flat(tr["learn2/params"], tr["learn2/stats"], original, dtype)
  for net in ("A", "B", "Grad"):
    rec.update(_select(learned, net, "learn2"))
  tested = _flat({"theta": tr["test/theta"]},
                 {"theta": tr["test/theta_stats"], "psi": tr["test/psi_stats"]}, original, dtype)
  rec.update(_select(tested, "A", "test"))
  rec.update(_select(tested, "Grad", "test", params=False))
  rec["test/proto_losses"] = np.asarray(tr["test/proto_losses"], dtype)
  rec["test/prob"] = np.asarray(tr["test/prob"], dtype)
  rec["test/decision"] = np.asarray(tr["test/decision"]).astype(np.int64)
  rec["test/ordloss"] = np.asarray(tr["test/ordloss"], dtype)
  final = _flat(state.params, state.batch_stats, original, dtype)
  rec.update(_select(final, "A", "final", params=False))
  rec.update(_select(final, "Grad", "final", params=False))
  rec["final/proto"] = np.asarray(state.prototype, dtype)
  rec["final/h"] = np.asarray(state.lstm_state[0], dtype)
  rec["final/c"] = np.asarray(state.lstm_state[1], dtype)
  return rec


def run_step(checkpoint: str, inputs: str, adapt_position: str, fewshots: int,
             out: str | None, expect: str | None, *, x64: bool = False) -> int:
  """The `--step` command: returns the exit status (1 when `expect` is not matched)."""
  from metarppg_jax.tools import reference_check  # pylint: disable=g-import-not-at-top
  dtype = np.float64 if x64 else np.float32
  original = original_checkpoint.load(checkpoint, dtype=dtype)
  with jax.enable_x64(x64):  # float64 for this computation only
    rec = run_reference_step(original, load_step_inputs(inputs, dtype), adapt_position,
                             fewshots)
  if out:
    np.savez(out, **rec)
    print(f"wrote {len(rec)} arrays to {out}")
  if expect:
    bad = reference_check.compare_with(rec, expect)
    for key, msg in bad:
      print(f"MISMATCH {key}: {msg}")
    print(f"{len(bad)} keys out of tolerance")
    return 1 if bad else 0
  return 0
