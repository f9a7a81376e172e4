"""Shared fixtures. Tests that read the research-only data in ../shared/data skip when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep BLAS/torch from oversubscribing the two cores CI has; tests are about behaviour, not speed.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PROUI_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data; skips the test with a reason when it is not there."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"shared research data not found at {SHARED_DATA} (set PROUI_SHARED_DATA)")
    return SHARED_DATA
