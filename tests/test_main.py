"""The entry point: the README's command end to end on the tiny setting, and config errors
before any work (exit 1, a message, no traceback)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(args, timeout, cwd=REPO):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "metarppg_jax.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_unknown_field_is_refused_before_work(tmp_path):
  out = _run(["--config", "configs/default.py", "--workdir", str(tmp_path / "w"),
              "--config.optim.lrate=0.1"], timeout=400)
  assert out.returncode == 1
  assert "ConfigError" in out.stderr and "lrate" in out.stderr
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "w" / "data").exists()


def test_bad_value_is_a_config_error(tmp_path):
  out = _run(["--config", "configs/default.py", "--workdir", str(tmp_path / "w"),
              "--config.optim.lr=-0.001"], timeout=400)
  assert out.returncode == 1
  assert "ConfigError" in out.stderr and "optim.lr=-0.001: must be > 0" in out.stderr
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "w" / "data").exists()


def test_training_a_classical_method_is_refused(tmp_path):
  out = _run(["--config", "configs/default.py", "--workdir", str(tmp_path / "w"),
              "--config.method=pos"], timeout=400)
  assert out.returncode == 1 and "nothing to train" in out.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One run of the README's command on the tiny setting: (tmp dir, workdir, its output)."""
  tmp_path = tmp_path_factory.mktemp("main")
  workdir = tmp_path / "run"
  out = _run(["--config", "configs/tiny.py", "--workdir", str(workdir),
              f"--config.data.data_dir={tmp_path / 'data'}"], timeout=900)
  return tmp_path, workdir, out


@pytest.mark.slow
def test_console_is_one_screen_ending_with_the_results(tiny_run):
  _, workdir, out = tiny_run
  assert out.returncode == 0, out.stderr[-3000:]
  # Progress bars (the dataset build's) redraw with carriage returns: not lines of the log.
  lines = [line for line in (out.stdout + out.stderr).splitlines()
           if "\r" not in line and not re.search(r"\d+%\|", line)]
  assert len(lines) <= 60, "\n".join(lines)
  assert max(len(line) for line in lines) <= 200
  # absl's INFO prefix (orbax, tfds, grain and ours): none without -v.
  assert not [line for line in lines if re.match(r"I\d{4} ", line)], "\n".join(lines)
  stdout = out.stdout.rstrip().splitlines()
  assert stdout[-1] == f"report: {workdir / 'report.md'}"
  assert stdout[-3].startswith("| ") and any(l.startswith("| method |") for l in stdout[-14:])
  assert any(l.startswith("checkpoint saved: step 4") for l in lines)
  assert any(l.startswith("dataset synthetic_rppg ready") for l in lines)


@pytest.mark.slow
def test_main_trains_and_evaluates_tiny(tiny_run):
  tmp_path, workdir, out = tiny_run
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert set(metrics) == {"meta_rppg", "no_adaptation", "pos", "chrom", "green", "ica", "lgi",
                          "pbv", "omit"}
  for method in metrics.values():
    assert {"mae", "rmse", "mape", "pearson", "snr", "num_windows"} <= set(method["test"])
  assert json.loads((workdir / "config.json").read_text())["data"]["builder_config"] == "tiny"
  assert "| method |" in (workdir / "report.md").read_text()
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert (workdir / "checkpoints" / "latest" / "4").is_dir()
  assert list((workdir / "checkpoints" / "best").iterdir())
  for name in ("signal_meta_rppg.png", "spectrum_pos.png", "bland_altman_ica_window.png",
               "bland_altman_meta_rppg_video.png", "training_curves.png"):
    assert (workdir / "plots" / name).is_file(), name

  # Evaluate mode on the same workdir: the best checkpoint, no retraining.
  out = _run(["--config", "configs/tiny.py", "--workdir", str(workdir),
              f"--config.data.data_dir={tmp_path / 'data'}", "--config.mode=evaluate",
              "--config.restore_from=best", "--config.method=no_adaptation"], timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert set(json.loads((workdir / "metrics.json").read_text())) == {"no_adaptation"}
