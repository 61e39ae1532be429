"""Import/export of the original checkpoint format."""

import pickle

import jax
import numpy as np
import pytest
import torch

from metarppg_jax import models
from metarppg_jax import original_checkpoint as oc
from metarppg_jax.errors import CheckpointError


def _same_flat(a, b):
  assert set(a) == set(b)
  for k in a:
    assert a[k].dtype == b[k].dtype, k
    assert a[k].shape == b[k].shape, k
    assert np.array_equal(a[k], b[k]), k


def test_pth_round_trip_is_exact(reference_dir, tmp_path):
  src = torch.load(reference_dir / "checkpoint.pth", weights_only=True)
  state = oc.load(reference_dir / "checkpoint.pth")
  oc.save(tmp_path / "again.pth", state)
  back = torch.load(tmp_path / "again.pth", weights_only=True)
  assert set(back) == set(src)
  for group in ("A", "B", "Grad"):
    assert list(back[group]) == list(src[group])  # same keys, same order
    for name, tensor in src[group].items():
      assert back[group][name].dtype == tensor.dtype, name
      assert torch.equal(back[group][name], tensor), name
  for key in ("proto", "h", "c"):
    assert torch.equal(back[key], src[key])


def test_npz_round_trip_is_exact(reference_dir, tmp_path):
  src = oc.read_flat(reference_dir / "checkpoint.npz")
  oc.save(tmp_path / "again.npz", oc.load(reference_dir / "checkpoint.npz"))
  _same_flat(oc.read_flat(tmp_path / "again.npz"), src)


def test_pth_and_npz_agree(reference_dir):
  _same_flat(oc.read_flat(reference_dir / "checkpoint.pth"),
             oc.read_flat(reference_dir / "checkpoint.npz"))


def test_keys_and_shapes_match_the_documented_format(reference_dir):
  listed = {}
  for line in (reference_dir / "state_dict_keys.txt").read_text().splitlines():
    key, shape, dtype = line.split("\t")
    listed[key] = (tuple(int(s) for s in shape.strip("[]").split(",") if s.strip()), dtype)
  params, stats = models.init(jax.random.PRNGKey(0))
  flat = oc.to_flat(oc.OriginalState(params, stats, np.zeros(120), models.zero_lstm_state(2)))
  assert set(flat) == set(listed)
  for key, (shape, dtype) in listed.items():
    assert flat[key].shape == shape, key
    assert str(flat[key].dtype) == dtype, key


def test_float64_import(reference_dir):
  state = oc.load(reference_dir / "checkpoint.npz", dtype=np.float64)
  assert state.params["theta"]["conv1"]["kernel"].dtype == np.float64
  assert state.batch_stats["theta"]["bn1"]["count"].dtype == np.int32


def _flat(reference_dir):
  return oc.read_flat(reference_dir / "checkpoint.npz")


def test_wrong_shape_names_key_and_shapes(reference_dir, tmp_path):
  flat = _flat(reference_dir)
  flat["A/conv2.weight"] = np.zeros((48, 32, 1, 5, 5), np.float32)
  with pytest.raises(CheckpointError,
                     match=r"'A/conv2.weight' has shape \[48, 32, 1, 5, 5\], expected "
                           r"\[48, 32, 1, 3, 3\]"):
    oc.from_flat(flat, source="x.npz")


def test_missing_and_extra_keys(reference_dir):
  flat = _flat(reference_dir)
  del flat["B/fc.bias"]
  flat["B/fc2.weight"] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointError, match=r"missing keys \['B/fc.bias'\].*unexpected keys"):
    oc.from_flat(flat)


def test_wrong_dtype(reference_dir):
  flat = _flat(reference_dir)
  flat["A/bn1.num_batches_tracked"] = np.float32(3.0)
  with pytest.raises(CheckpointError, match="num_batches_tracked.*expected int64"):
    oc.from_flat(flat)
  flat = _flat(reference_dir)
  flat["proto"] = np.zeros(120, np.int32)
  with pytest.raises(CheckpointError, match="'proto'.*expected a float"):
    oc.from_flat(flat)


def test_non_finite_refused(reference_dir):
  flat = _flat(reference_dir)
  flat["B/fc.weight"][0, 0] = np.nan
  with pytest.raises(CheckpointError, match="non-finite"):
    oc.from_flat(flat)


def test_pth_with_pickled_object_is_refused_not_executed(tmp_path):
  marker = tmp_path / "executed"

  class Evil:
    def __reduce__(self):
      return (open, (str(marker), "w"))

  path = tmp_path / "evil.pth"
  with open(path, "wb") as f:
    pickle.dump({"A": Evil()}, f)
  with pytest.raises(CheckpointError, match="refused|not a readable"):
    oc.load(path)
  assert not marker.exists()


def test_npz_with_object_array_refused(tmp_path):
  path = tmp_path / "obj.npz"
  np.savez(path, proto=np.array([{"a": 1}], dtype=object))
  with pytest.raises(CheckpointError, match="pickled"):
    oc.load(path)


@pytest.mark.parametrize("content,suffix,match", [
    (b"", ".pth", "empty"),
    (b"not a zip", ".npz", "not a readable"),
    (b"garbage", ".pth", "not a readable|refused"),
    (b"x", ".ckpt", "unknown checkpoint extension"),
])
def test_unreadable_files(tmp_path, content, suffix, match):
  path = tmp_path / f"bad{suffix}"
  path.write_bytes(content)
  with pytest.raises(CheckpointError, match=match):
    oc.load(path)


def test_missing_file(tmp_path):
  with pytest.raises(CheckpointError, match="no such checkpoint"):
    oc.load(tmp_path / "nope.pth")
