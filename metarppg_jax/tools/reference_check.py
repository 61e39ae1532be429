r"""Check a checkpoint of the original format against the original code's computation.

For people porting their own trained PyTorch checkpoints: loads an original checkpoint
(`.pth`, weights only, or the torch-free `.npz`), runs the forward/backward pass described in
`shared/reference/README.md` (estimator state `(h, c)` from the checkpoint, the `reference`
ordinal head) on the clips of an inputs file, and writes the same keys as the original's
`parity_ref_<mode>.npz`, in the original's names and PyTorch layouts:

    python -m metarppg_jax.tools.reference_check --checkpoint CKPT --inputs IO.npz \
        --mode train|eval --out OUT.npz [--expect REF.npz]

`IO.npz` holds `x f[N, 60, H, W, 3]` (channels-last clips) and `targets i[N, 60]` (levels 0..39);
N must equal the batch of the checkpoint's `h`, `c`. With `--expect`, the largest deviations
are printed and the exit status says whether every key is within the reference tolerances.

`--step` runs one outer iteration instead (`parity_step_*.npz`; see `reference_step.py`):

    python -m metarppg_jax.tools.reference_check --step --checkpoint CKPT --inputs STEP.npz \
        --adapt_position extractor|estimator|both --fewshots N --out OUT.npz [--x64] \
        [--expect REF.npz]
"""

import importlib.util
import os
import sys
from typing import Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from metarppg_jax import compile_options
from metarppg_jax import losses
from metarppg_jax import models
from metarppg_jax import original_checkpoint
from metarppg_jax.errors import DataError, MetaRPPGError



def read_npz(path: str, what: str) -> dict[str, np.ndarray]:
  """Every array of a `.npz` file (no pickles); DataError naming the file and `what` it is
  when it is missing or unreadable."""
  if not os.path.exists(path):
    raise DataError(f"{path}: no such {what} file")
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (ValueError, OSError) as e:
    raise DataError(f"{path}: not a readable .npz {what} file ({e})") from e


def load_inputs(path: str, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
  """`x f[N, T, H, W, 3]`, `targets i[N, T]` from an inputs `.npz`, checked."""
  data = read_npz(path, "inputs")
  for key in ("x", "targets"):
    if key not in data:
      raise DataError(f"{path}: missing key {key!r} (has {sorted(data)})")
  x, targets = data["x"].astype(dtype), data["targets"].astype(np.int32)
  if x.ndim != 5 or x.shape[-1] != 3:
    raise DataError(f"{path}: 'x' has shape {list(x.shape)}, expected [N, T, H, W, 3]")
  if targets.shape != x.shape[:2]:
    raise DataError(f"{path}: 'targets' has shape {list(targets.shape)}, expected "
                    f"{list(x.shape[:2])}")
  if targets.min() < 0 or targets.max() >= models.NUM_LEVELS:
    raise DataError(f"{path}: 'targets' must be levels in 0..{models.NUM_LEVELS - 1}")
  return x, targets


def forward_backward(state: original_checkpoint.OriginalState, x: np.ndarray,
                     targets: np.ndarray, *, train: bool) -> dict[str, np.ndarray]:
  """The original's forward (and in train mode backward) pass on one batch, keyed and laid out
  as `parity_ref_<mode>.npz`. Uses the `reference` ordinal head throughout."""
  params = jax.tree.map(jnp.asarray, state.params)
  stats = jax.tree.map(jnp.asarray, state.batch_stats)
  prototype = jnp.asarray(state.prototype)
  lstm_state = tuple(jnp.asarray(a) for a in state.lstm_state)
  if lstm_state[0].shape[1] != x.shape[0]:
    raise DataError(f"the inputs hold {x.shape[0]} clips but the checkpoint's LSTM state (h, c) "
                    f"is for {lstm_state[0].shape[1]}: they must match")

  def task_loss(z, phi):
    out, final = models.estimate(phi, z, lstm_state, head="reference")
    ordloss = losses.ordinal_loss_from_prob(out.prob, targets, "reference")
    fewloss = losses.prototype_loss(z, prototype)
    return ordloss + fewloss, (out, final, ordloss, fewloss)

  def total(theta, phi):
    z, theta_stats = models.extract(theta, stats["theta"], x, train=train)
    loss, aux = task_loss(z, phi)
    return loss, (z, theta_stats, aux)

  @compile_options.jit
  def run(params):
    if train:
      (_, (z, theta_stats, aux)), (g_theta, g_phi) = jax.value_and_grad(
          total, argnums=(0, 1), has_aux=True)(params["theta"], params["phi"])
      z_grad = jax.grad(lambda z: task_loss(z, params["phi"])[0])(z)
    else:
      _, (z, theta_stats, aux) = total(params["theta"], params["phi"])
      g_theta = g_phi = z_grad = None
    grad_net_out, psi_stats = models.synthetic_gradient(
        params["psi"], stats["psi"], jax.lax.stop_gradient(z), train=train)
    return z, theta_stats, aux, g_theta, g_phi, z_grad, grad_net_out, psi_stats

  z, theta_stats, aux, g_theta, g_phi, z_grad, grad_net_out, psi_stats = run(params)
  out, (h_n, c_n), ordloss, fewloss = aux
  rec = {"features": z, "lstm_out": out.lstm_out, "fc_out": out.fc_out, "prob": out.prob,
         "decision": out.decision, "h_n": h_n, "c_n": c_n, "ordloss": ordloss,
         "fewloss": fewloss, "grad_net_out": grad_net_out}
  if train:
    rec["features_grad"] = z_grad
    # Gradients and buffers through the one layout table of the original format.
    grads = original_checkpoint.to_flat(original_checkpoint.OriginalState(
        {"theta": g_theta, "phi": g_phi, "psi": params["psi"]},
        {"theta": theta_stats, "psi": psi_stats}, prototype, lstm_state), dtype=x.dtype)
    for key, value in grads.items():
      is_buffer = ".running_" in key or key.endswith("num_batches_tracked")
      if key.startswith(("A/", "B/")) and not is_buffer:
        rec[f"param_grad/{key}"] = value
      elif key.startswith(("A/", "Grad/")) and is_buffer:
        rec[f"buffers_after/{key}"] = value
  rec = {k: np.asarray(v) for k, v in rec.items()}
  rec["decision"] = rec["decision"].astype(np.int64)  # the original's dtype
  return rec


def compare_with(ours: dict[str, np.ndarray], expect_path: str) -> list[tuple[str, str]]:
  """Deviations of `ours` from a reference file, by the reference rules (`compare.py`).

  The rules live beside the reference files (`shared/reference/compare.py`); they are loaded
  from the expectation file's folder so that one copy of them exists.
  """
  rules = os.path.join(os.path.dirname(os.path.abspath(expect_path)), "compare.py")
  if not os.path.exists(rules):
    raise DataError(f"{expect_path}: compare.py (the tolerance rules) is not beside it")
  # Loaded from its file each time: the rules beside this expectation file, not a module of
  # that name imported earlier from elsewhere.
  spec = importlib.util.spec_from_file_location("reference_compare", rules)
  compare = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(compare)
  with np.load(expect_path, allow_pickle=False) as f:
    ref = {k: f[k] for k in f.files}
  report_largest(ours, ref)
  return compare.violations(ours, ref)


def report_largest(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
  """Print the largest absolute deviation, and the largest relative to the key's scale
  (max |ours - ref| / max |ref|), over the float keys both hold."""
  worst_abs, worst_rel = ("", 0.0), ("", 0.0)
  for key, r in ref.items():
    if key not in ours or ours[key].shape != r.shape or r.dtype.kind not in "f":
      continue
    err = np.abs(ours[key].astype(np.float64) - r.astype(np.float64))
    if not err.size:
      continue
    rel = float(err.max() / max(np.abs(r).max(), 1e-30))
    if err.max() > worst_abs[1]:
      worst_abs = (key, float(err.max()))
    if rel > worst_rel[1]:
      worst_rel = (key, rel)
  print(f"largest absolute deviation: {worst_abs[1]:.3g} ({worst_abs[0]}); largest relative to "
        f"the key's scale: {worst_rel[1]:.3g} ({worst_rel[0]})")


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("checkpoint", None, "Original checkpoint, .pth (weights only) or .npz.")
  flags.DEFINE_string("inputs", None, "Inputs .npz (x, targets; with --step the step file).")
  flags.DEFINE_enum("mode", "train", ["train", "eval"], "Batch statistics (train) or running.")
  flags.DEFINE_string("out", None, "Where to write the outputs .npz.")
  flags.DEFINE_string("expect", None, "Reference .npz to compare with.")
  flags.DEFINE_bool("step", False, "One outer iteration (parity_step_*.npz), see "
                    "tools/reference_step.py; --inputs is then a step_fs<n>.npz file.")
  flags.DEFINE_enum("adapt_position", "extractor", ["extractor", "estimator", "both"],
                    "With --step: the adaptation position.")
  flags.DEFINE_integer("fewshots", 1, "With --step: synthetic-gradient (and test) steps.")
  flags.DEFINE_bool("x64", False, "With --step: run in float64 (for the *_f64.npz files).")


def run_forward(checkpoint: str, inputs: str, mode: str, out: str | None,
                expect: str | None) -> int:
  state = original_checkpoint.load(checkpoint)
  x, targets = load_inputs(inputs)
  rec = forward_backward(state, x, targets, train=(mode == "train"))
  if out:
    np.savez(out, **rec)
    print(f"wrote {len(rec)} arrays to {out}")
  if expect:
    bad = compare_with(rec, expect)
    for key, msg in bad:
      print(f"MISMATCH {key}: {msg}")
    print(f"{len(bad)} keys out of tolerance")
    return 1 if bad else 0
  return 0


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in ("checkpoint", "inputs"):
    if not getattr(FLAGS, name):
      print(f"error: --{name} is required", file=sys.stderr)
      return 2
  try:
    if FLAGS.step:
      from metarppg_jax.tools import reference_step  # pylint: disable=g-import-not-at-top
      return reference_step.run_step(FLAGS.checkpoint, FLAGS.inputs, FLAGS.adapt_position,
                                     FLAGS.fewshots, FLAGS.out, FLAGS.expect, x64=FLAGS.x64)
    return run_forward(FLAGS.checkpoint, FLAGS.inputs, FLAGS.mode, FLAGS.out, FLAGS.expect)
  except MetaRPPGError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
