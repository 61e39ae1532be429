"""Tests of metarppg_jax.data.video: decoding, timestamps, formats and every DataError case."""

import av
import cv2
import numpy as np
import pytest

from metarppg_jax.data import video
from metarppg_jax.errors import DataError


def _frames(t=12, h=32, w=48, seed=0):
  """Smooth colour content (lossy codecs keep it close) with a per-frame brightness step."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:h, :w]
  base = np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).astype(np.float64) + 30
  steps = rng.integers(0, 40, t)
  return np.clip(base[None] + steps[:, None, None, None], 0, 255).astype(np.uint8)


@pytest.mark.parametrize("codec,name", [("ffv1", "v.avi"), ("rawvideo", "v.avi"),
                                        ("ffv1", "v.mkv")])
def test_lossless_round_trip(tmp_path, codec, name):
  frames = _frames()
  video.write_video(tmp_path / name, frames, 30.0, codec=codec)
  v = video.read_video(tmp_path / name)
  np.testing.assert_array_equal(v.frames, frames)
  np.testing.assert_allclose(v.timestamps, np.arange(12) / 30.0, atol=1e-3)
  assert v.fps == pytest.approx(30.0)
  assert v.warnings == ()


def test_rgb_channel_order(tmp_path):
  frames = np.zeros((3, 16, 16, 3), np.uint8)
  frames[..., 0] = 200                                  # pure red
  video.write_video(tmp_path / "red.avi", frames, 25.0, codec="rawvideo")
  v = video.read_video(tmp_path / "red.avi")
  assert v.frames[..., 0].min() == 200 and v.frames[..., 1:].max() == 0
  assert v.fps == pytest.approx(25.0)


@pytest.mark.parametrize("codec,name,quality", [("mjpeg", "v.avi", 3), ("h264", "v.mp4", 18)])
def test_lossy_round_trip(tmp_path, codec, name, quality):
  frames = _frames(h=32, w=48)
  video.write_video(tmp_path / name, frames, 30.0, codec=codec, quality=quality)
  v = video.read_video(tmp_path / name)
  assert v.frames.shape == frames.shape and v.frames.dtype == np.uint8
  assert np.abs(v.frames.astype(float) - frames).mean() < 4.0


def test_grayscale_video_decodes_to_rgb(tmp_path):
  frames = _frames()
  video.write_video(tmp_path / "g.mkv", frames, 30.0, codec="ffv1", pix_fmt="gray")
  v = video.read_video(tmp_path / "g.mkv")
  assert v.frames.shape == frames.shape
  np.testing.assert_array_equal(v.frames[..., 0], v.frames[..., 1])
  np.testing.assert_array_equal(v.frames[..., 0], v.frames[..., 2])
  gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
  assert np.abs(v.frames[..., 0].astype(float) - gray).mean() < 3.0


def test_ten_bit_yuv_decodes_to_rgb(tmp_path):
  frames = _frames()
  video.write_video(tmp_path / "p10.mkv", frames, 30.0, codec="ffv1", pix_fmt="yuv420p10le")
  with av.open(str(tmp_path / "p10.mkv")) as c:
    assert c.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
  v = video.read_video(tmp_path / "p10.mkv")
  assert v.frames.shape == frames.shape and v.frames.dtype == np.uint8
  assert np.abs(v.frames.astype(float) - frames).mean() < 4.0


def test_variable_frame_rate_keeps_real_timestamps(tmp_path):
  rng = np.random.default_rng(1)
  t = np.concatenate([[0.0], np.cumsum(rng.uniform(0.02, 0.06, 19))])
  frames = _frames(t=20)
  video.write_video(tmp_path / "vfr.mkv", frames, 30.0, codec="ffv1", timestamps=t)
  v = video.read_video(tmp_path / "vfr.mkv")
  np.testing.assert_array_equal(v.frames, frames)
  np.testing.assert_allclose(v.timestamps, t, atol=1.5e-3)


def test_max_frames(tmp_path):
  frames = _frames(t=20)
  video.write_video(tmp_path / "v.avi", frames, 30.0)
  v = video.read_video(tmp_path / "v.avi", max_frames=7)
  np.testing.assert_array_equal(v.frames, frames[:7])
  assert v.timestamps.shape == (7,) and v.warnings == ()


def test_one_frame(tmp_path):
  frames = _frames(t=1)
  video.write_video(tmp_path / "one.avi", frames, 30.0)
  v = video.read_video(tmp_path / "one.avi")
  assert v.frames.shape == (1, 32, 48, 3)
  np.testing.assert_array_equal(v.timestamps, [0.0])
  assert v.fps == pytest.approx(30.0)


def test_truncated_stream_keeps_decoded_frames_and_says_so(tmp_path):
  frames = _frames(t=20)
  path = tmp_path / "vid.avi"
  video.write_video(path, frames, 30.0, codec="rawvideo")
  data = path.read_bytes()
  (tmp_path / "cut.avi").write_bytes(data[:len(data) // 2])
  v = video.read_video(tmp_path / "cut.avi")
  assert 0 < v.frames.shape[0] < 20
  np.testing.assert_array_equal(v.frames, frames[:v.frames.shape[0]])
  assert v.warnings and all("cut.avi" in w for w in v.warnings)
  assert any("20 frames" in w for w in v.warnings)


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match="nope.avi.*not found"):
    video.read_video(tmp_path / "nope.avi")


def test_empty_file(tmp_path):
  (tmp_path / "empty.avi").write_bytes(b"")
  with pytest.raises(DataError, match="empty.avi.*empty"):
    video.read_video(tmp_path / "empty.avi")


def test_text_file_named_avi(tmp_path):
  (tmp_path / "notes.avi").write_text("this is not a video\n" * 20)
  with pytest.raises(DataError, match="notes.avi.*not a readable video"):
    video.read_video(tmp_path / "notes.avi")


def test_directory(tmp_path):
  with pytest.raises(DataError, match="directory"):
    video.read_video(tmp_path)


def test_zero_frames(tmp_path):
  video.write_video(tmp_path / "r.avi", _frames(t=3), 30.0, codec="rawvideo")
  data = (tmp_path / "r.avi").read_bytes()
  (tmp_path / "zero.avi").write_bytes(data[:data.find(b"movi") + 4])   # header, no frame
  with pytest.raises(DataError, match="zero.avi.*no decodable frame"):
    video.read_video(tmp_path / "zero.avi")


def test_no_video_stream(tmp_path):
  path = tmp_path / "audio.mkv"
  with av.open(str(path), "w") as c:
    stream = c.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                       layout="mono")
    frame.sample_rate = 8000
    for packet in list(stream.encode(frame)) + list(stream.encode()):
      c.mux(packet)
  with pytest.raises(DataError, match="audio.mkv.*no video stream"):
    video.read_video(path)


def _write_pngs(directory, frames):
  paths = []
  for i, f in enumerate(frames):
    p = directory / f"Image{i:03d}.png"
    cv2.imwrite(str(p), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    paths.append(p)
  return paths


def test_image_sequence(tmp_path):
  frames = _frames(t=5)
  paths = _write_pngs(tmp_path, frames)
  t_ns = 1_000_000_000 + np.array([0, 33, 67, 100, 133]) * 1_000_000
  v = video.read_image_sequence(paths, t_ns / 1e9)
  np.testing.assert_array_equal(v.frames, frames)
  np.testing.assert_allclose(v.timestamps, [0, 0.033, 0.067, 0.1, 0.133], atol=1e-9)
  assert v.fps == pytest.approx(1 / 0.0335, rel=0.02)
  v = video.read_image_sequence(paths, fps=30.0)
  np.testing.assert_allclose(v.timestamps, np.arange(5) / 30.0)


def test_image_sequence_errors(tmp_path):
  frames = _frames(t=3)
  paths = _write_pngs(tmp_path, frames)
  with pytest.raises(DataError, match="no image"):
    video.read_image_sequence([], fps=30.0)
  with pytest.raises(DataError, match="needs fps"):
    video.read_image_sequence(paths)
  with pytest.raises(DataError, match="3 images but timestamps"):
    video.read_image_sequence(paths, np.arange(4.0))
  with pytest.raises(DataError, match="not strictly increasing"):
    video.read_image_sequence(paths, np.array([0.0, 0.1, 0.1]))
  (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
  with pytest.raises(DataError, match="broken.png.*not a readable image"):
    video.read_image_sequence(paths + [tmp_path / "broken.png"], fps=30.0)
  small = tmp_path / "small.png"
  cv2.imwrite(str(small), np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(DataError, match="small.png.*differs"):
    video.read_image_sequence(paths + [small], fps=30.0)
