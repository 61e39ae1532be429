"""experiments/benchmark.py runs and writes its figures under keys that name their unit (small shapes:
the figures themselves are for a quiet machine, not for a test)."""

import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_writes_its_figures(tmp_path, load_experiment):
  out = tmp_path / "bench.json"
  benchmark = load_experiment("benchmark")
  rc = benchmark.main(["--sections", "matmul,outer_step,eval", "--tasks", "1", "--size", "32",
                      "--repeats", "2", "--eval_videos", "2", "--json", str(out),
                      "--config", str(REPO / "configs" / "default.py")])
  assert rc == 0
  figures = json.loads(out.read_text())
  assert figures["outer_step_spread_s"] >= 0
  for key in ("outer_step_median_s", "compile_s", "eval_frames_per_s",
              "eval_batch_frames_per_s", "gflops_per_s", "matmul_peak_gflops_per_s",
              "peak_memory_mb", "outer_step_vs_original", "eval_vs_original"):
    assert isinstance(figures[key], float) and figures[key] > 0, key


def test_benchmark_rejects_an_unknown_section(capsys, load_experiment):
  with pytest.raises(SystemExit):
    load_experiment("benchmark").main(["--sections", "warp_drive"])
  assert "unknown section 'warp_drive'" in capsys.readouterr().err
