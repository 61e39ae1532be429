"""Face crops and skin masks: the one face-crop path of the project.

`face_crops` runs OpenCV's frontal-face Haar cascade every `detect_every` frames on a
downscaled grey frame, keeps the face consistent with its neighbours in time (the detection
seen most often nearby, then a running median), interpolates the boxes between detections (and
holds them before the first / after the last), smooths them over time, makes them square and
`enlarge` times larger, moves them inside the frame, then crops and resizes (INTER_AREA) every
frame to `size x size` and computes a skin mask.

The skin mask (`skin_mask`) is a YCrCb colour model inside an elliptic face prior, computed by
one OpenCV colour conversion over all frames at once: by default adapted to the video (the
median colour of the face's centre, so dark skin in dim or tinted light is kept), or the
classic fixed box (Chai & Ngan 1999: 133 <= Cr <= 173, 77 <= Cb <= 127).

`crop_boxes` and `skin_mask` are the two halves without detection, for callers that know the
face box (the synthetic generator's fast path). `face_crops` is `key_frames` ->
`detect_candidates` -> `track_boxes` -> `crop_boxes` -> `skin_mask`; the dataset build runs the
same steps over a video decoded in passes (builders/base.py), with the skin colour from the
`skin_samples` of all its crops, so that it never holds the decoded video.
"""

import functools
import threading
from typing import NamedTuple

import cv2
import numpy as np
from scipy import ndimage

from metarppg_jax.errors import DataError

CROP_SIZE = 64  # side of the square face crops the models see

CASCADE = "haarcascade_frontalface_default.xml"
DETECT_MAX_SIDE = 320        # detection runs on frames downscaled to this longer side
CR_RANGE = (133, 173)
CB_RANGE = (77, 127)
ADAPTIVE_CHROMA = 10          # |Cr - Cr_face|, |Cb - Cb_face| of skin, in 8-bit units
ADAPTIVE_LUMA = (0.6, 1.5)    # skin luma relative to the face's median
CENTER_MEDIAN = 5             # running median over detections of the box centre
SIDE_MEDIAN = 9               # ... and of its side (faces rarely change size fast)
TRACK_MEDIAN = 9              # keyframes in the running median a detection must agree with
TRACK_TOLERANCE = 0.5         # how far (in box sides) a detection may lie from it


class FaceCrops(NamedTuple):
  """Per-frame face crops of one video.

  crops: uint8[T, size, size, 3] RGB.
  masks: uint8[T, size, size], skin = 1, else 0.
  boxes: f32[T, 4] (x, y, w, h) in source pixels, after smoothing, enlarging and clipping.
  detected: bool[T], frames where the detector itself found a face consistent with the
    track (only detection frames can be True; elsewhere the box is interpolated or held).
  """
  crops: np.ndarray
  masks: np.ndarray
  boxes: np.ndarray
  detected: np.ndarray


@functools.cache
def _per_thread() -> threading.local:
  """The holder of each thread's cascade, made once a process.

  A `CascadeClassifier` keeps the image it is scanning inside itself, so threads (the live
  stream's, a data builder's pool) each load their own instead of sharing one.
  """
  return threading.local()


def _cascade() -> "cv2.CascadeClassifier":
  """This thread's Haar cascade, loaded on its first use: loading it takes longer than a
  detection on a small frame, so it is not reloaded per call."""
  held = _per_thread()
  if getattr(held, "cascade", None) is None:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
    if cascade.empty():
      raise DataError(f"OpenCV Haar cascade {cv2.data.haarcascades + CASCADE} could not be "
                      "loaded (opencv-python-headless>=4.9,<5 ships it)")
    held.cascade = cascade
  return held.cascade


def detect_candidates(frames: np.ndarray, indices: np.ndarray) -> list[np.ndarray]:
  """Every face the Haar cascade finds in each of `frames[indices]`.

  Runs on the grey frame downscaled to `DETECT_MAX_SIDE`; where nothing is found, once more
  on its locally equalised (CLAHE) version, which recovers dim, low-contrast and dark-skinned
  faces (equalising every frame would raise false positives on well-lit ones).

  Returns:
    K arrays f32[n_k, 4] (x, y, w, h) in source pixels (n_k may be 0).
  """
  cascade = _cascade()
  height, width = frames.shape[1:3]
  scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
  small = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
  min_side = max(int(0.1 * min(small)), 20)
  clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
  out = []
  for i in indices:
    gray = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
      gray = cv2.resize(gray, small, interpolation=cv2.INTER_AREA)
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                     minSize=(min_side, min_side))
    if not len(found):
      found = cascade.detectMultiScale(clahe.apply(gray), scaleFactor=1.1, minNeighbors=5,
                                       minSize=(min_side, min_side))
    out.append(np.asarray(found, np.float32).reshape(-1, 4) / scale)
  return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over union of boxes f[N, 4] x f[M, 4] -> f[N, M]."""
  x0 = np.maximum(a[:, None, 0], b[None, :, 0])
  y0 = np.maximum(a[:, None, 1], b[None, :, 1])
  x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
  y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  union = (a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3]) - inter
  return inter / np.maximum(union, 1e-6)


def _supported(candidates: list[np.ndarray]) -> np.ndarray:
  """Per keyframe the candidate seen most often nearby in time: f32[K, 4], NaN where none.

  A candidate's support is the number of the `TRACK_MEDIAN` - 1 neighbouring keyframes with a
  detection overlapping it (IoU > 0.5); ties go to the larger box. A face is found again and
  again; a false positive or a box at the wrong scale comes and goes.
  """
  half = TRACK_MEDIAN // 2
  boxes = np.full((len(candidates), 4), np.nan, np.float32)
  for k, c in enumerate(candidates):
    if not len(c):
      continue
    if len(c) == 1:
      boxes[k] = c[0]
      continue
    support = np.zeros(len(c))
    for j in range(max(k - half, 0), min(k + half + 1, len(candidates))):
      if j != k and len(candidates[j]):
        support += _iou(c, candidates[j]).max(axis=1) > 0.5
    boxes[k] = c[np.lexsort((c[:, 2] * c[:, 3], support))[-1]]
  return boxes


def _consistent(candidates: list[np.ndarray]) -> np.ndarray:
  """One box a keyframe, consistent over time: f32[K, 4], NaN where none fits.

  The reference at each keyframe is the running median (over `TRACK_MEDIAN` keyframes) of
  the best-supported detections (`_supported`); each keyframe keeps its candidate nearest to
  it, if that one is within `TRACK_TOLERANCE` of a side in position and scale. Sporadic false
  positives (often larger than the face in noisy frames) are dropped and bridged like misses.
  """
  best = _supported(candidates)
  ok = ~np.isnan(best[:, 0])
  if not ok.any():
    return best
  track = np.stack([best[:, 0] + best[:, 2] / 2, best[:, 1] + best[:, 3] / 2, best[:, 2]],
                   axis=1)
  ref_ok = _running_median(track[ok], TRACK_MEDIAN)
  idx = np.arange(len(candidates))
  ref = np.stack([np.interp(idx, idx[ok], r) for r in ref_ok.T], axis=1)
  boxes = np.full_like(best, np.nan)
  for k, c in enumerate(candidates):
    if not len(c):
      continue
    centers = c[:, :2] + c[:, 2:] / 2
    offset = np.linalg.norm(centers - ref[k, :2], axis=1) / ref[k, 2]
    size = np.abs(np.log(c[:, 2] / ref[k, 2]))
    pick = np.argmin(offset + size)
    if offset[pick] <= TRACK_TOLERANCE and size[pick] <= np.log(1 + 2 * TRACK_TOLERANCE):
      boxes[k] = c[pick]
  return boxes


def _moving_average(x: np.ndarray, length: int) -> np.ndarray:
  """Centred moving average of 2 (length // 2) + 1 samples over axis 0, edges replicated:
  f[T, C] -> f[T, C]."""
  if length <= 1:
    return x
  return ndimage.uniform_filter1d(np.asarray(x, np.float64), 2 * (length // 2) + 1, axis=0,
                                  mode="nearest")


def _running_median(x: np.ndarray, length: int) -> np.ndarray:
  """Centred running median over axis 0, edges replicated, its window cut to fit an odd
  number of rows (a short track is not padded past itself): f[K, C] -> f[K, C]."""
  half = min(length // 2, (x.shape[0] - 1) // 2)
  if half < 1:
    return x
  return ndimage.median_filter(x, size=(2 * half + 1, 1), mode="nearest")


def square_boxes(centers: np.ndarray, sides: np.ndarray, height: int, width: int) -> np.ndarray:
  """Square boxes of side `sides` around `centers`, moved (not cut) to lie inside the frame.

  Args:
    centers: f[T, 2] (cx, cy); sides: f[T].

  Returns:
    f32[T, 4] (x, y, w, h); a box larger than the frame shrinks to the frame's smaller side.
  """
  side = np.minimum(sides, min(height, width))
  x = np.clip(centers[:, 0] - side / 2, 0, width - side)
  y = np.clip(centers[:, 1] - side / 2, 0, height - side)
  return np.stack([x, y, side, side], axis=1).astype(np.float32)


def crop_boxes(frames: np.ndarray, boxes: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
  """Crops square boxes (x, y, w, h) from frames at sub-pixel positions: uint8[T, size, size, 3].

  The whole-pixel region around each box is downscaled with INTER_AREA (no aliasing), then
  shifted and scaled by the fractional remainder with a bilinear warp. Cropping at rounded
  positions instead makes the crop jump by whole source pixels as the head moves, and those
  jumps show up in the skin colour trace at the rate of the motion.
  """
  t, height, width = frames.shape[:3]
  b = np.asarray(boxes, np.float64)
  side = np.clip(np.maximum(b[:, 2], b[:, 3]), 1.0, min(height, width))
  region = np.minimum(np.ceil(side).astype(np.int64) + 1, min(height, width))
  x0 = np.clip(np.floor(b[:, 0]).astype(np.int64), 0, width - region)
  y0 = np.clip(np.floor(b[:, 1]).astype(np.int64), 0, height - region)
  # Size the region is resized to: the box's scale, whole pixels, at least `size`.
  resized = np.maximum(np.ceil(region * size / side).astype(np.int64), size)
  out = np.empty((t, size, size, 3), np.uint8)
  for i in range(t):
    r, n = int(region[i]), int(resized[i])
    patch = cv2.resize(frames[i, y0[i]:y0[i] + r, x0[i]:x0[i] + r], (n, n),
                       interpolation=cv2.INTER_AREA)
    k = n / r                                   # resized pixels per source pixel
    step = side[i] / size * k                   # resized pixels per output pixel
    # Pixel centres at integer coordinates: output u <-> region (x - x0) + (u + 1/2) w/size
    # - 1/2 source pixels <-> resized (that + 1/2) k - 1/2.
    m = np.array([[step, 0, (b[i, 0] - x0[i]) * k + 0.5 * step - 0.5],
                  [0, step, (b[i, 1] - y0[i]) * k + 0.5 * step - 0.5]])
    out[i] = cv2.warpAffine(patch, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
  return out


def _box_blur3(x: np.ndarray) -> np.ndarray:
  """3x3 mean over the two axes before the last, edges replicated: f[..., H, W, C]."""
  return ndimage.uniform_filter(x, size=(1,) * (x.ndim - 3) + (3, 3, 1), mode="nearest")


def _ellipse(height: int, width: int, semi_axes: tuple[float, float]) -> np.ndarray:
  """bool[H, W]: inside the centred ellipse with semi-axes as fractions of (W, H)."""
  y = (np.arange(height) + 0.5) / height - 0.5
  x = (np.arange(width) + 0.5) / width - 0.5
  return (x[None, :] / semi_axes[0]) ** 2 + (y[:, None] / semi_axes[1]) ** 2 <= 1.0


def _ycrcb(crops: np.ndarray) -> np.ndarray:
  """3x3-averaged YCrCb of crops: uint8[T, H, W, 3] RGB -> int16[T, H, W, 3]."""
  width = crops.shape[2]
  smooth = _box_blur3(crops.astype(np.float32)).astype(np.uint8)
  flat = np.ascontiguousarray(smooth.reshape(-1, width, 3))
  return cv2.cvtColor(flat, cv2.COLOR_RGB2YCrCb).reshape(crops.shape).astype(np.int16)


def _centre(height: int, width: int, ellipse: tuple[float, float] | None) -> np.ndarray:
  """bool[H, W]: the central face region the adaptive skin colour is learnt from."""
  return _ellipse(height, width,
                  (ellipse[0] / 2, ellipse[1] / 2) if ellipse else (0.25, 0.25))


def skin_samples(crops: np.ndarray, *,
                 ellipse: tuple[float, float] | None = None) -> np.ndarray:
  """The (Y, Cr, Cb) of every crop's central face region: uint8[T, H, W, 3] -> int16[N, 3].

  Their median over a video is its skin colour (`skin_mask`); a caller cropping a video in
  chunks collects them chunk by chunk.
  """
  return _ycrcb(crops)[:, _centre(*crops.shape[1:3], ellipse)].reshape(-1, 3)


def skin_mask(crops: np.ndarray, *, ellipse: tuple[float, float] | None = None,
              adaptive: bool = True, colour: np.ndarray | None = None) -> np.ndarray:
  """Skin mask of face crops: uint8[T, H, W, 3] RGB -> uint8[T, H, W] in {0, 1}.

  Colours are 3x3-averaged first (sensor noise and JPEG blocks scatter single pixels).

  adaptive=True (default): the skin colour is learnt from the crops themselves, as the median
  (Y, Cr, Cb) over all frames of the central face region (half the face prior); skin is
  chroma within `ADAPTIVE_CHROMA` of it and luma within `ADAPTIVE_LUMA` times it. This
  follows skin tone, illumination level and colour temperature, where fixed thresholds lose
  dark skin in dim or tinted light.
  adaptive=False: the fixed YCrCb box of Chai & Ngan (CR_RANGE, CB_RANGE).

  Args:
    crops: uint8[T, H, W, 3] RGB (one video; adaptive statistics are taken over all of it).
    ellipse: face prior, semi-axes (horizontal, vertical) as fractions of W and H of an
      ellipse centred in the crop; pixels outside it are not skin (hair, walls, necks at the
      crop's corners). None: no prior (and the adaptive centre is the middle half).
    adaptive: see above.
    colour: f[3] the video's skin colour when the crops are a part of it (the median of its
      `skin_samples`); None: learnt from `crops`.
  """
  height, width = crops.shape[1:3]
  ycrcb = _ycrcb(crops)
  luma, cr, cb = ycrcb[..., 0], ycrcb[..., 1], ycrcb[..., 2]
  prior = _ellipse(height, width, ellipse) if ellipse is not None else None
  if adaptive:
    ref = colour if colour is not None else np.median(
        ycrcb[:, _centre(height, width, ellipse)].reshape(-1, 3), axis=0)
    skin = ((np.abs(cr - ref[1]) <= ADAPTIVE_CHROMA) & (np.abs(cb - ref[2]) <= ADAPTIVE_CHROMA)
            & (luma >= ADAPTIVE_LUMA[0] * ref[0]) & (luma <= ADAPTIVE_LUMA[1] * ref[0] + 8))
  else:
    skin = ((cr >= CR_RANGE[0]) & (cr <= CR_RANGE[1]) & (cb >= CB_RANGE[0])
            & (cb <= CB_RANGE[1]))
  if prior is not None:
    skin &= prior
  return skin.astype(np.uint8)


def face_ellipse(enlarge: float) -> tuple[float, float]:
  """The face prior of a crop `enlarge` times the detected box: semi-axes as crop fractions."""
  return (min(0.55 / enlarge, 0.5), min(0.72 / enlarge, 0.5))


def key_frames(num_frames: int, detect_every: int) -> np.ndarray:
  """The frames the detector runs on: 0, k, 2k, ... and the last: i64[K]."""
  return np.unique(np.append(np.arange(0, num_frames, int(detect_every)), num_frames - 1))


def track_boxes(candidates: list[np.ndarray], num_frames: int, height: int, width: int, *,
                detect_every: int = 10, enlarge: float = 1.6, smooth: int = 15,
                min_face_fraction: float = 0.5,
                source: str = "") -> tuple[np.ndarray, np.ndarray]:
  """Every frame's crop box from the detections on the key frames (`face_crops`' tracking).

  Args:
    candidates: K arrays f32[n_k, 4], `detect_candidates` on the frames
      `key_frames(num_frames, detect_every)`.
    num_frames, height, width: the video's length and frame size.
    detect_every, enlarge, smooth, min_face_fraction, source: as `face_crops`.

  Returns:
    (boxes f32[T, 4] (x, y, w, h), detected bool[T]).

  Raises:
    DataError (naming `source`): as `face_crops`.
  """
  name = source or "video"
  t = num_frames
  keys = key_frames(t, detect_every)
  found = _consistent(candidates)
  ok = ~np.isnan(found[:, 0])
  if not ok.any():
    raise DataError(f"{name}: no face found in any of the {len(keys)} frames checked "
                    f"(every {detect_every} of {t} frames)")
  fraction = ok.mean()
  if fraction < min_face_fraction:
    lost = keys[~ok]
    raise DataError(
        f"{name}: face lost mid-video: found in {ok.sum()} of {len(keys)} detection frames "
        f"({fraction:.0%} < {min_face_fraction:.0%}); not found around frames "
        f"{lost[0]}..{lost[-1]}")
  good = found[ok]
  # Keyframe track (cx, cy, side), robustly smoothed: Haar boxes come in scale steps of 10 %
  # and jitter by a few pixels, and each jump would change what the crop holds.
  key_track = np.stack([good[:, 0] + good[:, 2] / 2, good[:, 1] + good[:, 3] / 2,
                        np.sqrt(good[:, 2] * good[:, 3])], axis=1)
  key_track[:, :2] = _running_median(key_track[:, :2], CENTER_MEDIAN)
  key_track[:, 2:] = _running_median(key_track[:, 2:], SIDE_MEDIAN)
  frame_idx = np.arange(t)
  track = np.stack([np.interp(frame_idx, keys[ok], k) for k in key_track.T], axis=1)
  track = _moving_average(track, smooth)
  boxes = square_boxes(track[:, :2], enlarge * track[:, 2], height, width)
  detected = np.zeros(t, bool)
  detected[keys[ok]] = True
  return boxes, detected


def face_crops(frames: np.ndarray, *, size: int = CROP_SIZE, detect_every: int = 10,
               enlarge: float = 1.6, smooth: int = 15, min_face_fraction: float = 0.5,
               source: str = "") -> FaceCrops:
  """Detects, tracks and crops the face in every frame.

  Args:
    frames: uint8[T, H, W, 3] RGB.
    size: crop side in pixels.
    detect_every: run the detector on frames 0, k, 2k, ... and the last frame.
    enlarge: the square crop's side over the detected box's side (1.6 keeps forehead, cheeks
      and chin, as rPPG crops do).
    smooth: length in frames of the centred moving average over box centres and sides (1: no
      smoothing); Haar boxes jitter by a few pixels, which would leak into the colour trace.
    min_face_fraction: the least fraction of detection frames that must find a face.
    source: the video's name, for error messages.

  Returns:
    FaceCrops.

  Raises:
    DataError (naming `source`): no face in any detection frame, or the face lost in more
      than 1 - min_face_fraction of them (too long to bridge by interpolation).
  """
  frames = np.asarray(frames)
  name = source or "video"
  if size < 1 or detect_every < 1 or enlarge <= 0 or not 0 <= min_face_fraction <= 1:
    raise ValueError(f"bad face_crops arguments: size={size}, detect_every={detect_every}, "
                     f"enlarge={enlarge}, min_face_fraction={min_face_fraction}")
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise DataError(f"{name}: frames must be uint8[T, H, W, 3], got {frames.dtype} "
                    f"{frames.shape}")
  t, height, width = frames.shape[:3]
  if t == 0:
    raise DataError(f"{name}: no frames")
  keys = key_frames(t, detect_every)
  boxes, detected = track_boxes(detect_candidates(frames, keys), t, height, width,
                                detect_every=detect_every, enlarge=enlarge, smooth=smooth,
                                min_face_fraction=min_face_fraction, source=name)
  crops = crop_boxes(frames, boxes, size)
  return FaceCrops(crops, skin_mask(crops, ellipse=face_ellipse(enlarge)), boxes, detected)
