"""The original release's checkpoint format: import into, and export from, this project.

The original saves `{'A': extractor state dict, 'B': estimator state dict, 'Grad': psi state
dict, 'proto': [120], 'h': [4, N, 60], 'c': [4, N, 60]}` with `torch.save`. The torch-free twin
is an `.npz` with flat keys `A/<name>`, `B/<name>`, `Grad/<name>`, `proto`, `h`, `c`
(`../shared/reference/state_dict_keys.txt` lists every key). Both convert to and from
`OriginalState` (this project's parameter trees, see `models.py` for their layouts).

`.pth` files are read with `torch.load(weights_only=True)` only: a file holding pickled
objects is refused, never executed. torch is needed for `.pth` only (extra `[torch]`).
"""

import os
import zipfile
from typing import Any, Mapping, NamedTuple

import numpy as np

from metarppg_jax import models
from metarppg_jax.errors import CheckpointError

PyTree = Any
_GROUPS = ("A", "B", "Grad")


class OriginalState(NamedTuple):
  """What an original checkpoint holds, in this project's layouts (numpy arrays).

  params {theta, phi, psi}; batch_stats {theta, psi}; prototype f[120];
  lstm_state (h f[4, N, 60], c f[4, N, 60]).
  """
  params: PyTree
  batch_stats: PyTree
  prototype: np.ndarray
  lstm_state: tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------------------------
# Layout conversion, one table of (torch name, tree path, to_torch, from_torch) per network.
# --------------------------------------------------------------------------------------------

def _conv2d_to_torch(k):      # [3, 3, in, out] -> [out, in, 1, 3, 3]
  return np.transpose(k, (3, 2, 0, 1))[:, :, None]


def _conv2d_from_torch(w):
  return np.transpose(w[:, :, 0], (2, 3, 1, 0))


def _conv1d_to_torch(k):      # [3, in, out] -> [out, in, 3]
  return np.transpose(k, (2, 1, 0))


def _conv1d_from_torch(w):
  return np.transpose(w, (2, 1, 0))


def _convt1d_to_torch(k):     # equivalent plain conv [3, in, out] -> ConvTranspose [in, out, 3]
  return np.transpose(k[::-1], (1, 2, 0))


def _convt1d_from_torch(w):
  return np.transpose(w, (2, 0, 1))[::-1]


def _same(x):
  return x


def _count_to_torch(x):
  return np.asarray(x, np.int64)


def _count_from_torch(x):
  return np.asarray(x, np.int32)


def _bn_entries(prefix, torch_name, net, bn):
  """Batch norm: weight/bias are parameters, running statistics are batch stats."""
  return [
      (f"{prefix}/{torch_name}.weight", ("params", net, bn, "scale"), _same, _same),
      (f"{prefix}/{torch_name}.bias", ("params", net, bn, "bias"), _same, _same),
      (f"{prefix}/{torch_name}.running_mean", ("batch_stats", net, bn, "mean"), _same, _same),
      (f"{prefix}/{torch_name}.running_var", ("batch_stats", net, bn, "var"), _same, _same),
      (f"{prefix}/{torch_name}.num_batches_tracked", ("batch_stats", net, bn, "count"),
       _count_to_torch, _count_from_torch),
  ]


def _table():
  """(flat key, (tree, *path), to_torch, from_torch) for every array of the format."""
  rows = []
  for k in range(1, 6):
    rows += [(f"A/conv{k}.weight", ("params", "theta", f"conv{k}", "kernel"),
              _conv2d_to_torch, _conv2d_from_torch),
             (f"A/conv{k}.bias", ("params", "theta", f"conv{k}", "bias"), _same, _same)]
  for k in range(1, 6):
    rows += _bn_entries("A", f"bn{k}", "theta", f"bn{k}")
  for layer in models.LSTM_LAYERS:
    sfx = layer[1:]  # "0", "0_reverse", ...
    rows += [
        (f"B/lstm.weight_ih_l{sfx}", ("params", "phi", "lstm", layer, "w_ih"), np.transpose,
         np.transpose),
        (f"B/lstm.weight_hh_l{sfx}", ("params", "phi", "lstm", layer, "w_hh"), np.transpose,
         np.transpose),
        (f"B/lstm.bias_ih_l{sfx}", ("params", "phi", "lstm", layer, "b_ih"), _same, _same),
        (f"B/lstm.bias_hh_l{sfx}", ("params", "phi", "lstm", layer, "b_hh"), _same, _same),
    ]
  rows += [("B/fc.weight", ("params", "phi", "fc", "kernel"), np.transpose, np.transpose),
           ("B/fc.bias", ("params", "phi", "fc", "bias"), _same, _same)]
  for k in range(1, 5):
    to, frm = ((_convt1d_to_torch, _convt1d_from_torch) if k >= 3
               else (_conv1d_to_torch, _conv1d_from_torch))
    rows += [(f"Grad/layer{k}.0.weight", ("params", "psi", f"layer{k}", "kernel"), to, frm),
             (f"Grad/layer{k}.0.bias", ("params", "psi", f"layer{k}", "bias"), _same, _same)]
    if k < 4:
      rows += _bn_entries("Grad", f"layer{k}.1", "psi", f"bn{k}")
  return rows


_TABLE = _table()


def _expected_shapes() -> dict[str, tuple[tuple[int, ...], str]]:
  """Flat key -> (PyTorch shape, dtype name), from this project's own init."""
  import jax  # local: keep the module importable for numpy-only checks
  params, stats = jax.eval_shape(lambda: models.init(jax.random.PRNGKey(0)))
  trees = {"params": params, "batch_stats": stats}
  out = {}
  for key, (tree, *path), to_torch, _ in _TABLE:
    leaf = trees[tree]
    for p in path:
      leaf = leaf[p]
    dummy = to_torch(np.zeros(leaf.shape, np.float32))
    out[key] = (tuple(dummy.shape), "int64" if key.endswith("num_batches_tracked") else "float32")
  out["proto"] = ((models.FEATURES,), "float32")
  return out


EXPECTED_KEYS = tuple(k for k, *_ in _TABLE) + ("proto", "h", "c")


def _check(flat: Mapping[str, np.ndarray], source: str) -> None:
  missing = [k for k in EXPECTED_KEYS if k not in flat]
  extra = [k for k in flat if k not in EXPECTED_KEYS]
  if missing or extra:
    raise CheckpointError(
        f"{source}: not an original Meta-rPPG checkpoint: "
        + (f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}" if missing else "")
        + ("; " if missing and extra else "")
        + (f"unexpected keys {extra[:8]}{'...' if len(extra) > 8 else ''}" if extra else ""))
  expected = _expected_shapes()
  for key, (shape, dtype) in expected.items():
    arr = flat[key]
    if tuple(arr.shape) != shape:
      raise CheckpointError(f"{source}: key {key!r} has shape {list(arr.shape)}, "
                            f"expected {list(shape)}")
    if dtype == "int64" and arr.dtype.kind not in "iu":
      raise CheckpointError(f"{source}: key {key!r} has dtype {arr.dtype}, expected int64")
    if dtype != "int64" and arr.dtype.kind != "f":
      raise CheckpointError(f"{source}: key {key!r} has dtype {arr.dtype}, expected a float")
  h, c = flat["h"], flat["c"]
  for name, arr in (("h", h), ("c", c)):
    if arr.ndim != 3 or arr.shape[0] != 4 or arr.shape[2] != models.HIDDEN:
      raise CheckpointError(f"{source}: key {name!r} has shape {list(arr.shape)}, "
                            f"expected [4, N, {models.HIDDEN}]")
  if h.shape != c.shape:
    raise CheckpointError(f"{source}: 'h' {list(h.shape)} and 'c' {list(c.shape)} differ")
  for key in EXPECTED_KEYS:
    if flat[key].dtype.kind == "f" and not np.all(np.isfinite(flat[key])):
      raise CheckpointError(f"{source}: key {key!r} holds non-finite values")


def from_flat(flat: Mapping[str, np.ndarray], *, source: str = "checkpoint",
              dtype=None) -> OriginalState:
  """Flat PyTorch-named arrays -> OriginalState; CheckpointError naming the key on mismatch.

  dtype: cast floating arrays to it (e.g. np.float64 for float64 parity runs); default keeps
  the file's float dtype.
  """
  flat = {k: np.asarray(v) for k, v in flat.items()}
  _check(flat, source)
  cast = (lambda a: a.astype(dtype) if a.dtype.kind == "f" else a) if dtype else _same
  trees: dict = {"params": {}, "batch_stats": {}}
  for key, (tree, *path), _, from_torch in _TABLE:
    node = trees[tree]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = cast(np.array(from_torch(flat[key]), order="C"))
  return OriginalState(trees["params"], trees["batch_stats"], cast(flat["proto"]),
                       (cast(flat["h"]), cast(flat["c"])))


def to_flat(state: OriginalState, *, dtype=np.float32) -> dict[str, np.ndarray]:
  """OriginalState (numpy or jax leaves) -> flat PyTorch-named arrays (float32 by default,
  `num_batches_tracked` int64)."""
  trees = {"params": state.params, "batch_stats": state.batch_stats}
  flat = {}
  for key, (tree, *path), to_torch, _ in _TABLE:
    leaf = trees[tree]
    for p in path:
      leaf = leaf[p]
    arr = np.asarray(leaf)
    arr = to_torch(arr if arr.dtype.kind in "iu" else arr.astype(dtype))
    flat[key] = np.array(arr, order="C")  # ascontiguousarray would make 0-d arrays 1-d
  flat["proto"] = np.asarray(state.prototype, dtype)
  flat["h"] = np.asarray(state.lstm_state[0], dtype)
  flat["c"] = np.asarray(state.lstm_state[1], dtype)
  return flat


# --------------------------------------------------------------------------------------------
# Files.
# --------------------------------------------------------------------------------------------

def _require_torch(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError(
        f"{path}: reading or writing .pth needs torch: pip install -e '.[torch]' "
        "(or convert the checkpoint to .npz where torch is installed)") from e
  return torch


def read_flat(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Read a `.pth` (weights only) or `.npz` checkpoint of the original format, unvalidated."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such checkpoint file")
  if os.path.getsize(path) == 0:
    raise CheckpointError(f"{path}: the checkpoint file is empty")
  if path.endswith(".npz"):
    if not zipfile.is_zipfile(path):
      raise CheckpointError(f"{path}: not a readable .npz file (not a zip archive)")
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    except ValueError as e:  # object arrays need pickle: refused
      raise CheckpointError(f"{path}: holds pickled objects, refused ({e})") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
      raise CheckpointError(f"{path}: not a readable .npz file ({e})") from e
  if path.endswith((".pth", ".pt")):
    torch = _require_torch(path)
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      if "weights_only" in str(e) or "Unsupported global" in str(e):
        raise CheckpointError(
            f"{path}: holds pickled Python objects, refused (only tensors are loaded, "
            f"weights_only=True): {msg}") from e
      raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg})") from e
    if not isinstance(obj, Mapping):
      raise CheckpointError(f"{path}: expected a dict of state dicts, found {type(obj).__name__}")
    flat = {}
    for group, value in obj.items():
      if isinstance(value, Mapping):
        for name, tensor in value.items():
          flat[f"{group}/{name}"] = _tensor_to_numpy(tensor, f"{group}/{name}", path)
      else:
        flat[group] = _tensor_to_numpy(value, group, path)
    return flat
  raise CheckpointError(f"{path}: unknown checkpoint extension (expected .pth, .pt or .npz)")


def _tensor_to_numpy(tensor, key, path):
  if not hasattr(tensor, "detach"):
    raise CheckpointError(f"{path}: key {key!r} is a {type(tensor).__name__}, expected a tensor")
  return tensor.detach().cpu().numpy()


def load(path: str | os.PathLike, *, dtype=None) -> OriginalState:
  """Read and validate an original checkpoint (`.pth` or `.npz`)."""
  return from_flat(read_flat(path), source=os.fspath(path), dtype=dtype)


def save(path: str | os.PathLike, state: OriginalState) -> None:
  """Write `state` in the original format: `.pth` (torch.save of the nested dict) or `.npz`."""
  path = os.fspath(path)
  flat = to_flat(state)
  if path.endswith(".npz"):
    np.savez(path, **flat)
    return
  if not path.endswith((".pth", ".pt")):
    raise CheckpointError(f"{path}: unknown checkpoint extension (expected .pth, .pt or .npz)")
  torch = _require_torch(path)
  from collections import OrderedDict  # pylint: disable=g-import-not-at-top
  nested: dict = {g: OrderedDict() for g in _GROUPS}
  for key, arr in flat.items():
    if "/" in key:
      group, name = key.split("/", 1)
      nested[group][name] = torch.from_numpy(np.array(arr))
    else:
      nested[key] = torch.from_numpy(np.array(arr))
  torch.save(nested, path)
