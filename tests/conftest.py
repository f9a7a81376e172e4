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


@pytest.fixture(scope="session")
def dlib_models():
    """(dlib module, HOG detector, 68-point predictor) with the weights from face_recognition_models."""
    dlib = pytest.importorskip("dlib")
    from proui_data.detect import _dlib_models

    detector, predictor = _dlib_models()
    return dlib, detector, predictor


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> str:
    """The embedded demo set built once per test session with the shipped demo recipe."""
    from proui_data.pipeline import plan_build
    from proui_data.recipe import load_recipe
    from proui_data.runner import run_plan
    from proui_data.sources import get_source

    out = tmp_path_factory.mktemp("demo") / "demo.zarr"
    run_plan(plan_build(get_source("demo"), load_recipe(None, "demo"), str(out)), workers=0, progress=False)
    return str(out)
