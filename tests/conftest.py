"""Shared test fixtures: where the reference outputs of the original code live."""

import os
import pathlib

import pytest

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
