"""stream: readings from a written synthetic video, dropped-frame accounting, the summary, the
annotated MP4, every method (meta_rppg from a tiny checkpoint), bad inputs and Ctrl-C."""

import dataclasses
import functools
import http.server
import importlib.util
import json
import pathlib
import signal
import subprocess
import sys
import threading
import time

import av
import numpy as np
import pytest

from metarppg_jax import baselines
from metarppg_jax import stream
from metarppg_jax.data import live_source
from metarppg_jax.data import preprocess
from metarppg_jax.data import synthetic
from metarppg_jax.data import video as video_lib
from metarppg_jax.errors import CheckpointError, ConfigError, DataError

REPO = pathlib.Path(__file__).resolve().parents[1]
FAST = stream.Options(method="pos", window_s=5.0, hrv_window_s=8.0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
  """A 12 s clean synthetic face video (lossless) and its ground truth."""
  path = tmp_path_factory.mktemp("stream") / "face.avi"
  v = synthetic.generate_video(3, seconds=12.0, fps=30.0, domain="clean", size=(128, 128))
  video_lib.write_video(path, v.frames, v.fps)
  return path, v


def _run(source, opts, **kwargs):
  lines = []
  summary = stream.run(str(source) if not isinstance(source, live_source.Source) else source,
                       opts, emit=lines.append, **kwargs)
  return [json.loads(x) for x in lines], summary


def test_readings_summary_and_annotated_video(tmp_path, clip):
  path, v = clip
  out, mp4 = tmp_path / "hr.jsonl", tmp_path / "annotated.mp4"
  lines, summary = _run(path, FAST, out_file=str(out), video_out=str(mp4))
  readings = lines[:-1]
  assert lines[-1]["type"] == "summary" and all(r["type"] == "reading" for r in readings)
  assert [json.loads(x) for x in out.read_text().splitlines()] == lines
  # One reading a second of video; null with a reason while the first window fills.
  assert [r["t"] for r in readings] == [float(k) for k in range(1, 12)]
  assert all(r["hr"] is None and r["reason"].startswith("warming up") for r in readings[:4])
  with_hr = [r for r in readings if r["hr"] is not None]
  assert len(with_hr) >= 6
  for r in with_hr:
    k = int(round(r["t"] * 30))
    truth = float(np.mean(v.hr[k - 150:k]))
    assert abs(r["hr"] - truth) < 3.0, (r, truth)
    assert FAST.min_quality <= r["quality"] <= 1.0 and r["latency_s"] >= 0 and r["adapted"] is None
  hrv_readings = [r["hrv"] for r in with_hr if r["hrv"] is not None]
  assert hrv_readings, "no HRV on a clean video"
  for h in hrv_readings:
    assert h["sdnn_ms"] > 0 and h["rmssd_ms"] > 0 and 0 <= h["pnn50_pct"] <= 100
  assert summary["frames_read"] == summary["frames_processed"] == 360
  assert summary["frames_dropped"] == 0 and summary["end"] == "end of stream"
  assert summary["readings"] == 11 and summary["readings_with_hr"] == len(with_hr)
  assert summary["processing_fps"] > 0 and summary["median_latency_s"] >= 0
  with av.open(str(mp4)) as container:
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  assert len(frames) == 360 and frames[0].shape == (128, 128, 3)
  # The overlay is drawn in: the annotated frames differ from the source's.
  assert np.abs(frames[-1].astype(int) - v.frames[-1].astype(int)).mean() > 1.0


def test_seconds_stops_early(clip):
  lines, summary = _run(clip[0], dataclasses.replace(FAST, seconds=3.0))
  assert summary["end"] == "duration reached" and summary["frames_read"] == 90
  assert [r["t"] for r in lines[:-1]] == [1.0, 2.0]   # 3 s is the first frame not read


@pytest.mark.parametrize("method", sorted(baselines.METHODS))
def test_every_classical_method_runs(clip, method):
  lines, summary = _run(clip[0], dataclasses.replace(FAST, method=method, seconds=7.0))
  assert summary["end"] == "duration reached" and summary["method"] == method
  readings = lines[:-1]
  assert len(readings) == 6
  for r in readings:
    assert (r["hr"] is None) == (r["reason"] is not None)
    assert r["hr"] is None or 42 <= r["hr"] <= 210


def test_slow_consumer_drops_frames_and_counts_them(clip):
  opts = dataclasses.replace(FAST, realtime=True, seconds=3.0, queue_s=0.2)
  _, summary = _run(clip[0], opts, slow_s=0.06)        # ~15 frames/s against 30 delivered
  assert summary["frames_read"] == 90
  assert summary["frames_dropped"] > 10
  assert summary["frames_processed"] + summary["frames_dropped"] == summary["frames_read"]


def test_unpaced_file_never_drops(clip):
  _, summary = _run(clip[0], dataclasses.replace(FAST, seconds=3.0, queue_s=0.2), slow_s=0.01)
  assert summary["frames_dropped"] == 0 and summary["frames_processed"] == 90


def test_face_leaving_the_frame_gives_null_readings(tmp_path, clip):
  _, v = clip
  frames = v.frames[:240].copy()
  frames[150:] = np.median(v.frames[0, :8], axis=(0, 1)).astype(np.uint8)   # empty scene
  path = tmp_path / "leaves.avi"
  video_lib.write_video(path, frames, 30.0)
  lines, summary = _run(path, FAST)
  readings = {r["t"]: r for r in lines[:-1]}
  assert readings[5.0]["hr"] is not None
  for t in (6.0, 7.0):
    assert readings[t]["hr"] is None and "face" in readings[t]["reason"]
  assert summary["end"] == "end of stream"


def test_stalled_stream_ends_with_the_reason(clip):
  frames = video_lib.read_video(clip[0], max_frames=60).frames
  state = {"i": 0}
  released = threading.Event()

  def read():
    if state["i"] < len(frames):
      state["i"] += 1
      return frames[state["i"] - 1], (state["i"] - 1) / 30.0
    released.wait(30)            # a network stream that stops sending
    return None

  src = live_source.Source("rtsp://test/stall", "url", 30.0, 128, 128, read, released.set)
  lines, summary = _run(src, dataclasses.replace(FAST, stall_s=4.0))
  released.set()
  assert summary["status"] == 1 and "stalled" in summary["end"]
  assert any(r.get("reason", "") and "no frame" in r["reason"] for r in lines[:-1])


def test_grid_picks_the_nearest_frame_as_resample_video():
  t = np.array([0.0, 0.03, 0.07, 0.2, 0.23, 0.31])          # irregular, with a gap
  grid = stream.Grid(30.0)
  got = [x for i, ti in enumerate(t) for x in grid.push(ti, i)] + grid.flush()
  np.testing.assert_array_equal(got, preprocess.resample_video(np.arange(len(t)), t, 30.0)[0])


# ------------------------------------------------------------------------------------------
# Bad inputs.
# ------------------------------------------------------------------------------------------

def test_network_stream_over_http(clip):
  """A URL source (PyAV/FFmpeg over HTTP) from a server on the loopback address."""
  directory, name = clip[0].parent, clip[0].name
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    url = f"http://127.0.0.1:{server.server_address[1]}/{name}"
    # A network source never waits for the consumer: a queue for the whole clip keeps all.
    lines, summary = _run(url, dataclasses.replace(FAST, seconds=7.0, queue_s=12.0))
  finally:
    server.shutdown()
  assert summary["end"] == "duration reached" and summary["frames_read"] == 210
  assert summary["frames_dropped"] == 0
  assert any(r["hr"] is not None for r in lines[:-1])


def test_missing_empty_and_unreadable_files(tmp_path):
  with pytest.raises(DataError, match="file not found"):
    live_source.open_source(str(tmp_path / "nope.mp4"))
  (tmp_path / "empty.mp4").write_bytes(b"")
  with pytest.raises(DataError, match="empty"):
    live_source.open_source(str(tmp_path / "empty.mp4"))
  (tmp_path / "text.avi").write_text("not a video")
  with pytest.raises(DataError, match="not a readable video"):
    live_source.open_source(str(tmp_path / "text.avi"))


def test_camera_that_cannot_be_opened():
  with pytest.raises(DataError, match="camera 97: cannot be opened"):
    live_source.open_source("97")


def test_url_that_does_not_answer_exits_with_a_message():
  start = time.monotonic()
  proc = subprocess.run(
      [sys.executable, "-m", "metarppg_jax.stream", "rtsp://127.0.0.1:1/x", "--method", "pos",
       "--timeout_s", "2"], capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode == 1
  assert "error: rtsp://127.0.0.1:1/x: stream does not answer" in proc.stderr
  assert "Traceback" not in proc.stderr and proc.stdout == ""
  assert time.monotonic() - start < 100


def test_bad_options():
  with pytest.raises(ConfigError, match="--method 'nope'"):
    stream.Classical("nope", 30.0)
  for bad, match in (({"window_s": 0.0}, "--window_s"), ({"detect_every": 0}, "--detect_every"),
                     ({"min_quality": 1.5}, "--min_quality"), ({"seconds": -1.0}, "--seconds")):
    with pytest.raises(ConfigError, match=match):
      stream.run("x.mp4", dataclasses.replace(FAST, **bad), emit=lambda _: None)
  for where in ("out_file", "video_out"):
    with pytest.raises(ConfigError, match="its directory does not exist"):
      stream.run("x.mp4", FAST, emit=lambda _: None, **{where: "/nonexistent/dir/x"})


def test_meta_rppg_without_a_model():
  """No --workdir / --checkpoint: the packaged model, or a message naming the way out."""
  if importlib.util.find_spec("metarppg_jax.pretrained") is None:
    with pytest.raises(ConfigError, match="pass --workdir DIR"):
      stream.load_model(None, None, None)
    return
  from metarppg_jax import pretrained  # pylint: disable=g-import-not-at-top
  if not (pretrained.WEIGHTS_DIR / pretrained.MODEL_FILE).is_file():
    with pytest.raises(CheckpointError, match="--workdir.*or choose a classical --method"):
      stream.load_model(None, None, None)
    return
  config, state = stream.load_model(None, None, None)
  assert state.params


def test_sigint_ends_with_the_summary(clip):
  proc = subprocess.Popen(
      [sys.executable, "-m", "metarppg_jax.stream", str(clip[0]), "--method", "pos",
       "--realtime", "--window_s", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, cwd=REPO)
  try:
    first = proc.stdout.readline()            # the stream is running once a reading is out
    assert json.loads(first)["type"] == "reading"
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  lines = [json.loads(x) for x in rest.splitlines()]
  assert proc.returncode == 0, err
  assert "Traceback" not in err
  assert lines[-1]["type"] == "summary" and lines[-1]["end"] == "interrupted"
  assert 0 < lines[-1]["frames_processed"] < 360


# ------------------------------------------------------------------------------------------
# Meta-rPPG from a tiny checkpoint.
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tiny_workdir):
  return tiny_workdir


def test_meta_rppg_adapts_then_reads(clip, workdir):
  model = stream.load_model(str(workdir), None, None)
  opts = dataclasses.replace(FAST, method="meta_rppg", window_s=4.0, hrv_window_s=4.0,
                             min_quality=0.0)
  lines, summary = _run(clip[0], opts, model=model)
  readings = lines[:-1]
  assert readings[0]["hr"] is None and readings[0]["reason"].startswith("adapting")
  assert summary["adapted"] is True and summary["end"] == "end of stream"
  assert summary["dropped_after_adaptation"] == 0 and summary["compile_s"] > 0
  # fewshots = 1: adapted after the first 2 s window, 4 s of signal after 4 s (the
  # adaptation window is predicted too).
  late = [r for r in readings if r["t"] >= 6.0]
  assert late and all(r["adapted"] for r in late)
  assert all(r["hr"] is not None and 42 <= r["hr"] <= 210 for r in late)
  assert all(0.0 <= r["quality"] <= 1.0 for r in late)
