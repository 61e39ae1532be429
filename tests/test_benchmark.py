"""experiments/benchmark.py runs and writes its figures under keys that name their unit (small shapes:
the figures themselves are for a quiet machine, not for a test)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--tasks", "1", "--size", "32", "--repeats", "2", "--eval_videos", "1,2",
        "--config", str(REPO / "configs" / "default.py")]

# Runs the benchmark with the data pipeline's libraries unimportable, as on a GPU machine that
# has only jax, flax, optax, numpy, scipy and ml_collections.
_WITHOUT_DATA_LIBRARIES = """
import runpy, sys
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {"tensorflow_datasets", "tensorflow", "grain", "av", "cv2"}:
      raise ImportError(f"{name} blocked by the test")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_benchmark_writes_its_figures_without_the_data_libraries(tmp_path):
  out = tmp_path / "bench.json"
  subprocess.run([sys.executable, "-c", _WITHOUT_DATA_LIBRARIES,
                  str(REPO / "experiments" / "benchmark.py"), "--sections",
                  "matmul,outer_step,eval", "--precision", "highest", "--json", str(out),
                  *TINY], check=True, timeout=900, cwd=tmp_path)
  figures = json.loads(out.read_text())
  assert figures["outer_step_spread_s"] >= 0 and figures["precision"] == "highest"
  assert figures["eval_videos"] == [1, 2] and figures["eval_batching"] == "map"
  for key in ("outer_step_median_s", "compile_s", "eval_1v_frames_per_s", "eval_1v_compile_s",
              "eval_2v_frames_per_s", "gflops_per_s", "matmul_peak_gflops_per_s",
              "peak_memory_mb"):
    assert isinstance(figures[key], float) and figures[key] > 0, key
  # No original run, no ratio to it.
  assert not [k for k in figures if "original" in k], figures


@pytest.mark.slow
def test_benchmark_times_the_original_side_by_side(tmp_path, load_experiment):
  """Needs torch and a checkout of the original release in METARPPG_ORIGINAL_DIR, e.g.
  `git clone https://github.com/eugenelet/Meta-rPPG DIR` (its .py files suffice)."""
  if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed (pip install -e '.[torch]')")
  original = os.environ.get("METARPPG_ORIGINAL_DIR", "")
  if not os.path.isfile(os.path.join(original, "model", "main_model.py")):
    pytest.skip("set METARPPG_ORIGINAL_DIR to a checkout of eugenelet/Meta-rPPG")
  out = tmp_path / "bench.json"
  rc = load_experiment("benchmark").main(["--sections", "outer_step,eval", "--original",
                                          original, "--json", str(out), *TINY])
  assert rc == 0
  figures = json.loads(out.read_text())
  for key in ("original_outer_step_median_s", "original_eval_frames_per_s",
              "outer_step_vs_original", "eval_vs_original", "eval_2v_vs_original"):
    assert isinstance(figures[key], float) and figures[key] > 0, key
  assert figures["outer_step_vs_original"] == pytest.approx(
      figures["outer_step_median_s"] / figures["original_outer_step_median_s"])
  assert figures["eval_vs_original"] == pytest.approx(
      figures["eval_1v_frames_per_s"] / figures["original_eval_frames_per_s"])
  assert figures["original_torch_version"].startswith("2.")


def test_benchmark_rejects_an_unknown_section(capsys, load_experiment):
  with pytest.raises(SystemExit):
    load_experiment("benchmark").main(["--sections", "warp_drive"])
  assert "unknown section 'warp_drive'" in capsys.readouterr().err


def test_benchmark_names_a_missing_original_checkout(tmp_path, load_experiment):
  if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed")
  with pytest.raises(SystemExit, match="no model/main_model.py"):
    load_experiment("benchmark").main(["--sections", "outer_step", "--original",
                                       str(tmp_path), *TINY])


def test_readme_speed_table_is_the_committed_benchmark_json(load_experiment):
  """The README's CPU speed table is `benchmark.py --table` of the committed figures."""
  figures = json.loads((REPO / "experiments" / "results" / "benchmark_cpu.json").read_text())
  table = load_experiment("benchmark").speed_table(figures)
  assert table in (REPO / "README.md").read_text()
