"""The three Meta-rPPG networks as pure functions of explicit parameter trees.

theta, the feature extractor (`extract`): five blocks 3x3 conv -> batch norm -> avg-pool 2x2 ->
ReLU per frame, channels 3 -> 32 -> 48 -> 64 -> 80 -> 120, then the spatial mean.
phi, the rPPG estimator (`estimate`): a 2-layer bidirectional LSTM (hidden 60 a direction)
from an explicit initial state, a linear layer 120 -> 80 and the ordinal layer (40 levels).
psi, the synthetic gradient generator (`synthetic_gradient`): 1-D convolutions over the
feature axis with the 60 time steps as channels.

Every function is `(params, batch_stats, inputs, *, train) -> (outputs, new_batch_stats)` (phi
has no batch statistics). Nothing is hidden or stateful; randomness only enters `init`.

Parameter layouts (JAX; `checkpoints.py` converts to and from the original's PyTorch layouts):
  theta: convK {kernel f32[3, 3, in, out] (HWIO), bias f32[out]}, bnK {scale, bias f32[ch]}
  phi:   lstm {l0, l0_reverse, l1, l1_reverse} each {w_ih f32[in, 240], w_hh f32[60, 240],
         b_ih f32[240], b_hh f32[240]}, gates ordered (input, forget, cell, output) as PyTorch;
         fc {kernel f32[120, 80], bias f32[80]}
  psi:   layer1, layer2, layer3, layer4 {kernel f32[3, in, out], bias f32[out]}; layer3 and
         layer4 are PyTorch ConvTranspose1d (stride 1, padding 1), stored as the equivalent
         plain convolution (kernel flipped, in/out swapped); bn1, bn2, bn3 {scale, bias}
  batch stats: bnK {mean f32[ch], var f32[ch], count i32[]} for theta and psi.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metarppg_jax.data.preprocess import NUM_LEVELS  # the quantised PPG's levels
from metarppg_jax.data.preprocess import WINDOW  # psi's channels: the time steps of a window

PyTree = Any

EXTRACTOR_CHANNELS = (3, 32, 48, 64, 80, 120)
FEATURES = 120
HIDDEN = 60
PSI_CHANNELS = (60, 40, 20, 40, 60)
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
INIT_STD = 0.02
LSTM_LAYERS = ("l0", "l0_reverse", "l1", "l1_reverse")
ORDINAL_HEADS = ("sound", "reference")


class EstimatorOutput(NamedTuple):
  """What phi returns for one batch of feature sequences.

  lstm_out: f32[N, T, 120]; fc_out: f32[N, T, 80] (the ordinal logits, pairs (2k, 2k+1));
  prob: f32[N, T, 40], probability that the signal is above level k;
  decision: i32[N, T] in 0..40, the number of levels with prob > 0.5.
  """
  lstm_out: jax.Array
  fc_out: jax.Array
  prob: jax.Array
  decision: jax.Array


# --------------------------------------------------------------------------------------------
# Initialisation: the original's effective init (what its code does, not what it declares).
# --------------------------------------------------------------------------------------------

def _uniform(key, shape, bound, dtype):
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def init_theta(key: jax.Array, dtype=jnp.float32) -> tuple[PyTree, PyTree]:
  """Extractor parameters and batch statistics: conv weights N(0, 0.02), conv biases
  U(+-1/sqrt(9 in)), batch norm scale 1, bias 0, running mean 0, var 1."""
  params, stats = {}, {}
  keys = jax.random.split(key, 2 * (len(EXTRACTOR_CHANNELS) - 1))
  for k, (cin, cout) in enumerate(zip(EXTRACTOR_CHANNELS[:-1], EXTRACTOR_CHANNELS[1:])):
    params[f"conv{k + 1}"] = {
        "kernel": INIT_STD * jax.random.normal(keys[2 * k], (3, 3, cin, cout), dtype),
        "bias": _uniform(keys[2 * k + 1], (cout,), 1.0 / np.sqrt(cin * 9), dtype),
    }
    params[f"bn{k + 1}"] = {"scale": jnp.ones((cout,), dtype), "bias": jnp.zeros((cout,), dtype)}
    stats[f"bn{k + 1}"] = _init_bn_stats(cout, dtype)
  return params, stats


def init_phi(key: jax.Array, dtype=jnp.float32) -> PyTree:
  """Estimator parameters: LSTM weights and biases U(+-1/sqrt(60)), fc weight N(0, 0.02),
  fc bias U(+-1/sqrt(120))."""
  keys = jax.random.split(key, 4 * len(LSTM_LAYERS) + 2)
  bound = 1.0 / np.sqrt(HIDDEN)
  lstm = {}
  for i, name in enumerate(LSTM_LAYERS):
    k = keys[4 * i: 4 * i + 4]
    fan = FEATURES if name.startswith("l0") else 2 * HIDDEN
    lstm[name] = {
        "w_ih": _uniform(k[0], (fan, 4 * HIDDEN), bound, dtype),
        "w_hh": _uniform(k[1], (HIDDEN, 4 * HIDDEN), bound, dtype),
        "b_ih": _uniform(k[2], (4 * HIDDEN,), bound, dtype),
        "b_hh": _uniform(k[3], (4 * HIDDEN,), bound, dtype),
    }
  fc = {
      "kernel": INIT_STD * jax.random.normal(keys[-2], (2 * HIDDEN, 2 * NUM_LEVELS), dtype),
      "bias": _uniform(keys[-1], (2 * NUM_LEVELS,), 1.0 / np.sqrt(2 * HIDDEN), dtype),
  }
  return {"lstm": lstm, "fc": fc}


def init_psi(key: jax.Array, dtype=jnp.float32) -> tuple[PyTree, PyTree]:
  """Synthetic gradient generator parameters and batch statistics. Bias bounds follow
  PyTorch's fan-in: in*3 for Conv1d, out*3 for ConvTranspose1d (its weight's dim 1)."""
  keys = jax.random.split(key, 8)
  params, stats = {}, {}
  for k, (cin, cout) in enumerate(zip(PSI_CHANNELS[:-1], PSI_CHANNELS[1:])):
    transposed = k >= 2
    fan_in = (cout if transposed else cin) * 3
    params[f"layer{k + 1}"] = {
        "kernel": INIT_STD * jax.random.normal(keys[2 * k], (3, cin, cout), dtype),
        "bias": _uniform(keys[2 * k + 1], (cout,), 1.0 / np.sqrt(fan_in), dtype),
    }
    if k < 3:
      params[f"bn{k + 1}"] = {"scale": jnp.ones((cout,), dtype),
                              "bias": jnp.zeros((cout,), dtype)}
      stats[f"bn{k + 1}"] = _init_bn_stats(cout, dtype)
  return params, stats


def _init_bn_stats(ch, dtype):
  return {"mean": jnp.zeros((ch,), dtype), "var": jnp.ones((ch,), dtype),
          "count": jnp.zeros((), jnp.int32)}


def init(key: jax.Array, dtype=jnp.float32) -> tuple[PyTree, PyTree]:
  """All three networks: `params {theta, phi, psi}`, `batch_stats {theta, psi}`."""
  k_theta, k_phi, k_psi = jax.random.split(key, 3)
  theta, theta_stats = init_theta(k_theta, dtype)
  psi, psi_stats = init_psi(k_psi, dtype)
  return ({"theta": theta, "phi": init_phi(k_phi, dtype), "psi": psi},
          {"theta": theta_stats, "psi": psi_stats})


def zero_lstm_state(batch: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """(h, c), each f32[4, batch, 60]: layer 0 fwd, layer 0 bwd, layer 1 fwd, layer 1 bwd."""
  shape = (2 * 2, batch, HIDDEN)
  return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)  # two buffers: both get donated


# --------------------------------------------------------------------------------------------
# Batch norm with PyTorch's semantics.
# --------------------------------------------------------------------------------------------

def _staged_mean(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Mean over `axes`, one axis at a time (innermost first), keeping none of them.

  XLA:CPU sums a reduction over the leading axes of a channels-last tensor sequentially per
  channel (491,520 positions a channel in the extractor's first layer); staged, each sum is
  short and the float32 error of the batch statistics several times smaller (measured on the
  reference step at fewshots 2: psi's output 1.6 -> 0.9 of its parity tolerance). Means of
  equal-sized groups are the mean.
  """
  for a in sorted(axes, reverse=True):
    x = jnp.mean(x, axis=a, keepdims=True)
  return x.reshape([d for i, d in enumerate(x.shape) if i not in axes])


def batch_norm(params: PyTree, stats: PyTree, x: jax.Array, axes: tuple[int, ...], *,
               train: bool, offset: jax.Array | None = None, pool: bool = False
               ) -> tuple[jax.Array, PyTree]:
  """PyTorch BatchNorm over `axes` (every axis but the channel, which is last) of x + offset.

  train: normalise with the batch mean and the biased variance, computed centred (two
  passes: `E[x^2] - E[x]^2` loses float32 accuracy over large channels), and update
  `running = 0.9 running + 0.1 batch` with the unbiased variance and `count += 1`.
  eval: normalise with the running statistics; `stats` is returned unchanged.
  offset f32[C] (the preceding layer's bias): in train mode it cancels exactly in the
  normalisation, so it is not added to x (in float32 that would only cost bits); only the
  running mean sees it.
  pool: return the normalised map's 2x2 average pool (`_avg_pool2`, x f32[B, H, W, C]),
  normalised after pooling: the normalisation is affine per channel, so it commutes with the
  pool, and its elementwise work (and that of its gradient) runs on a map 4x smaller; the
  statistics stay those of the full map x.
  """
  target = _avg_pool2(x) if pool else x
  if not train:
    return _normalise(params, stats, target, None, None, offset)
  # The pooled map's mean is x's when the pool covers x (H, W even: means of equal groups).
  covered = not pool or (x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0)
  mean = _staged_mean(target if covered else x, axes)
  var = _staged_mean(jnp.square(x - mean), axes)
  return _normalise(params, stats, target, mean, var, offset,
                    count=np.prod([x.shape[a] for a in axes]))


def _normalise(params, stats, target, mean, var, offset, count=None):
  """Batch norm's affine step on `target` with the batch's (mean, biased var) of `count`
  values a channel (train) or, with mean None, the running statistics (eval) -> (y, stats)."""
  if mean is None:
    if offset is not None:
      target = target + offset
    y = (target - stats["mean"]) * jax.lax.rsqrt(stats["var"] + BN_EPS)
    return y * params["scale"] + params["bias"], stats
  y = (target - mean) * jax.lax.rsqrt(var + BN_EPS)
  if offset is not None:
    mean = mean + offset
  new_stats = {
      "mean": (1 - BN_MOMENTUM) * stats["mean"] + BN_MOMENTUM * jax.lax.stop_gradient(mean),
      "var": (1 - BN_MOMENTUM) * stats["var"]
             + BN_MOMENTUM * jax.lax.stop_gradient(var) * (count / max(count - 1, 1)),
      "count": stats["count"] + 1,
  }
  return y * params["scale"] + params["bias"], new_stats


# --------------------------------------------------------------------------------------------
# theta: the feature extractor.
# --------------------------------------------------------------------------------------------

def _avg_pool2(x):
  """2x2 average pool, stride 2, floor on odd sizes (PyTorch's default), NHWC."""
  n, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


_CONV_DN = ("NHWC", "HWIO", "NHWC")


def _conv3x3_xla(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=_CONV_DN)


@jax.custom_vjp
def _conv3x3(x, kernel):
  """3x3 convolution, stride 1, zero padding 1, no bias: f32[B, H, W, in] -> f32[B, H, W, out].

  Forward and input gradient by XLA's convolution; the weight gradient by `_kernel_gradient`.
  """
  return _conv3x3_xla(x, kernel)


def _conv3x3_fwd(x, kernel):
  return _conv3x3_xla(x, kernel), (x, kernel)


def _kernel_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
  """The 3x3 kernel's gradient f32[3, 3, in, out] from the input x f32[B, H, W, in] and the
  output's gradient g f32[B, H, W, out], as a plain forward convolution: the padded input with
  its channels as the batch and its frames as the features, g as an H x W kernel.

  XLA:CPU runs its own weight-gradient convolution fast only outside loops (inside one, as in
  a `lax.map` over videos, the extractor's forward+backward on 60 frames took 4.9 s against
  92 ms); this form is a convolution in the standard layouts, fast in both (88-94 ms, against
  131-139 ms for the im2col + matmul it replaces; interleaved, this project's 2-core CPU,
  with `compile_options.OPTIONS`).
  """
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  lhs = jnp.transpose(xp, (3, 1, 2, 0))  # [in, H + 2, W + 2, B]
  rhs = jnp.transpose(g, (1, 2, 0, 3))   # [H, W, B, out]
  d_kernel = jax.lax.conv_general_dilated(lhs, rhs, (1, 1), "VALID",
                                          dimension_numbers=_CONV_DN)  # [in, 3, 3, out]
  return jnp.transpose(d_kernel, (1, 2, 0, 3))


def _conv3x3_bwd(res, g):
  x, kernel = res
  # The input gradient is a convolution with the kernel flipped and in/out swapped.
  d_x = _conv3x3_xla(g, jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
  return d_x, _kernel_gradient(x, g)


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


# The first block on CPU: its 3 input channels make XLA:CPU's convolution slow (about a tenth
# of its speed on the later layers) and its full-size output the largest map of the network.
# The pool is folded into the convolution and the batch statistics come from the input.

def _space_to_depth(x: jax.Array) -> jax.Array:
  """f32[B, H, W, C] (H, W even) -> f32[B, H/2, W/2, 4C], channels (row, column, c) of
  each 2x2 block."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


def _pool_taps() -> np.ndarray:
  """A f32[3, 2, 3]: A[b, r, d] is the weight of kernel tap d (rows or columns alike) at
  position r of neighbouring block b - 1 in the 2x2 average of a 3x3 convolution's outputs:
  output 2i + o reads input 2i + o + d - 1, and each of the two outputs o counts 1/2."""
  a = np.zeros((3, 2, 3), np.float32)
  for o in range(2):
    for d in range(3):
      block, r = divmod(o + d - 1, 2)
      a[block + 1, r, d] += 0.5
  return a


def _pooled_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """2x2 average pool of the 3x3 convolution (zero padding 1, no bias), in one 3x3
  convolution of the space-to-depth input: f32[B, H, W, C] (H, W even) -> f32[B, H/2, W/2, O]."""
  a = jnp.asarray(_pool_taps(), kernel.dtype)
  c, o = kernel.shape[2:]
  block = jnp.einsum("irk,jsl,klco->ijrsco", a, a, kernel).reshape(3, 3, 4 * c, o)
  return _conv3x3(_space_to_depth(x), block)


IM2COL_CHUNK_BYTES = 1 << 18  # the patches of one chunk of frames (see `_patch_covariance`)


def _chunk_frames(frames: int, bytes_per_frame: int) -> int:
  """The largest divisor of `frames` whose patches take at most IM2COL_CHUNK_BYTES (>= 1)."""
  fit = max(1, IM2COL_CHUNK_BYTES // bytes_per_frame)
  return max(d for d in range(1, min(fit, frames) + 1) if frames % d == 0)


CHUNKS_UNROLLED = 16  # at most this many chunks of `_chunked_sum` written out in a row


def _chunked_sum(fn, arrays: tuple, chunk: int):
  """sum_k fn(*chunk k of arrays) over chunks of `chunk` frames (axis 0, a divisor); fn's
  output a pytree of fixed shapes.

  A scan unrolled CHUNKS_UNROLLED deep: a rolled loop of small dots and patch copies runs
  far slower on XLA:CPU, and the depth bounds the program's size.
  """
  count = arrays[0].shape[0] // chunk
  split = tuple(a.reshape((count, chunk) + a.shape[1:]) for a in arrays)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(fn, *(a[0] for a in split)))
  total, _ = jax.lax.scan(lambda acc, c: (jax.tree.map(jnp.add, acc, fn(*c)), None), zeros,
                          split, unroll=min(count, CHUNKS_UNROLLED))
  return total


def _pixel_minor_patches(xp: jax.Array, size: int) -> jax.Array:
  """im2col of a padded map f32[B, H + size - 1, W + size - 1, C] -> f32[size * size * C,
  B * H * W]: rows (tap row, tap column, channel), the HWIO kernel's order; pixels minor.

  The patch Gram contracts over pixels: with pixels the minor axis the dot reads the
  patches as they lie, where channels-last patches made XLA copy them transposed first.
  """
  size_h, size_w = xp.shape[1] - size + 1, xp.shape[2] - size + 1
  xt = jnp.moveaxis(xp, -1, 0)  # [C, B, H', W']: 1/size^2 of the patches' bytes to move
  taps = [xt[:, :, i:i + size_h, j:j + size_w] for i in range(size) for j in range(size)]
  return jnp.stack(taps).reshape(size * size * xp.shape[-1], -1)


def _block_taps() -> np.ndarray:
  """I i32[4, 9]: the 3x3 patch of the pixel at phase (a, b) of a 2x2 block, as positions in
  the 2x2-block patch of the padded space-to-depth map: I[2a + b, 3 di + dj] for tap (di, dj),
  as (block row, block column, row in block, column in block) flattened. Output pixel
  2i + a reads padded input 2i + a + di: block i + (a + di) // 2, row (a + di) % 2."""
  idx = np.zeros((4, 9), np.int32)
  for a in range(2):
    for b in range(2):
      for di in range(3):
        for dj in range(3):
          (bi, r), (bj, c) = divmod(a + di, 2), divmod(b + dj, 2)
          idx[2 * a + b, 3 * di + dj] = ((bi * 2 + bj) * 2 + r) * 2 + c
  return idx


def _patch_covariance(x: jax.Array) -> jax.Array:
  """Covariance f32[9C, 9C] of the 3x3 zero-padded patches of every pixel of x f32[B, H, W, C]
  (H, W even; rows: tap (row, column), then channel: the HWIO kernel's order), so that the
  variance of a 3x3 convolution's output channel o is w_o' cov w_o.

  Every 3x3 patch lies in the 2x2-block patch (16C values) of its block of the padded
  space-to-depth map, so the Gram of those, over 4x fewer positions, holds the Gram of the
  3x3 patches of all four pixels of a block: it is summed over the four index sets
  (`_block_taps`). Half the bytes of the 3x3 patches' im2col (one-video test 402 -> 356 ms,
  interleaved, this project's 2-core CPU). The input is centred per channel first (padding
  included) to keep the float32 sums small; covariance does not move. Chunks of about one
  frame (IM2COL_CHUNK_BYTES) keep each dot's sum short: on the reference inputs the error was
  3e-9 against 1e-8 with 4 MB chunks, which was enough to fail the gradient parity there
  (conv4's weight gradient at 3.2x its tolerance); as fast (235 against 233 ms).
  """
  b, h, w, c = x.shape
  mean = _staged_mean(x, (0, 1, 2))
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))) - mean
  chunk = _chunk_frames(b, 16 * h * w // 4 * c * x.dtype.itemsize)

  def moments(xc):
    # channels of the space-to-depth map: (row in block, column in block, c)
    p = _pixel_minor_patches(_space_to_depth(xc), 2)  # rows (block row, block column, r, s, c)
    return p @ p.T, p.sum(1)

  gram, total = _chunked_sum(moments, (xp,), chunk)
  rows = (_block_taps()[:, :, None] * c + np.arange(c)).reshape(4, 9 * c)  # + channel
  n = b * h * w
  second = sum(gram[r][:, r] for r in rows) / n
  centre = sum(total[r] for r in rows) / n
  return second - jnp.outer(centre, centre)


def _first_block(conv: PyTree, bn: PyTree, stats: PyTree, x: jax.Array, *, train: bool):
  """conv -> batch norm -> 2x2 average pool of `extract`'s block, for few input channels and
  H, W even, without the full-size map: the pooled output from `_pooled_conv`, the batch mean
  from it (the pool covers the map), the variance as w' cov w (`_patch_covariance`).
  f32[B, H, W, C] -> (f32[B, H/2, W/2, O] before the ReLU, new stats)."""
  kernel = conv["kernel"].astype(x.dtype)
  pooled = _pooled_conv(x, kernel)
  offset = conv["bias"].astype(x.dtype)
  if not train:
    return _normalise(bn, stats, pooled, None, None, offset)
  weights = kernel.reshape(-1, kernel.shape[-1])
  cov = _patch_covariance(x)
  var = jnp.einsum("po,pq,qo->o", weights, cov, weights)
  mean = _staged_mean(pooled, (0, 1, 2))
  return _normalise(bn, stats, pooled, mean, var, offset, count=np.prod(x.shape[:3]))


def _on_cpu() -> bool:
  """Whether the default backend is XLA:CPU, for which the CPU forms here are written."""
  return jax.default_backend() == "cpu"


def _fold_first_block(x: jax.Array) -> bool:
  """Whether `extract`'s first block takes `_first_block`: on CPU (where the
  small-channel convolution is the bottleneck), few channels, even sizes."""
  return (_on_cpu() and x.shape[-1] <= 4 and x.shape[1] % 2 == 0
          and x.shape[2] % 2 == 0)


def extract(theta: PyTree, stats: PyTree, x: jax.Array, *, train: bool = True
            ) -> tuple[jax.Array, PyTree]:
  """Features of every frame: f32[N, T, H, W, 3] -> z f32[N, T, 120]; H, W >= 32.

  Time never mixes: batch and time are folded into one conv batch axis.
  """
  n, t = x.shape[:2]
  h = x.reshape((n * t,) + x.shape[2:])
  # The weight gradient as a forward convolution is for XLA:CPU; GPUs have their own (cuDNN's).
  conv3x3 = _conv3x3 if _on_cpu() else _conv3x3_xla
  new_stats = {}
  for k in range(1, len(EXTRACTOR_CHANNELS)):
    conv = theta[f"conv{k}"]
    if k == 1 and _fold_first_block(h):
      h, new_stats["bn1"] = _first_block(conv, theta["bn1"], stats["bn1"], h, train=train)
    else:
      h = conv3x3(h, conv["kernel"].astype(h.dtype))  # the bias goes to the batch norm
      h, new_stats[f"bn{k}"] = batch_norm(theta[f"bn{k}"], stats[f"bn{k}"], h, (0, 1, 2),
                                          train=train, offset=conv["bias"].astype(h.dtype),
                                          pool=True)  # pooled before normalised: 4x less work
    h = jax.nn.relu(h)
  z = h.mean(axis=(1, 2))
  return z.reshape(n, t, -1), new_stats


# --------------------------------------------------------------------------------------------
# phi: the rPPG estimator.
# --------------------------------------------------------------------------------------------

def _bilstm_layer(fwd: PyTree, bwd: PyTree, x: jax.Array, h0: jax.Array, c0: jax.Array):
  """One bidirectional LSTM layer, both directions in one scan.

  x f32[N, T, in]; h0, c0 f32[2, N, 60] (fwd, bwd) -> out f32[N, T, 120], (h, c) f32[2, N, 60].
  """
  # Input projections for all steps at once; the backward direction reads time reversed.
  gx = jnp.stack([x @ fwd["w_ih"] + fwd["b_ih"] + fwd["b_hh"],
                  jnp.flip(x, 1) @ bwd["w_ih"] + bwd["b_ih"] + bwd["b_hh"]])  # [2, N, T, 240]
  gx = jnp.moveaxis(gx, 2, 0)  # [T, 2, N, 240]
  w_hh = jnp.stack([fwd["w_hh"], bwd["w_hh"]])  # [2, 60, 240]

  def step(carry, g):
    h, c = carry
    g = g + jnp.einsum("dnh,dhg->dng", h, w_hh)
    i, f, gg, o = jnp.split(g, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  (h, c), hs = jax.lax.scan(step, (h0, c0), gx)  # hs [T, 2, N, 60]
  out = jnp.concatenate([hs[:, 0], jnp.flip(hs[:, 1], 0)], axis=-1)  # [T, N, 120]
  return jnp.moveaxis(out, 0, 1), (h, c)


def lstm(phi_lstm: PyTree, z: jax.Array, state: tuple[jax.Array, jax.Array]
         ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """2-layer BiLSTM, batch first: z f32[N, T, 120], (h, c) f32[4, N, 60] -> out f32[N, T, 120],
  final (h, c) f32[4, N, 60] in PyTorch's order."""
  h0, c0 = state
  out, (h_a, c_a) = _bilstm_layer(phi_lstm["l0"], phi_lstm["l0_reverse"], z, h0[:2], c0[:2])
  out, (h_b, c_b) = _bilstm_layer(phi_lstm["l1"], phi_lstm["l1_reverse"], out, h0[2:], c0[2:])
  return out, (jnp.concatenate([h_a, h_b]), jnp.concatenate([c_a, c_b]))


def ordinal_logits(fc_out: jax.Array, head: str) -> tuple[jax.Array, jax.Array]:
  """The pairs (a_k, b_k) = (fc_out[..., 2k], fc_out[..., 2k+1]) as two f32[..., 40];
  `reference` clamps both to [1e-8, 1e8] as the original does (zero gradient below)."""
  a, b = fc_out[..., 0::2], fc_out[..., 1::2]
  if head == "reference":
    a, b = jnp.clip(a, 1e-8, 1e8), jnp.clip(b, 1e-8, 1e8)
  elif head != "sound":
    raise ValueError(f"ordinal head must be one of {ORDINAL_HEADS}, got {head!r}")
  return a, b


def ordinal_layer(fc_out: jax.Array, head: str = "sound") -> tuple[jax.Array, jax.Array]:
  """f32[N, T, 80] -> prob f32[N, T, 40] (p_k = softmax(a_k, b_k)[1]), decision i32[N, T]."""
  a, b = ordinal_logits(fc_out, head)
  if head == "reference":
    prob = jax.nn.softmax(jnp.stack([a, b]), axis=0)[1]  # the original's op, for bit parity
  else:
    prob = jax.nn.sigmoid(b - a)
  decision = jnp.sum(prob > 0.5, axis=-1).astype(jnp.int32)
  return prob, decision


def estimate(phi: PyTree, z: jax.Array, state: tuple[jax.Array, jax.Array], *,
             head: str = "sound") -> tuple[EstimatorOutput, tuple[jax.Array, jax.Array]]:
  """rPPG estimator: z f32[N, T, 120], (h, c) f32[4, N, 60] -> outputs, final (h, c)."""
  lstm_out, final = lstm(phi["lstm"], z, state)
  fc_out = lstm_out @ phi["fc"]["kernel"] + phi["fc"]["bias"]
  prob, decision = ordinal_layer(fc_out, head)
  return EstimatorOutput(lstm_out, fc_out, prob, decision), final


# --------------------------------------------------------------------------------------------
# psi: the synthetic gradient generator.
# --------------------------------------------------------------------------------------------

def _conv1d(params, x):
  """x f32[N, D, C_in] (channels last over the feature axis D), kernel [3, in, out], pad 1."""
  return jax.lax.conv_general_dilated(
      x, params["kernel"].astype(x.dtype), (1,), ((1, 1),),
      dimension_numbers=("NWC", "WIO", "NWC")) + params["bias"]


def synthetic_gradient(psi: PyTree, stats: PyTree, inp: jax.Array, *, train: bool = True
                       ) -> tuple[jax.Array, PyTree]:
  """psi: f32[N, 60, D] (time steps as channels, D = 120 features or 40 probabilities) ->
  the synthetic gradient f32[N, 60, D]; batch norm over (N, D) per channel."""
  x = jnp.swapaxes(inp, 1, 2)  # [N, D, 60]
  new_stats = {}

  def block(k, x):
    y = _conv1d(psi[f"layer{k}"], x)
    y, new_stats[f"bn{k}"] = batch_norm(psi[f"bn{k}"], stats[f"bn{k}"], y, (0, 1), train=train)
    return jax.nn.relu(y)

  r1 = block(1, x)
  r2 = block(2, r1)
  r3 = block(3, r2) + r1
  out = _conv1d(psi["layer4"], r3)
  return jnp.swapaxes(out, 1, 2), new_stats
