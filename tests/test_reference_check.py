"""The reference check tool reproduces the original's forward/backward pass."""

import subprocess
import sys

import numpy as np
import pytest

from metarppg_jax import original_checkpoint
from metarppg_jax.errors import DataError
from metarppg_jax.tools import reference_check


@pytest.mark.parametrize("checkpoint", ["checkpoint.pth", "checkpoint.npz"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_matches_reference(reference_dir, compare, checkpoint, mode, tmp_path):
  out = tmp_path / "out.npz"
  rc = reference_check.run_forward(str(reference_dir / checkpoint), str(reference_dir / "io.npz"),
                                   mode, str(out), None)
  assert rc == 0
  ours = dict(np.load(out))
  ref = dict(np.load(reference_dir / f"parity_ref_{mode}.npz"))
  assert set(ref) <= set(ours)
  assert compare.violations(ours, ref) == []
  assert ours["decision"].dtype == np.int64


def test_command_line_with_expect(reference_dir, tmp_path):
  out = tmp_path / "out.npz"
  proc = subprocess.run(
      [sys.executable, "-m", "metarppg_jax.tools.reference_check",
       "--checkpoint", str(reference_dir / "checkpoint.npz"),
       "--inputs", str(reference_dir / "io.npz"), "--mode", "eval", "--out", str(out),
       "--expect", str(reference_dir / "parity_ref_eval.npz")],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "0 keys out of tolerance" in proc.stdout
  assert "largest absolute deviation" in proc.stdout


def test_detects_a_wrong_checkpoint(reference_dir, tmp_path):
  """A perturbed checkpoint must fail the comparison: the check can fail."""
  state = original_checkpoint.load(reference_dir / "checkpoint.npz")
  state.params["phi"]["fc"]["bias"] = state.params["phi"]["fc"]["bias"] + 0.05
  bad = tmp_path / "bad.npz"
  original_checkpoint.save(bad, state)
  rc = reference_check.run_forward(str(bad), str(reference_dir / "io.npz"), "eval",
                                   None, str(reference_dir / "parity_ref_eval.npz"))
  assert rc == 1


def test_any_batch_size(reference_dir, tmp_path):
  """Batch 1 and 3: the tool follows the checkpoint's (h, c) batch; per-clip outputs of the
  estimator match the batch-2 run where the clips coincide (the extractor's batch statistics
  differ with the batch, so only eval mode is batch-independent)."""
  state = original_checkpoint.load(reference_dir / "checkpoint.npz")
  io = np.load(reference_dir / "io.npz")
  full = reference_check.forward_backward(state, io["x"].astype(np.float32), io["targets"],
                                          train=False)
  for n in (1, 3):
    idx = np.arange(n) % 2
    h, c = (a[:, idx] for a in state.lstm_state)
    st = state._replace(lstm_state=(h, c))
    ckpt = tmp_path / f"b{n}.npz"
    original_checkpoint.save(ckpt, st)
    inputs = tmp_path / f"io{n}.npz"
    np.savez(inputs, x=io["x"][idx], targets=io["targets"][idx])
    out = tmp_path / f"o{n}.npz"
    assert reference_check.run_forward(str(ckpt), str(inputs), "eval", str(out), None) == 0
    rec = np.load(out)
    assert rec["prob"].shape == (n, 60, 40)
    np.testing.assert_allclose(rec["prob"], full["prob"][idx], atol=1e-6)
    rc = reference_check.run_forward(str(ckpt), str(inputs), "train", str(out), None)
    assert rc == 0 and np.load(out)["param_grad/A/conv1.weight"].shape == (32, 3, 1, 3, 3)


def test_inputs_errors(reference_dir, tmp_path):
  bad = tmp_path / "bad.npz"
  np.savez(bad, x=np.zeros((2, 60, 64, 64, 3), np.float32))
  with pytest.raises(DataError, match="missing key 'targets'"):
    reference_check.load_inputs(str(bad))
  np.savez(bad, x=np.zeros((2, 60, 64, 64), np.float32), targets=np.zeros((2, 60), int))
  with pytest.raises(DataError, match="expected \\[N, T, H, W, 3\\]"):
    reference_check.load_inputs(str(bad))
  np.savez(bad, x=np.zeros((3, 60, 64, 64, 3), np.float32), targets=np.zeros((3, 60), int))
  state = original_checkpoint.load(reference_dir / "checkpoint.npz")
  x, t = reference_check.load_inputs(str(bad))
  with pytest.raises(DataError, match="must match"):
    reference_check.forward_backward(state, x, t, train=False)
