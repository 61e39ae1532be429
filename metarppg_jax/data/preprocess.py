"""Preprocessing between decoded face crops and model inputs: one implementation of each step.

- `resample_video`: frames at irregular or other rates (MAHNOB's 61 fps, variable-frame-rate
  files) onto a constant rate, by the nearest frame in time (default) or a linear blend.
- `resample_signal`: ground truth (PPG, HR) onto frame times, with coverage checks.
- `window_starts`: THE window maker; every caller cuts windows with it.
- `normalize_clip`: per-window normalisation, "pixel" (the default input), "sound" (what the
  paper intended) or "reference" (what the original release effectively computed).
- `quantize_ppg`: the 40 ordinal levels of the targets, with a guard for flat windows.
- `masked_rgb_means`: the per-frame mean skin colour that the classical baselines consume.

All functions are vectorised over leading batch dimensions (numpy; `normalize_clip`
jax.numpy, so that it also runs jitted on a device); none loops over pixels.
"""

import jax
import jax.numpy as jnp
import numpy as np

from metarppg_jax.errors import DataError

NUM_LEVELS = 40   # quantisation levels of a PPG window: the ordinal head's outputs
WINDOW = 60       # frames a window: psi takes a window's time steps as its channels
NORMALIZATIONS = ("sound", "pixel", "reference")   # normalize_clip's modes
PIXEL_CLIP = 0.1  # "pixel": a relative change beyond 10 % is motion or glare, not a pulse


def resample_video(frames: np.ndarray, timestamps: np.ndarray, fps: float, *,
                   method: str = "nearest") -> tuple[np.ndarray, np.ndarray]:
  """Resamples frames at arbitrary times onto a constant frame rate.

  The output times are `k / fps` for k = 0 .. floor(t_last * fps) (t shifted to start at 0),
  so the output never extrapolates past the last frame.

  "nearest" takes for each output time the input frame closest in time: real frames, uint8
  kept exactly, timing error at most half an input interval (8 ms for 61 -> 30 fps), which is
  a small phase jitter for a pulse of at most 4 Hz. "linear" blends the two neighbouring
  frames by their distance in time (rounded back to the input dtype): no jitter, but motion
  becomes ghosting and the blend is a mild temporal low-pass.

  Args:
    frames: [T, ...] (e.g. uint8[T, H, W, 3]).
    timestamps: f[T] seconds, strictly increasing.
    fps: target rate > 0.
    method: "nearest" or "linear".

  Returns:
    (frames [T', ...] in the input dtype, f64[T'] new timestamps k / fps).
  """
  t = np.asarray(timestamps, np.float64)
  if fps <= 0:
    raise ValueError(f"fps must be > 0, got {fps}")
  if t.ndim != 1 or t.shape[0] != frames.shape[0] or t.shape[0] == 0:
    raise ValueError(f"timestamps {t.shape} do not match frames {frames.shape}")
  if not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
    raise ValueError("timestamps must be finite and strictly increasing")
  t = t - t[0]
  count = int(np.floor(t[-1] * fps + 1e-6)) + 1
  new_t = np.arange(count, dtype=np.float64) / fps
  right = np.clip(np.searchsorted(t, new_t, side="left"), 1, max(len(t) - 1, 1))
  left = right - 1
  if len(t) == 1:
    return frames[np.zeros(count, np.int64)], new_t
  if method == "nearest":
    nearest = np.where(new_t - t[left] <= t[right] - new_t, left, right)
    return frames[nearest], new_t
  if method == "linear":
    w = np.clip((new_t - t[left]) / (t[right] - t[left]), 0.0, 1.0)
    w = w.reshape((-1,) + (1,) * (frames.ndim - 1)).astype(np.float32)
    blend = (1 - w) * frames[left].astype(np.float32) + w * frames[right].astype(np.float32)
    if np.issubdtype(frames.dtype, np.integer):
      info = np.iinfo(frames.dtype)
      blend = np.clip(np.rint(blend), info.min, info.max)
    return blend.astype(frames.dtype), new_t
  raise ValueError(f"method must be 'nearest' or 'linear', got {method!r}")


def resample_signal(t_src: np.ndarray, x_src: np.ndarray, t_dst: np.ndarray, *,
                    source: str = "", max_extrapolation_s: float | None = None,
                    max_gap_s: float | None = 2.0) -> np.ndarray:
  """Linearly interpolates a ground-truth signal onto frame times.

  Args:
    t_src: f[S] sample times (seconds, same origin as t_dst), strictly increasing.
    x_src: f[S] values.
    t_dst: f[T] frame times.
    source: the file the signal came from, for error messages.
    max_extrapolation_s: how far frame times may lie outside [t_src[0], t_src[-1]] (there the
      edge value is held); None: 1.5 median sample intervals.
    max_gap_s: the largest allowed interval between samples (a dropout); None: no check.

  Returns:
    f32[T].

  Raises:
    DataError (naming `source`): shapes that do not match, fewer than 2 samples, non-finite
      values, times not increasing, a dropout longer than `max_gap_s`, or frames outside the
      signal's time span.
  """
  name = source or "signal"
  t_src = np.asarray(t_src, np.float64)
  x_src = np.asarray(x_src, np.float64)
  t_dst = np.asarray(t_dst, np.float64)
  if t_src.ndim != 1 or t_src.shape != x_src.shape:
    raise DataError(f"{name}: times {t_src.shape} and values {x_src.shape} do not match")
  if t_src.shape[0] < 2:
    raise DataError(f"{name}: {t_src.shape[0]} ground-truth samples, need at least 2")
  bad = ~np.isfinite(x_src) | ~np.isfinite(t_src)
  if bad.any():
    raise DataError(f"{name}: {int(bad.sum())} non-finite ground-truth values (first at "
                    f"sample {int(np.argmax(bad))})")
  dt = np.diff(t_src)
  if not np.all(dt > 0):
    raise DataError(f"{name}: ground-truth times are not strictly increasing (at sample "
                    f"{int(np.argmax(dt <= 0)) + 1})")
  if max_gap_s is not None and dt.max() > max_gap_s:
    i = int(np.argmax(dt))
    raise DataError(f"{name}: ground truth has a {dt[i]:.3g} s gap at t = {t_src[i]:.3f} s "
                    f"(more than {max_gap_s:g} s)")
  if t_dst.size:
    tol = 1.5 * float(np.median(dt)) if max_extrapolation_s is None else max_extrapolation_s
    if t_dst.min() < t_src[0] - tol or t_dst.max() > t_src[-1] + tol:
      raise DataError(
          f"{name}: ground truth covers {t_src[0]:.3f}..{t_src[-1]:.3f} s but the frames span "
          f"{t_dst.min():.3f}..{t_dst.max():.3f} s")
  return np.interp(t_dst, t_src, x_src).astype(np.float32)


def window_starts(num_frames: int, window: int, stride: int) -> np.ndarray:
  """Start frames of all full windows: 0, stride, 2 stride, ... while start + window <= T.

  Returns:
    i64[W]; empty when the video is shorter than one window.
  """
  if window < 1 or stride < 1:
    raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
  return np.arange(0, max(int(num_frames) - window + 1, 0), stride, dtype=np.int64)


def normalize_clip(frames, masks, mode: str = "sound") -> jax.Array:
  """Normalises windows of face crops.

  "reference": the original's effective normalisation, exactly: per window and channel
  subtract `sum(frames) / sum(mask)` (numerator over all pixels of the window, denominator the
  number of skin pixels), nothing else (its masking and band-pass detrending are computed on
  a copy and discarded). Values stay in the frames' scale (0..255 for uint8).

  "sound" (what the paper intended, in a form that is well defined on 60 frames):
    1. relative colour: divide by the window's masked mean per channel and subtract 1, so
       illumination level and skin tone, which scale the pulse multiplicatively, cancel;
    2. trend removal: fit a straight line over time to the per-frame masked mean of each
       channel and subtract it from every pixel of that frame (the original subtracted the
       non-pulse part of the same trace, via a 1-8 Hz band-pass that is ill-conditioned on
       60 samples; a linear trend is the part of a 2 s drift that a pulse >= 40 bpm does not
       explain);
    3. zero the non-skin pixels.
  The result is dimensionless, ~1e-3 for the pulse and ~1e-1 for the facial structure.

  "pixel" (the input the sound recipe trains on): every pixel's own relative change over the
  window, so that what is constant in time (facial structure, skin tone, shading, the level
  of the light) cancels and the pulse (~1e-3) is no longer 100x below the structure:
    1. x / (the pixel's mean over the window) - 1, per channel;
    2. a straight line over time fitted per pixel is subtracted (slow drift);
    3. values beyond +-PIXEL_CLIP (edges that move, specular flashes) are clipped;
    4. non-skin pixels are zeroed and the window is divided by the standard deviation of its
       skin values (one number for all channels, so their relative pulse strengths stay).
  The result is O(1).

  A window whose mask is empty is treated as all skin (instead of dividing by zero).
  jax.numpy, float32 throughout (sums of uint8 frames are exact int32 sums): jit it as
  `input_pipeline.normalize` does, on the host or on the device the step runs on.

  Args:
    frames: uint8 or float [..., T, H, W, 3].
    masks: [..., T, H, W] with skin > 0.
    mode: "sound", "pixel" or "reference".

  Returns:
    f32[..., T, H, W, 3].
  """
  frames, masks = jnp.asarray(frames), jnp.asarray(masks)
  if frames.shape[-1] != 3 or frames.shape[:-1] != masks.shape or frames.ndim < 4:
    raise ValueError(f"frames {frames.shape} and masks {masks.shape} must be "
                     "[..., T, H, W, 3] and [..., T, H, W]")
  if mode not in NORMALIZATIONS:
    raise ValueError(f"mode must be one of {NORMALIZATIONS}, got {mode!r}")
  f32 = jnp.float32
  acc = jnp.int32 if jnp.issubdtype(frames.dtype, jnp.integer) else f32   # exact for uint8
  t = frames.shape[-4]
  x = frames.astype(f32)
  m = masks > 0
  empty = ~m.any(axis=(-3, -2, -1))            # an empty window: every pixel counts as skin
  m = m | empty[..., None, None, None]
  frame_count = m.sum(axis=(-2, -1), dtype=jnp.int32)                          # [..., T]
  count = frame_count.sum(axis=-1).astype(f32)[..., None]                      # [..., 1]
  if mode == "reference":
    mean = frames.astype(acc).sum(axis=(-4, -3, -2)).astype(f32) / count      # [..., 3]
    return x - mean[..., None, None, None, :]
  if mode == "pixel":
    # Dark pixels (mean < 1 grey level) carry no usable relative change: held at 1.
    rel = x / jnp.maximum(x.mean(axis=-4, keepdims=True), 1.0) - 1
    # Its mean over time is already 0: only the slope is left to remove.
    tc = (jnp.arange(t, dtype=f32) - (t - 1) / 2).reshape(t, 1, 1, 1)
    rel = rel - (rel * tc).sum(axis=-4, keepdims=True) / (tc ** 2).sum() * tc
    rel = jnp.clip(rel, -PIXEL_CLIP, PIXEL_CLIP) * m[..., None]
    skin = jnp.maximum(m.sum(axis=(-3, -2, -1), dtype=jnp.int32), 1).astype(f32) * 3
    std = jnp.sqrt((rel ** 2).sum(axis=(-4, -3, -2, -1)) / skin)
    return rel / jnp.maximum(std, 1e-6)[..., None, None, None, None]
  # "sound": relative colour, minus the per-frame skin mean's straight line, skin only.
  frame_sum = (frames.astype(acc) * m[..., None]).sum(axis=(-3, -2)).astype(f32)  # [..., T, 3]
  mean = jnp.maximum(frame_sum.sum(axis=-2) / count, 1e-6)                    # [..., 3]
  has_skin = (frame_count > 0).astype(f32)                                     # [..., T]
  per_frame = frame_sum / jnp.maximum(frame_count, 1)[..., None] / mean[..., None, :] - 1
  tt = jnp.arange(t, dtype=f32)
  wsum = has_skin.sum(axis=-1, keepdims=True)
  tbar = (has_skin * tt).sum(axis=-1, keepdims=True) / wsum                    # [..., 1]
  tc = (tt - tbar) * has_skin                                                  # [..., T]
  level = (per_frame * has_skin[..., None]).sum(axis=-2) / wsum                # [..., 3]
  slope = (per_frame * tc[..., None]).sum(axis=-2) / jnp.maximum(
      (tc ** 2).sum(axis=-1, keepdims=True), 1e-12)                            # [..., 3]
  trend = level[..., None, :] + slope[..., None, :] * (tt - tbar)[..., None]   # [..., T, 3]
  out = x * (1 / mean)[..., None, None, None, :] - (1 + trend)[..., :, None, None, :]
  return out * m[..., None]


def quantize_ppg(ppg: np.ndarray, levels: int = NUM_LEVELS) -> tuple[np.ndarray, np.ndarray]:
  """Quantises each window of PPG to `levels` ordinal levels, as the original did.

  `round((g - min g) / ((max g - min g) / (levels - 1)))` over the last axis (rounding half to
  even, as torch). A window that is flat (max - min not above 1e-6 of its magnitude) or has a
  non-finite value has no defined target: it gets valid = False and all-zero levels, with no
  division or NaN warning.

  Args:
    ppg: f[..., T].
    levels: number of levels (40).

  Returns:
    (i32[..., T] levels in 0..levels-1, bool[...] valid).
  """
  if levels < 2:
    raise ValueError(f"levels must be >= 2, got {levels}")
  g = np.asarray(ppg, np.float64)
  finite = np.isfinite(g).all(axis=-1)
  g_safe = np.where(np.isfinite(g), g, 0.0)
  lo = g_safe.min(axis=-1, keepdims=True)
  hi = g_safe.max(axis=-1, keepdims=True)
  span = (hi - lo)[..., 0]
  scale = np.maximum(np.abs(hi), np.abs(lo))[..., 0]
  valid = finite & (span > 1e-6 * scale) & (span > 0)
  interval = np.where(valid, span, 1.0)[..., None] / (levels - 1)
  q = np.rint((g_safe - lo) / interval)
  q = np.where(valid[..., None], np.clip(q, 0, levels - 1), 0).astype(np.int32)
  return q, valid


def masked_rgb_means(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
  """Mean RGB over skin pixels per frame: the trace classical rPPG methods consume.

  A frame with no skin pixel gets the mean over all its pixels.

  Args:
    frames: uint8 or float [..., T, H, W, 3].
    masks: [..., T, H, W] with skin > 0.

  Returns:
    f32[..., T, 3].
  """
  x = np.asarray(frames)
  m = (np.asarray(masks) > 0).astype(np.float32)
  if x.shape[-1] != 3 or x.shape[:-1] != m.shape:
    raise ValueError(f"frames {x.shape} and masks {m.shape} must be [..., T, H, W, 3] and "
                     "[..., T, H, W]")
  count = m.sum(axis=(-2, -1))
  m = np.where((count == 0)[..., None, None], np.float32(1), m)
  *lead, h, w = m.shape
  # One batched mat-vec a frame: [..., 1, HW] @ [..., HW, 3].
  sums = np.matmul(m.reshape(*lead, 1, h * w),
                   x.astype(np.float32, copy=False).reshape(*lead, h * w, 3))[..., 0, :]
  return (sums / m.sum(axis=(-2, -1))[..., None]).astype(np.float32)
