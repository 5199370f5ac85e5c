"""`dvc repro` of the demo stage is byte-for-byte reproducible."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tunegate.adapters import dvc as dvc_adapter

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
# What the demo_data stage reads and writes, besides the package its command runs (linked, not copied).
STAGE_FILES = (".dvc/config", "dvc.yaml", "dvc.lock", "params/demo.yaml", "data/.gitignore")


def _lock_md5(root: Path) -> str:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]["demo_data"]["outs"][0]["md5"]


@pytest.fixture()
def stage_copy(tmp_path, monkeypatch) -> Path:
    """The stage's files in a git repo of their own, with ``../shared`` beside it as beside the checkout:
    a forced repro rewrites ``data/demo`` there, not under the tests that read the checkout's."""
    root = tmp_path / "repo"
    for name in STAGE_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    (root / "tunegate").symlink_to(REPO / "tunegate", target_is_directory=True)
    (tmp_path / "shared").symlink_to(SHARED)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    monkeypatch.chdir(root)  # DVC resolves a stage name against the working directory, as `dvc repro` does
    return root


def test_repro_twice_gives_the_committed_md5(stage_copy, tunegate_home):
    dvc_adapter.reproduce(stage_copy, "demo_data", tunegate_home, force=True)
    first = _lock_md5(stage_copy)
    files_first = {p.name: dvc_adapter.file_md5(p) for p in (stage_copy / "data" / "demo").glob("*.jsonl")}
    assert set(files_first) == {"train.jsonl", "eval.jsonl"}
    dvc_adapter.reproduce(stage_copy, "demo_data", tunegate_home, force=True)
    assert _lock_md5(stage_copy) == first
    assert {p.name: dvc_adapter.file_md5(p) for p in (stage_copy / "data" / "demo").glob("*.jsonl")} == files_first
    assert first == _lock_md5(REPO)  # the checkout's lock, as committed or as this checkout reproduced it
    committed = subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=REPO, capture_output=True, text=True)
    if committed.returncode == 0:
        assert yaml.safe_load(committed.stdout)["stages"]["demo_data"]["outs"][0]["md5"] == first
    assert (tunegate_home / "dvc-cache").is_dir()


def test_repro_writes_nothing_to_stdout(stage_copy, tunegate_home, capfd):
    """`tunegate run --json` prints one JSON document: DVC's lines and the stage's own go to stderr."""
    capfd.readouterr()
    dvc_adapter.reproduce(stage_copy, "demo_data", tunegate_home, force=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert "story-continuation items" in err  # the stage command's own line (a child process)
    assert (stage_copy / "data" / "demo" / "capability" / "story_continuation.jsonl").is_file()
