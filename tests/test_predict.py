"""predict: heart rate from a video file written here (synthetic face, known pulse), and clear
errors (exit 1, no traceback) for unreadable files, no face, too-short videos."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from metarppg_jax import configuration
from metarppg_jax import predict
from metarppg_jax.data import synthetic
from metarppg_jax.data import video as video_lib
from metarppg_jax.errors import DataError

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
  """A workdir with only config.json: enough for every check made before the model loads."""
  path = tmp_path_factory.mktemp("config_only")
  configuration.write(configuration.from_file(REPO / "configs" / "tiny.py"), path)
  return path


@pytest.fixture(scope="module")
def workdir(tiny_workdir):
  return tiny_workdir


def _write(path, seconds, *, codec="h264", seed=1):
  v = synthetic.generate_video(seed, seconds=seconds, fps=30.0, domain="clean", size=(128, 128))
  video_lib.write_video(path, v.frames, v.fps, codec=codec)
  return v


@pytest.mark.slow
def test_predict_on_a_written_video(tmp_path, workdir):
  path = tmp_path / "face.mp4"
  _write(path, 6.0)
  result = predict.run(str(path), workdir=str(workdir), out=str(tmp_path / "out"))
  # 6 s = 3 windows of 2 s: one adapts, two are predicted (4 s of signal).
  assert result["signal"].shape == (120,)
  assert 42.0 <= result["hr_bpm"] <= 210.0
  assert result["windows"] and all(42.0 <= w["hr_bpm"] <= 210.0 for w in result["windows"])
  files = result["files"]
  rows = np.loadtxt(files["csv"], delimiter=",", skiprows=1)
  assert rows.shape == (120, 2)
  np.testing.assert_allclose(rows[0, 0], 2.0)  # after the 2 s support window
  summary = json.loads(pathlib.Path(files["json"]).read_text())
  assert summary["hr_bpm"] == pytest.approx(result["hr_bpm"])
  assert len(summary["signal"]["rppg"]) == 120
  assert pathlib.Path(files["plot"]).is_file() and pathlib.Path(files["spectrum"]).is_file()


def test_avi_and_mov_are_read(tmp_path, config_dir):
  config = configuration.read(config_dir)
  for name, codec in (("a.avi", "mjpeg"), ("b.mov", "h264")):
    _write(tmp_path / name, 4.0, codec=codec)
    clip = predict.load_clip(tmp_path / name, config)
    assert clip["x"].shape == (2, 60, 64, 64, 3)


def test_too_short_video(tmp_path, config_dir):
  path = tmp_path / "short.mp4"
  _write(path, 3.0)
  with pytest.raises(DataError, match=r"too short: 90 frames .* needs at least 120 frames"):
    predict.load_clip(path, configuration.read(config_dir))


def test_no_face(tmp_path, config_dir):
  path = tmp_path / "wall.avi"
  rng = np.random.default_rng(0)
  frames = np.full((150, 96, 96, 3), 128, np.uint8) + rng.integers(0, 3, (150, 96, 96, 3),
                                                                    dtype=np.uint8)
  video_lib.write_video(path, frames, 30.0, codec="mjpeg")
  with pytest.raises(DataError, match="no face"):
    predict.load_clip(path, configuration.read(config_dir))


def _cli(args, timeout=400):
  return subprocess.run([sys.executable, "-m", "metarppg_jax.predict", *args], cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=timeout)


def test_cli_errors_exit_1_without_traceback(tmp_path, config_dir):
  garbage = tmp_path / "broken.mp4"
  garbage.write_bytes(b"this is not a video" * 100)
  short = tmp_path / "short.mov"
  _write(short, 2.0)
  for path, message in ((garbage, "broken.mp4"), (short, "too short"),
                        (tmp_path / "missing.mp4", "file not found")):
    out = _cli([str(path), "--workdir", str(config_dir)])
    assert out.returncode == 1, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr


def test_cli_without_workdir_uses_the_packaged_model(tmp_path):
  """A clean install: no training run, no workdir; outputs under ./predictions/<video>/ and
  the last stdout line a JSON summary with the overall HR."""
  path = tmp_path / "face.mp4"
  truth = _write(path, 8.0)
  out = subprocess.run([sys.executable, "-m", "metarppg_jax.predict", str(path)], cwd=tmp_path,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                       text=True, timeout=400)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert 42.0 <= summary["hr_bpm"] <= 210.0
  assert summary["checkpoint"].startswith("pretrained")
  assert (tmp_path / "predictions" / "face" / "prediction.json").is_file()
  assert np.isfinite(truth.hr).all()


def test_config_without_checkpoint_is_refused(tmp_path):
  path = tmp_path / "face.mp4"
  _write(path, 4.0)
  out = _cli([str(path), "--config", str(REPO / "configs" / "tiny.py")])
  assert out.returncode == 1 and "--config needs --checkpoint" in out.stderr
  assert "Traceback" not in out.stderr
