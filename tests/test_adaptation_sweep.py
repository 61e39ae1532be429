"""experiments/adaptation_sweep.py: the committed results have the structure the README reads,
and the same code path runs on a tiny workdir."""

import json
import math
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _check_rows(result, lrs, shots):
  assert [(r["fewshots"], r["adapt_lr"]) for r in result["rows"]] == [
      (s, lr) for s in shots for lr in lrs]
  for row in result["rows"]:
    paired = row["paired"]
    assert row["videos"] >= 1 and math.isfinite(row["mae_not_adapted"])
    assert paired["verdict"] in ("no_measurable_difference", "a_better", "b_better")
    assert math.isclose(paired["mean_diff"], paired["mae_a"] - paired["mae_b"], abs_tol=1e-9)


def test_committed_results_have_their_structure():
  result = json.loads((REPO / "experiments" / "results" / "adaptation_sweep.json").read_text())
  assert result["split"] == "validation_shifted"
  _check_rows(result, [1e-5, 1e-4, 1e-3, 1e-2, 1e-1], [1, 2])


def test_sweep_on_a_tiny_workdir(tiny_workdir, load_experiment, tmp_path):
  sweep = load_experiment("adaptation_sweep")
  out = tmp_path / "sweep.json"
  assert sweep.main(["--workdir", str(tiny_workdir), "--split", "test", "--adapt_lr",
                     "1e-5,1e-2", "--fewshots", "1", "--json", str(out)]) == 0
  result = json.loads(out.read_text())
  _check_rows(result, [1e-5, 1e-2], [1])
  # The same model without adaptation does not depend on the inner rate.
  assert result["rows"][0]["mae_not_adapted"] == result["rows"][1]["mae_not_adapted"]
