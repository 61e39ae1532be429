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
  # Per-video columns first, the bold MAE the lowest per-video one; per-window after.
  best = min(results, key=lambda m: results[m]["test"]["video"]["mae"])
  assert f"| {best} | **{results[best]['test']['video']['mae']:.2f} ±" in text
  lines = text.splitlines()
  header = next(line for line in lines[lines.index("## test"):] if line.startswith("| method"))
  assert header == ("| method | MAE (bpm) | RMSE (bpm) | MAPE (%) | Pearson r | videos | "
                    "MAE per window (bpm) | r per window | SNR (dB) | windows |")
  row = rows[0].split(" | ")
  video, window = results["meta_rppg"]["test"]["video"], results["meta_rppg"]["test"]
  assert row[1].strip("*") == f"{video['mae']:.2f} ± {video['mae_se']:.2f}"
  assert row[5] == str(video["num_videos"]) and row[-1] == f"{window['num_windows']} |"
  assert row[6].startswith(f"{window['mae']:.2f} ±")
  val_row = [line for line in lines if line.startswith("| pos")][-1]
  assert "n/a" in val_row                        # NaN Pearson and inf SNR
  # Without per-video metrics: the per-window columns.
  plain = {m: {"test": {k: v for k, v in r["test"].items() if k != "video"}}
           for m, r in results.items()}
  text = reports.write_report_md(tmp_path / "plain.md", plain, title="t").read_text()
  assert ("| method | MAE (bpm) | RMSE (bpm) | MAPE (%) | Pearson r | SNR (dB) | windows |"
          in text)
  best = min(plain, key=lambda m: plain[m]["test"]["mae"])
  assert f"| {best} | **{plain[best]['test']['mae']:.2f} ±" in text


def _paired(shift, noise, n=10, seed=0):
  """`metrics.paired_comparison` of A = B + shift + noise (per-video errors, bpm)."""
  rng = np.random.default_rng(seed)
  b = rng.uniform(3.0, 12.0, n)
  return metrics.paired_comparison(b + shift + rng.normal(0, noise, n), b)


def _report(tmp_path, comparisons):
  path = reports.write_report_md(tmp_path / "report.md", _results(), title="t",
                                 comparisons=comparisons)
  return path.read_text()


def test_report_adaptation_wording_follows_the_statistics(tmp_path):
  win, loss, tie = _paired(-4.0, 0.5), _paired(4.0, 0.5), _paired(0.0, 0.0)
  assert (win["verdict"], loss["verdict"], tie["verdict"]) == (
      "a_better", "b_better", "no_measurable_difference")
  comparison = lambda stats: reports.Comparison("test", "Meta-rPPG", "no adaptation", stats,
                                                subject="Transductive adaptation")
  text = _report(tmp_path, [comparison(win)])
  assert "Transductive adaptation helps on split `test`: per-video MAE" in text
  assert f"difference {win['mean_diff']:+.2f} bpm (95 % CI [{win['ci_low']:+.2f}, " in text
  assert "hurts" not in text and "no measurable difference" not in text
  assert "| Meta-rPPG | no adaptation | 10 |" in text and "| Meta-rPPG better |" in text
  text = _report(tmp_path, [comparison(loss)])
  assert "Transductive adaptation hurts on split `test`" in text and "helps" not in text
  text = _report(tmp_path, [comparison(tie)])
  assert ("Transductive adaptation makes no measurable difference on split `test`: per-video "
          "MAE") in text
  assert "every video has the same error with both" in text
  assert "helps" not in text and "hurts" not in text
  assert "95 % CI [+0.00, +0.00]" in text and "p = 1)" in text


def test_report_today_case_is_no_measurable_difference(tmp_path):
  # Adapted and not adapted within 0.01 bpm of each other, per-video errors spread widely.
  rng = np.random.default_rng(5)
  b = rng.uniform(10.0, 70.0, 6)
  stats = metrics.paired_comparison(b + rng.normal(0, 0.5, 6), b)
  assert stats["ci_low"] < 0 < stats["ci_high"]
  text = _report(tmp_path, [reports.Comparison("test", "Meta-rPPG", "no adaptation", stats,
                                               subject="Transductive adaptation")])
  assert "Transductive adaptation makes no measurable difference" in text
  assert "the 95 % interval includes 0" in text and "helps" not in text


def test_report_winner_wording(tmp_path):
  comparison = lambda stats: reports.Comparison("test", "Meta-rPPG", "POS", stats)
  text = _report(tmp_path, [comparison(_paired(-3.0, 0.5))])
  assert "Meta-rPPG beats POS on split `test`" in text and "POS beats" not in text
  text = _report(tmp_path, [comparison(_paired(3.0, 0.5))])
  assert "POS beats Meta-rPPG on split `test`" in text and "Meta-rPPG beats" not in text
  text = _report(tmp_path, [comparison(_paired(0.3, 4.0, seed=2))])
  assert "No measurable difference between Meta-rPPG and POS on split `test`" in text
  assert "beats" not in text
  # A clear shift on too few videos: no winner, and the reason says so.
  few = _paired(-3.0, 0.5, n=4)
  assert few["ci_high"] < 0
  text = _report(tmp_path, [comparison(few)])
  assert "No measurable difference between Meta-rPPG and POS" in text
  assert ("4 videos are too few to tell (a two-sided signed-rank test needs at least 6 to "
          "reach p < 0.05)") in text
  # A comparison goes under its own split's table; one of a split without a table is an error.
  other = reports.Comparison("val", "Meta-rPPG", "POS", _paired(-3.0, 0.5))
  text = _report(tmp_path, [other])
  assert text.index("## val") < text.index("Meta-rPPG beats POS on split `val`")
  with pytest.raises(errors.DataError, match="'validation'"):
    _report(tmp_path, [other._replace(split="validation")])


def test_report_paired_from_json_and_bad_verdict(tmp_path):
  # What metrics.json holds (NaN as null, read back as NaN) formats the same way.
  stats = _paired(-3.0, 0.5, n=0)
  results = _results()
  results["meta_rppg"]["test"]["paired"] = {"pos": stats}
  path = reports.write_metrics_json(tmp_path / "m.json", results)
  back = reports.read_metrics_json(path)["meta_rppg"]["test"]["paired"]["pos"]
  sentence = reports.comparison_sentence(reports.Comparison("test", "A", "B", back))
  assert sentence.startswith("No measurable difference between A and B on split `test`: "
                             "per-video MAE n/a vs n/a bpm over 0 videos")
  with pytest.raises(errors.DataError, match="unknown verdict"):
    reports.comparison_sentence(reports.Comparison("test", "A", "B",
                                                   dict(stats, verdict="maybe")))


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
