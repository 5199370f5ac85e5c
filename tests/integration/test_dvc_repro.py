"""`dvc repro` of the demo stage is byte-for-byte reproducible."""

import subprocess
from pathlib import Path

import pytest
import yaml

from tunegate.adapters import dvc as dvc_adapter

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _lock_md5() -> str:
    return yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]["demo_data"]["outs"][0]["md5"]


def test_repro_twice_gives_the_committed_md5(tunegate_home):
    dvc_adapter.reproduce(REPO, "demo_data", tunegate_home, force=True)
    first = _lock_md5()
    files_first = {p.name: dvc_adapter.file_md5(p) for p in (REPO / "data" / "demo").glob("*.jsonl")}
    dvc_adapter.reproduce(REPO, "demo_data", tunegate_home, force=True)
    assert _lock_md5() == first
    assert {p.name: dvc_adapter.file_md5(p) for p in (REPO / "data" / "demo").glob("*.jsonl")} == files_first
    committed = subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=REPO, capture_output=True, text=True)
    if committed.returncode == 0:
        assert yaml.safe_load(committed.stdout)["stages"]["demo_data"]["outs"][0]["md5"] == first
    assert (tunegate_home / "dvc-cache").is_dir()
