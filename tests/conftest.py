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

# Under `pytest -n N` (pytest-xdist, as `make test` runs) every worker is a machine of its own: its own
# home (above), its own training slots, and its share of the cores, so that two workers' training runs
# neither wait on each other's slot nor spin OpenMP threads against each other.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if os.environ.get("PYTEST_XDIST_WORKER") and _WORKERS > 1:
    from tunegate.operations.runqueue import MACHINE_DIR_ENV, apply_thread_budget

    os.environ.setdefault(MACHINE_DIR_ENV, str(_HOME / "machine"))
    apply_thread_budget(_WORKERS)  # the workers as a machine's slots: cores / workers, passive waiting

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
    from tunegate.adapters import dvc as dvc_adapter

    demo = REPO / "data" / "demo"
    made = [demo / "train.jsonl", demo / "eval.jsonl", demo / "capability" / "story_continuation.jsonl",
            demo / "preference" / "train.jsonl", demo / "preference" / "eval.jsonl"]
    if not all(path.is_file() for path in made):
        dvc_adapter.reproduce(REPO, "demo_data", _HOME)
    return demo


# --- tiny models of other families (tests/model_families.py), built once per session ---------

import sys  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import model_families` in any import mode


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer random GPT-2 (Conv1D, GPT-2 tokenizer, no pad token, no chat template)."""
    from model_families import GPT2_TOKENIZER, build_tiny_gpt2

    if not GPT2_TOKENIZER.is_file():
        pytest.skip(f"{GPT2_TOKENIZER} is missing: the tests need ../shared beside the repo")
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_chatml(tmp_path_factory) -> Path:
    """A 2-layer random Qwen2 with a ChatML tool-calling template; EOS <|endoftext|>, end of turn <|im_end|>."""
    from model_families import GPT2_TOKENIZER, build_tiny_chatml

    if not GPT2_TOKENIZER.is_file():
        pytest.skip(f"{GPT2_TOKENIZER} is missing: the tests need ../shared beside the repo")
    return build_tiny_chatml(tmp_path_factory.mktemp("tiny-chatml"))
