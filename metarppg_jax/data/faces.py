"""Face crops and skin masks: the one face-crop path of the project.

`face_crops` runs OpenCV's frontal-face Haar cascade every `detect_every` frames on a
downscaled grey frame, keeps the largest face, interpolates the boxes between detections (and
holds them before the first / after the last), smooths them over time, makes them square and
`enlarge` times larger, moves them inside the frame, then crops and resizes (INTER_AREA) every
frame to `size x size` and computes a skin mask.

The skin mask is the classic YCrCb box (Chai & Ngan 1999: 133 <= Cr <= 173, 77 <= Cb <= 127),
computed by one OpenCV colour conversion over all frames at once. It is inclusive across skin
tones and excludes hair, eyes, background and most clothing.

`crop_boxes` and `skin_mask` are the two halves without detection, for callers that know the
face box (the synthetic generator's fast path).
"""

from typing import NamedTuple

import cv2
import numpy as np

from metarppg_jax.errors import DataError

CASCADE = "haarcascade_frontalface_default.xml"
DETECT_MAX_SIDE = 320        # detection runs on frames downscaled to this longer side
CR_RANGE = (133, 173)
CB_RANGE = (77, 127)


class FaceCrops(NamedTuple):
  """Per-frame face crops of one video.

  crops: uint8[T, size, size, 3] RGB.
  masks: uint8[T, size, size], skin = 1, else 0.
  boxes: f32[T, 4] (x, y, w, h) in source pixels, after smoothing, enlarging and clipping.
  detected: bool[T], frames where the detector itself found a face (only detection frames
    can be True).
  """
  crops: np.ndarray
  masks: np.ndarray
  boxes: np.ndarray
  detected: np.ndarray


def _cascade() -> cv2.CascadeClassifier:
  cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
  if cascade.empty():
    raise DataError(f"OpenCV Haar cascade {cv2.data.haarcascades + CASCADE} could not be "
                    "loaded (opencv-python-headless>=4.9,<5 ships it)")
  return cascade


def detect_faces(frames: np.ndarray, indices: np.ndarray) -> np.ndarray:
  """The largest face in each of `frames[indices]`.

  Args:
    frames: uint8[T, H, W, 3] RGB.
    indices: i[K] frames to run the detector on.

  Returns:
    f32[K, 4] (x, y, w, h) in source pixels, NaN where no face was found.
  """
  cascade = _cascade()
  height, width = frames.shape[1:3]
  scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
  small = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
  min_side = max(int(0.1 * min(small)), 20)
  boxes = np.full((len(indices), 4), np.nan, np.float32)
  for k, i in enumerate(indices):
    gray = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
      gray = cv2.resize(gray, small, interpolation=cv2.INTER_AREA)
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                     minSize=(min_side, min_side))
    if not len(found):
      # Dim or low-contrast frames: retry on the equalised image (not first: equalising
      # also raises false positives on well-lit frames).
      found = cascade.detectMultiScale(cv2.equalizeHist(gray), scaleFactor=1.1,
                                       minNeighbors=5, minSize=(min_side, min_side))
    if len(found):
      found = np.asarray(found, np.float32)
      boxes[k] = found[np.argmax(found[:, 2] * found[:, 3])] / scale
  return boxes


def _moving_average(x: np.ndarray, length: int) -> np.ndarray:
  """Centred moving average over axis 0 with edge padding: f[T, C] -> f[T, C]."""
  if length <= 1 or x.shape[0] < 2:
    return x
  half = length // 2
  padded = np.pad(x, ((half, half), (0, 0)), mode="edge")
  c = np.cumsum(np.pad(padded, ((1, 0), (0, 0))), axis=0)
  return (c[2 * half + 1:] - c[:-2 * half - 1]) / (2 * half + 1)


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


def crop_boxes(frames: np.ndarray, boxes: np.ndarray, size: int = 64) -> np.ndarray:
  """Crops boxes (x, y, w, h) from frames and resizes them (INTER_AREA): uint8[T, size, size, 3]."""
  t, height, width = frames.shape[:3]
  b = np.rint(np.asarray(boxes, np.float64)).astype(np.int64)
  x0 = np.clip(b[:, 0], 0, width - 1)
  y0 = np.clip(b[:, 1], 0, height - 1)
  x1 = np.clip(b[:, 0] + np.maximum(b[:, 2], 1), x0 + 1, width)
  y1 = np.clip(b[:, 1] + np.maximum(b[:, 3], 1), y0 + 1, height)
  out = np.empty((t, size, size, 3), np.uint8)
  for i in range(t):
    out[i] = cv2.resize(frames[i, y0[i]:y1[i], x0[i]:x1[i]], (size, size),
                        interpolation=cv2.INTER_AREA)
  return out


def skin_mask(crops: np.ndarray, *, ellipse: tuple[float, float] | None = None) -> np.ndarray:
  """YCrCb skin mask of RGB images: uint8[..., H, W, 3] -> uint8[..., H, W] in {0, 1}.

  Args:
    crops: uint8[..., H, W, 3] RGB.
    ellipse: optional face prior, semi-axes (horizontal, vertical) as fractions of W and H of
      an ellipse centred in the image; pixels outside it are not skin. Skin-coloured hair,
      walls and necks at the crop's corners are dropped this way.
  """
  shape = crops.shape[:-1]
  flat = np.ascontiguousarray(crops.reshape(-1, shape[-1], 3))
  ycrcb = cv2.cvtColor(flat, cv2.COLOR_RGB2YCrCb).reshape(crops.shape)
  cr, cb = ycrcb[..., 1], ycrcb[..., 2]
  skin = ((cr >= CR_RANGE[0]) & (cr <= CR_RANGE[1]) & (cb >= CB_RANGE[0]) & (cb <= CB_RANGE[1]))
  if ellipse is not None:
    height, width = shape[-2:]
    y = (np.arange(height) + 0.5) / height - 0.5
    x = (np.arange(width) + 0.5) / width - 0.5
    inside = (x[None, :] / ellipse[0]) ** 2 + (y[:, None] / ellipse[1]) ** 2 <= 1.0
    skin &= inside
  return skin.astype(np.uint8)


def face_ellipse(enlarge: float) -> tuple[float, float]:
  """The face prior of a crop `enlarge` times the detected box: semi-axes as crop fractions."""
  return (min(0.55 / enlarge, 0.5), min(0.72 / enlarge, 0.5))


def face_crops(frames: np.ndarray, *, size: int = 64, detect_every: int = 10,
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
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise DataError(f"{name}: frames must be uint8[T, H, W, 3], got {frames.dtype} "
                    f"{frames.shape}")
  t, height, width = frames.shape[:3]
  if t == 0:
    raise DataError(f"{name}: no frames")
  keys = np.unique(np.append(np.arange(0, t, max(int(detect_every), 1)), t - 1))
  found = detect_faces(frames, keys)
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
  frame_idx = np.arange(t)
  centers = np.stack([np.interp(frame_idx, keys[ok], good[:, 0] + good[:, 2] / 2),
                      np.interp(frame_idx, keys[ok], good[:, 1] + good[:, 3] / 2)], axis=1)
  sides = np.interp(frame_idx, keys[ok], np.sqrt(good[:, 2] * good[:, 3]))
  track = _moving_average(np.concatenate([centers, sides[:, None]], axis=1), smooth)
  boxes = square_boxes(track[:, :2], enlarge * track[:, 2], height, width)
  crops = crop_boxes(frames, boxes, size)
  detected = np.zeros(t, bool)
  detected[keys[ok]] = True
  return FaceCrops(crops, skin_mask(crops, ellipse=face_ellipse(enlarge)), boxes, detected)
