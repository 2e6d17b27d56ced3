"""Shared fixtures."""

import os
from pathlib import Path

import pytest

#: The environment this test process started with, before a test module imported TensorFlow
#: (tests that run a command line's `main` set TensorFlow's variables in `os.environ` later).
_START_ENVIRONMENT = dict(os.environ)

#: Real data for tests: ``../shared/data/LPBA40`` relative to the project root.
LPBA40_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "LPBA40"


@pytest.fixture(scope="session")
def lpba40_dir() -> Path:
    """The LPBA40 folder (Learn2Reg layout), or skip the test when it is absent."""
    if not (LPBA40_DIR / "LPBA40_dataset.json").is_file():
        pytest.skip("LPBA40 not found at ../shared/data/LPBA40 (relative to the project root)")
    return LPBA40_DIR


@pytest.fixture(scope="session")
def start_environment() -> dict:
    """A copy of the environment the test process started with (`_START_ENVIRONMENT`)."""
    return dict(_START_ENVIRONMENT)
