"""Test set-up: every test session writes under a temporary $TUNEGATE_HOME, telemetry off."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="tunegate-test-home-"))
os.environ["TUNEGATE_HOME"] = str(_HOME)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

from tunegate.paths import configure_environment  # noqa: E402

configure_environment()

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tunegate_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def base_model_path() -> Path:
    path = SHARED / "models" / "stories260K"
    if not path.is_dir():
        pytest.skip(f"{path} is missing: the tests need ../shared beside the repo")
    return path


@pytest.fixture(scope="session")
def demo_data() -> Path:
    """``data/demo`` as ``dvc repro demo_data`` makes it (a no-op when it is there already)."""
    from tunegate import dvc_adapter

    demo = REPO / "data" / "demo"
    if not (demo / "train.jsonl").is_file() or not (demo / "eval.jsonl").is_file():
        dvc_adapter.reproduce(REPO, "demo_data", _HOME)
    return demo
