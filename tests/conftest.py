"""Shared test fixtures: where the reference outputs of the original code live."""

import importlib.util
import os
import pathlib
import tempfile

import pytest

# The end-to-end tests compile the same jitted steps many times (in this process and in the
# subprocesses they start, which inherit the variable): JAX's persistent cache compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "metarppg_jax_test_compile_cache"))

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = pathlib.Path(
    os.environ.get("METARPPG_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end tests (run in CI all the same)")


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
  if not REFERENCE_DIR.is_dir():
    raise FileNotFoundError(
        f"reference outputs not found at {REFERENCE_DIR}; check out ../shared beside the repo "
        "or set METARPPG_REFERENCE_DIR")
  return REFERENCE_DIR


@pytest.fixture(scope="session")
def load_experiment():
  """experiments/<name>.py as a module (the experiments are scripts, not a package)."""
  def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  return load


@pytest.fixture(scope="session")
def compare(reference_dir):
  """The reference outputs' tolerance rules (`../shared/reference/compare.py`) as a module."""
  spec = importlib.util.spec_from_file_location("compare", reference_dir / "compare.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
  """A workdir with configs/tiny.py's config.json and a checkpoint of the initialised model
  (for tests of a program's plumbing, not of the model's accuracy)."""
  from metarppg_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from metarppg_jax import configuration  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("workdir")
  config = configuration.from_file(REPO / "configs" / "tiny.py")
  configuration.write(config, path)
  mgrs = checkpoints.managers(path, async_save=False)
  checkpoints.save(mgrs, checkpoints.target_state(config), step=0)
  checkpoints.close(mgrs)
  return path
