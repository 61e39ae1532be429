"""Reports: metrics.json, report.md, plots and the heat-map GIF are written and parse."""

import json
import math

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from metarppg_jax import errors
from metarppg_jax import metrics
from metarppg_jax import reports


def _results():
  rng = np.random.default_rng(0)
  true = rng.uniform(60, 120, 12)
  out = {}
  for method, noise in (("meta_rppg", 2.0), ("no_adaptation", 6.0), ("pos", 4.0)):
    pred = true + rng.normal(0, noise, 12)
    m = metrics.hr_metrics(pred, true)
    m["snr"] = jnp.float32(3.5)                 # jax scalars are written as numbers
    m["video"] = metrics.video_metrics(pred, true, np.arange(12) // 4)
    out[method] = {"test": m}
  out["pos"]["val"] = dict(out["pos"]["test"], pearson=float("nan"), snr=np.inf)
  return out


def test_metrics_json_roundtrip_nan_as_null(tmp_path):
  results = _results()
  path = reports.write_metrics_json(tmp_path / "sub" / "metrics.json", results)
  text = path.read_text()
  data = json.loads(text)                        # strict JSON: no NaN/Infinity tokens
  assert "NaN" not in text and "Infinity" not in text
  assert set(data) == {"meta_rppg", "no_adaptation", "pos"}
  for key in reports.REQUIRED_KEYS:
    assert key in data["meta_rppg"]["test"]
  assert data["pos"]["val"]["pearson"] is None and data["pos"]["val"]["snr"] is None
  assert isinstance(data["pos"]["test"]["num_windows"], int)
  assert data["meta_rppg"]["test"]["video"]["num_videos"] == 3
  back = reports.read_metrics_json(path)
  assert math.isnan(back["pos"]["val"]["pearson"])
  assert back["meta_rppg"]["test"]["mae"] == results["meta_rppg"]["test"]["mae"]
  assert list(tmp_path.joinpath("sub").iterdir()) == [path]      # no temporary files left


def test_metrics_json_rejects_missing_keys_and_bad_values(tmp_path):
  with pytest.raises(errors.DataError, match="snr"):
    reports.write_metrics_json(tmp_path / "m.json", {"pos": {"test": {"mae": 1.0}}})
  bad = _results()
  bad["pos"]["test"]["extra"] = object()
  with pytest.raises(errors.DataError, match="pos/test/extra"):
    reports.write_metrics_json(tmp_path / "m.json", bad)
  assert not (tmp_path / "m.json").exists()
  (tmp_path / "broken.json").write_text("{")
  with pytest.raises(errors.DataError, match="broken.json"):
    reports.read_metrics_json(tmp_path / "broken.json")


def test_report_md_table(tmp_path):
  results = _results()
  fig = reports.plot_bland_altman(tmp_path / "plots" / "ba.png", np.arange(5.0) + 60,
                                  np.arange(5.0) + 61)
  path = reports.write_report_md(tmp_path / "report.md", results, title="Synthetic shifted",
                                 notes=["POS wins here.", "Setting: tiny."],
                                 figures={"Bland-Altman": fig})
  text = path.read_text()
  assert text.startswith("# Synthetic shifted\n")
  assert "POS wins here." in text and "## test" in text and "## val" in text
  assert "![Bland-Altman](plots/ba.png)" in text
  rows = [line for line in text.splitlines() if line.startswith("| meta_rppg")]
  assert len(rows) == 1
  best = min(results, key=lambda m: results[m]["test"]["mae"])
  assert f"| {best} | **{results[best]['test']['mae']:.2f} ±" in text
  assert "MAE video (bpm)" in text
  val_row = [line for line in text.splitlines() if line.startswith("| pos")][-1]
  assert "n/a" in val_row                        # NaN Pearson and inf SNR
  header = text.splitlines()[text.splitlines().index("## test") + 2]
  assert header.startswith("| method | MAE (bpm) | RMSE (bpm) | MAPE (%) | Pearson r | SNR (dB)")


def _open(path):
  with Image.open(path) as im:
    im.load()
    return im.format, im.size, getattr(im, "n_frames", 1)


def test_plots_are_pngs(tmp_path):
  fps, t = 30.0, np.arange(300) / 30.0
  true = np.sin(2 * np.pi * 1.2 * t)
  pred = true + 0.3 * np.random.default_rng(0).standard_normal(300)
  paths = [
      reports.plot_signal(tmp_path / "signal.png", pred, true, fps),
      reports.plot_spectrum(tmp_path / "spectrum.png", pred, fps, 72.0),
      reports.plot_bland_altman(tmp_path / "ba_video.png", [70.0, np.nan, 80.0],
                                [71.0, 75.0, 78.0], "video"),
      reports.plot_training_curves(tmp_path / "curves.png",
                                   {"loss/ordinal": [(0, 3.0), (10, 2.0), (20, 1.5)],
                                    "val/mae": [(10, 9.0), (20, 7.0)],
                                    "lr": [(0, 1e-3)], "loss/proto": []}),
  ]
  for p in paths:
    fmt, size, _ = _open(p)
    assert fmt == "PNG" and size[0] > 100 and size[1] > 100
  with pytest.raises(errors.DataError, match="empty"):
    reports.plot_training_curves(tmp_path / "none.png", {})
  with pytest.raises(errors.DataError):
    reports.plot_signal(tmp_path / "x.png", pred, true[:10], fps)


def test_heatmap_animation_gif(tmp_path):
  rng = np.random.default_rng(1)
  num, fps = 12, 10.0
  crops = rng.integers(0, 256, (num, 16, 16, 3), dtype=np.uint8)
  before = rng.random((num, 16, 16)).astype(np.float32)
  after = np.zeros((num, 16, 16), np.float32)          # all-zero saliency must not divide by 0
  sig = np.sin(np.arange(num) / fps * 2 * np.pi * 1.3)
  path = reports.heatmap_animation(tmp_path / "video0.gif", crops, before, after, sig, fps,
                                   hr_pred=78.1, hr_true=80.0, max_frames=6)
  fmt, _, frames = _open(path)
  assert fmt == "GIF" and frames == 6
  with pytest.raises(errors.DataError, match="heat-map inputs"):
    reports.heatmap_animation(tmp_path / "bad.gif", crops, before[:5], after, sig, fps, 1, 1)
