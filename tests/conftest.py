"""Shared fixtures."""

from pathlib import Path

import pytest

#: Real data for tests: ``../shared/data/LPBA40`` relative to the project root.
LPBA40_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "LPBA40"


@pytest.fixture(scope="session")
def lpba40_dir() -> Path:
    """The LPBA40 folder (Learn2Reg layout), or skip the test when it is absent."""
    if not (LPBA40_DIR / "LPBA40_dataset.json").is_file():
        pytest.skip("LPBA40 not found at ../shared/data/LPBA40 (relative to the project root)")
    return LPBA40_DIR
