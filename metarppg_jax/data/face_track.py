"""Causal face tracking for live streams: `faces.face_crops`' steps, one frame at a time.

`face_crops` sees the whole video (it interpolates between detections and smooths the box
track with centred windows); a stream has only the past. `FaceTracker.update(frame)` runs the
same Haar detection (`faces.detect_candidates`) every `detect_every` frames, keeps the
candidate consistent with the track (nearest to the median of the last `faces.TRACK_MEDIAN`
accepted boxes, within `faces.TRACK_TOLERANCE` of a side in position and scale; the largest
when there is no track yet), smooths the keyframe track with running medians over the past
(`faces.CENTER_MEDIAN` centres, `faces.SIDE_MEDIAN` sides) and every frame's box with an
exponential average (the causal counterpart of the centred moving average of `smooth`
frames), then crops with `faces.square_boxes` and `faces.crop_boxes`. The skin mask is left to
the caller (`faces.skin_mask` over a window of crops: its colour model is learnt from them).

A face not detected for `lost_after` detections in a row is lost: the frames say face=False
(their crop is taken from the last box) until a face is detected again, which starts a new
track wherever it is.
"""

import collections
from typing import NamedTuple

import numpy as np

from metarppg_jax.data import faces


class Tracked(NamedTuple):
  """One frame's result: crop uint8[size, size, 3] RGB (zeros before the first face); box
  f32[4] (x, y, w, h) in source pixels (NaN before the first face); face: the track holds a
  face at this frame; detected: the detector confirmed it on this frame."""
  crop: np.ndarray
  box: np.ndarray
  face: bool
  detected: bool


class FaceTracker:
  """Stateful causal tracker (module docstring); one per stream."""

  def __init__(self, *, size: int = faces.CROP_SIZE, detect_every: int = 10, enlarge: float = 1.6,
               smooth: int = 15, lost_after: int = 3):
    if size < 1 or detect_every < 1 or enlarge <= 0 or smooth < 1 or lost_after < 1:
      raise ValueError(f"bad FaceTracker arguments: size={size}, detect_every={detect_every}, "
                       f"enlarge={enlarge}, smooth={smooth}, lost_after={lost_after}")
    self.size, self.detect_every, self.enlarge = size, detect_every, enlarge
    self.alpha = 2.0 / (smooth + 1)          # EMA with the centre of mass of a `smooth` window
    self.lost_after = lost_after
    self._frame = 0
    self._keys: collections.deque = collections.deque(maxlen=faces.TRACK_MEDIAN)
    self._misses = 0
    self._state: np.ndarray | None = None    # smoothed (cx, cy, side) of the detected box
    self._target: np.ndarray | None = None   # running medians of the accepted detections

  def _accept(self, candidates: np.ndarray) -> np.ndarray | None:
    """The candidate (x, y, w, h) that continues the track, or None."""
    if not len(candidates):
      return None
    if not self._keys:
      return candidates[np.argmax(candidates[:, 2] * candidates[:, 3])]
    ref = np.median(np.asarray(self._keys), axis=0)                 # (cx, cy, side)
    centers = candidates[:, :2] + candidates[:, 2:] / 2
    offset = np.linalg.norm(centers - ref[:2], axis=1) / ref[2]
    scale = np.abs(np.log(np.sqrt(candidates[:, 2] * candidates[:, 3]) / ref[2]))
    pick = int(np.argmin(offset + scale))
    if offset[pick] <= faces.TRACK_TOLERANCE and scale[pick] <= np.log(
        1 + 2 * faces.TRACK_TOLERANCE):
      return candidates[pick]
    return None

  def update(self, frame: np.ndarray) -> Tracked:
    """Tracks the face in the next frame uint8[H, W, 3] RGB."""
    height, width = frame.shape[:2]
    detected = False
    if self._frame % self.detect_every == 0:
      candidates = faces.detect_candidates(frame[None], np.zeros(1, np.int64))[0]
      box = self._accept(candidates)
      if box is None:
        self._misses += 1
        if self._misses >= self.lost_after:   # lost: the next face found starts a new track
          self._keys.clear()
      else:
        self._misses = 0
        detected = True
        self._keys.append((box[0] + box[2] / 2, box[1] + box[3] / 2,
                           float(np.sqrt(box[2] * box[3]))))
        keys = np.asarray(self._keys)
        target = np.array([*np.median(keys[-faces.CENTER_MEDIAN:, :2], axis=0),
                           np.median(keys[-faces.SIDE_MEDIAN:, 2])])
        if self._state is None or len(self._keys) == 1:
          self._state = target
        self._target = target
    self._frame += 1
    if self._state is None:
      return Tracked(np.zeros((self.size, self.size, 3), np.uint8),
                     np.full(4, np.nan, np.float32), False, False)
    self._state = self._state + self.alpha * (self._target - self._state)
    box = faces.square_boxes(self._state[None, :2], self.enlarge * self._state[None, 2],
                             height, width)
    crop = faces.crop_boxes(frame[None], box, self.size)[0]
    return Tracked(crop, box[0], self._misses < self.lost_after, detected)
