"""The notebooks run top to bottom (nbclient) in their TINY setting, so they cannot rot."""

import pathlib

import nbclient
import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "notebooks"
pytestmark = pytest.mark.slow


def _execute(name: str, parameters: dict, timeout: int = 1200) -> nbformat.NotebookNode:
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(cells) == 1, "one cell tagged 'parameters'"
  cells[0].source += "\n# Injected by the test\n" + "\n".join(
      f"{k} = {v!r}" for k, v in parameters.items())
  client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                   resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute()
  return nb


def _outputs(nb) -> str:
  return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))


def test_quickstart_tiny(tmp_path):
  nb = _execute("quickstart.ipynb", {"TINY": True, "WORKDIR": str(tmp_path / "run")})
  text = _outputs(nb)
  assert "meta_rppg" in text and "MAE" in text
  assert (tmp_path / "run" / "report.md").is_file()


def test_evaluate_checkpoint_tiny(tmp_path):
  nb = _execute("evaluate_checkpoint.ipynb", {"TINY": True, "WORKDIR": str(tmp_path / "w")})
  text = _outputs(nb)
  assert "predicted HR" in text and "checkpoint:" in text
  assert (tmp_path / "w" / "metrics.json").is_file()
