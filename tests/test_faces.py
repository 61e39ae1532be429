"""Tests of metarppg_jax.data.faces: detection, tracking, crops, skin masks, errors."""

import cv2
import numpy as np
import pytest
from skimage import data as skimage_data

from metarppg_jax.data import faces
from metarppg_jax.errors import DataError

# The astronaut photo at 256 px: the face's Haar box is about (88, 33, 48, 48).
FACE_CENTER = (112.0, 57.0)


@pytest.fixture(scope="module")
def astronaut():
  return cv2.resize(skimage_data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)


def test_static_face(astronaut):
  frames = np.repeat(astronaut[None], 25, axis=0)
  fc = faces.face_crops(frames, size=32, detect_every=10, source="astro")
  assert fc.crops.shape == (25, 32, 32, 3) and fc.crops.dtype == np.uint8
  assert fc.masks.shape == (25, 32, 32) and set(np.unique(fc.masks)) <= {0, 1}
  assert fc.boxes.shape == (25, 4) and fc.boxes.dtype == np.float32
  np.testing.assert_array_equal(np.flatnonzero(fc.detected), [0, 10, 20, 24])
  centers = fc.boxes[:, :2] + fc.boxes[:, 2:] / 2
  np.testing.assert_allclose(centers, np.broadcast_to(FACE_CENTER, centers.shape), atol=6)
  assert np.all(fc.boxes[:, 2] == fc.boxes[:, 3])                 # square
  assert 0.25 < fc.masks.mean() < 0.7
  # Skin pixels are skin coloured (red > green > blue); the crop corners are not skin.
  skin = fc.crops[fc.masks > 0].astype(float).mean(0)
  assert skin[0] > skin[1] > skin[2]
  assert fc.masks[:, 0, 0].sum() == 0


def test_moving_face_is_tracked(astronaut):
  shifts = np.linspace(0, 40, 31)
  frames = np.stack([cv2.warpAffine(astronaut, np.float32([[1, 0, s], [0, 1, s / 2]]),
                                    (256, 256), borderMode=cv2.BORDER_REFLECT101)
                     for s in shifts])
  fc = faces.face_crops(frames, size=32, detect_every=5, smooth=5)
  centers = fc.boxes[:, :2] + fc.boxes[:, 2:] / 2
  expected = np.stack([FACE_CENTER[0] + shifts, FACE_CENTER[1] + shifts / 2], axis=1)
  assert np.abs(centers - expected).max() < 8


def test_short_loss_is_bridged(astronaut):
  frames = np.repeat(astronaut[None], 41, axis=0)
  frames[18:23] = 128                                  # face gone around keyframe 20
  fc = faces.face_crops(frames, size=32, detect_every=10, smooth=1)
  assert not fc.detected[20] and fc.detected[[0, 10, 30, 40]].all()
  np.testing.assert_allclose(fc.boxes[20], fc.boxes[10], atol=1e-4)


def test_no_face():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (12, 96, 96, 3), dtype=np.uint8)
  with pytest.raises(DataError, match="noise.avi: no face found"):
    faces.face_crops(frames, source="noise.avi")


def test_face_lost_mid_video(astronaut):
  frames = np.repeat(astronaut[None], 40, axis=0)
  frames[12:] = 90
  with pytest.raises(DataError, match="lost.avi: face lost mid-video"):
    faces.face_crops(frames, detect_every=10, source="lost.avi")


def test_grayscale_frames(astronaut):
  gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
  frames = np.repeat(np.repeat(gray[None, ..., None], 3, axis=-1), 5, axis=0)
  fc = faces.face_crops(frames, size=32)
  assert fc.detected[0] and fc.masks.any()


def test_bad_frames_raise():
  with pytest.raises(DataError, match="x.avi: frames must be uint8"):
    faces.face_crops(np.zeros((3, 32, 32, 3), np.float32), source="x.avi")
  with pytest.raises(DataError, match="x.avi: no frames"):
    faces.face_crops(np.zeros((0, 32, 32, 3), np.uint8), source="x.avi")


def test_skin_mask_fixed_and_adaptive():
  crops = np.zeros((2, 20, 20, 3), np.uint8)
  crops[:] = (40, 60, 200)                                         # blue background
  crops[:, 5:15, 5:15] = (200, 150, 120)                           # light skin
  fixed = faces.skin_mask(crops, adaptive=False)
  assert fixed[:, 7:13, 7:13].all() and not fixed[:, :3].any()
  dark = crops.copy()
  dark[:, 5:15, 5:15] = (60, 45, 40)                               # dark skin in dim light
  adaptive = faces.skin_mask(dark)
  assert adaptive[:, 7:13, 7:13].all() and not adaptive[:, :3].any()
  ellipse = faces.skin_mask(np.full((1, 20, 20, 3), (200, 150, 120), np.uint8),
                            ellipse=(0.3, 0.3))
  assert ellipse[0, 10, 10] == 1 and ellipse[0, 0, 0] == 0 and ellipse[0, 10, 1] == 0


def test_crop_boxes_sub_pixel():
  ramp = np.broadcast_to(np.arange(200, dtype=np.float64)[None, :, None], (100, 200, 3))
  frames = np.repeat(ramp[None].astype(np.uint8), 2, axis=0)
  boxes = np.array([[40.0, 10.0, 50.0, 50.0], [40.5, 10.0, 50.0, 50.0]], np.float32)
  crops = faces.crop_boxes(frames, boxes, size=10).astype(float)
  # Each crop column averages the ramp over its 5 source pixels: x0 + 2 + 5 j (+ 0.5).
  np.testing.assert_allclose(crops[0, 5, 1:-1, 0], 40 + 2 + 5 * np.arange(1, 9), atol=0.6)
  assert 0.3 < (crops[1] - crops[0])[:, 1:-1].mean() < 0.7


def test_square_boxes_stay_inside():
  boxes = faces.square_boxes(np.array([[5.0, 5.0], [95.0, 50.0]]), np.array([40.0, 200.0]),
                             60, 100)
  np.testing.assert_allclose(boxes, [[0, 0, 40, 40], [40, 0, 60, 60]])


def test_false_positives_are_dropped():
  face = np.array([[40.0, 40.0, 50.0, 50.0]], np.float32)
  big = np.array([[10.0, 0.0, 90.0, 90.0]], np.float32)        # larger, elsewhere
  candidates = [face + k for k in range(8)]
  candidates[3] = np.concatenate([big, face + 3])               # both: keep the face
  candidates[5] = big                                           # only the false one: a miss
  boxes = faces._consistent(candidates)  # pylint: disable=protected-access
  np.testing.assert_allclose(boxes[3], face[0] + 3)
  assert np.isnan(boxes[5]).all()
  np.testing.assert_allclose(boxes[[0, 1, 2, 4, 6, 7]], face + np.array([[0], [1], [2], [4],
                                                                         [6], [7]]))


def test_the_recurring_detection_wins_over_a_larger_one():
  face = np.array([40.0, 40.0, 50.0, 50.0], np.float32)
  other = np.array([46.0, 58.0, 60.0, 60.0], np.float32)       # near, larger, intermittent
  candidates = [np.stack([face, other]) if k % 2 == 0 else face[None] for k in range(12)]
  boxes = faces._consistent(candidates)  # pylint: disable=protected-access
  np.testing.assert_allclose(boxes, np.broadcast_to(face, (12, 4)))
