"""The build CLI and the library entry points train.py uses."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from metarppg_jax.data import build
from metarppg_jax.data import synthetic
from metarppg_jax.data.builders import base
from metarppg_jax.data.builders import synthetic_rppg
from metarppg_jax.errors import DataError

VERSION = str(base.RppgBuilder.VERSION)


def run_cli(*args, timeout=240):
  return subprocess.run([sys.executable, "-m", "metarppg_jax.data.build", *args],
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ubfc_manual(tmp_path_factory):
  root = tmp_path_factory.mktemp("manual")
  v = synthetic.generate_video(1, seconds=2.5, domain="source", size=(96, 96))
  synthetic.write_ubfc(root / "subject1", v)
  (root / "subject2").mkdir()
  (root / "subject2" / "vid.avi").write_bytes(b"not a video")
  (root / "subject2" / "ground_truth.txt").write_text("1 2 3\n70 70 70\n0 1 2\n")
  return root


def test_cli_builds_and_lists_skips(ubfc_manual, tmp_path):
  result = run_cli("--dataset", "ubfc_rppg", "--manual_dir", str(ubfc_manual),
                   "--data_dir", str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "1 video(s) skipped" in result.stdout
  assert "subject2: unreadable file" in result.stdout
  assert "ubfc_rppg: videos" in result.stderr   # progress bar
  # Readable without the builder class; one subject, whichever split it fell in.
  builder = tfds.builder_from_directory(str(tmp_path / "ubfc_rppg" / "default" / VERSION))
  (split, info), = builder.info.splits.items()
  assert info.num_examples == 1 and f"{{'{split}': 1}}" in result.stdout
  record = builder.as_data_source(split=split)[0]
  assert record["frames"].shape == (75, 64, 64, 3)
  with open(tmp_path / "ubfc_rppg" / "default" / VERSION / "skipped.json") as f:
    assert [s["video_id"] for s in json.load(f)] == ["subject2"]


def test_cli_fails_clearly_when_nothing_is_usable(tmp_path):
  manual = tmp_path / "m"
  (manual / "subject7").mkdir(parents=True)
  (manual / "subject7" / "vid.avi").write_bytes(b"")
  result = run_cli("--dataset", "ubfc_rppg", "--manual_dir", str(manual),
                   "--data_dir", str(tmp_path / "d"))
  assert result.returncode == 1
  assert "error: ubfc_rppg: no usable videos" in result.stderr
  assert "subject7: ground truth missing" in result.stderr
  assert "Traceback" not in result.stderr
  config_dir = tmp_path / "d" / "ubfc_rppg" / "default"
  assert not config_dir.exists() or not list(config_dir.iterdir())   # nothing half-written


def test_library_errors(tmp_path):
  with pytest.raises(DataError, match="unknown dataset 'ucf'"):
    build.build_dataset("ucf", data_dir=str(tmp_path))
  with pytest.raises(DataError, match="has no config 'huge'"):
    build.build_dataset("synthetic_rppg", data_dir=str(tmp_path), config="huge")
  with pytest.raises(DataError, match="nowhere: manual dir for pure does not exist"):
    build.build_dataset("pure", data_dir=str(tmp_path), manual_dir=str(tmp_path / "nowhere"))
  with pytest.raises(DataError, match="pass manual_dir"):
    build.build_dataset("pure", data_dir=str(tmp_path))
  with pytest.raises(DataError, match="not built .* run: python -m metarppg_jax.data.build"):
    build.load_dataset("mahnob_hci", str(tmp_path), "cvpr14")


@pytest.mark.slow
def test_load_dataset_builds_synthetic_on_first_use(tmp_path):
  sources = build.load_dataset("synthetic_rppg", str(tmp_path), "tiny")
  assert {k: len(v) for k, v in sources.items()} == {"train": 3, "validation": 1, "test": 2}
  record = sources["test"][0]
  assert record["frames"].shape == (210, 64, 64, 3) and record["domain"] == b"shifted"
  info = tmp_path / "synthetic_rppg" / "tiny" / str(synthetic_rppg.SyntheticRppg.VERSION) / (
      "dataset_info.json")
  stamp = os.path.getmtime(info)
  again = build.load_dataset("synthetic_rppg", str(tmp_path), "tiny")   # reused, not rebuilt
  assert os.path.getmtime(info) == stamp
  np.testing.assert_array_equal(again["test"][0]["ppg"], record["ppg"])
  # End to end: build -> eval windows -> LGI on the masked RGB means recovers the generator's
  # heart rate on the source-domain videos (the rgb trace is aligned with the hr labels).
  from metarppg_jax import baselines, heart_rate   # pylint: disable=g-import-not-at-top
  from metarppg_jax.data import input_pipeline     # pylint: disable=g-import-not-at-top
  for split in ("train", "validation"):
    for v in input_pipeline.eval_videos(again[split], window=60):
      signal = baselines.rppg_signal("lgi", v["rgb"].reshape(-1, 3), v["fps"])
      # 6 s of signal: 10 bpm between FFT bins, interpolated; the physically rendered videos'
      # light and motion leave up to 2.6 bpm (measured on validation video 0).
      assert abs(float(heart_rate.hr_estimate(signal, v["fps"])) - v["hr"].mean()) < 3.0


def test_benchmark_build_counts_stored_frames(ubfc_manual, tmp_path, load_experiment):
  figures = load_experiment("benchmark").benchmark_build("ubfc_rppg",
                                                         manual_dir=str(ubfc_manual),
                                                         data_dir=str(tmp_path))
  assert figures["build_frames"] == 75
  assert figures["build_frames_per_s"] > 0 and figures["build_cpu_s_per_frame"] > 0


@pytest.mark.slow
def test_benchmark_build_memory_measures_each_build_in_its_own_process(load_experiment):
  """3 s of a 780x580 61 fps video (90 frames at 30 fps: more than a window), built by this
  checkout and by a 'baseline' that is this checkout too: both peaks measured, the stored
  examples identical."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  figures = load_experiment("benchmark").benchmark_build_memory((3.0,), baseline=repo)
  row, = figures["build_memory"]
  assert row["frames"] == 183 and row["decoded_mb"] == pytest.approx(183 * 780 * 580 * 3 / 2**20)
  assert row["identical"]
  assert figures["build_peak_memory_mb"] == row["peak_mb"] > figures["build_import_peak_mb"] > 0
  assert row["baseline_peak_mb"] > 0 and row["wall_s"] > 0
