"""`tunegate data add`: user files go under DVC (a real, temporary git + DVC repo)."""

import subprocess
from pathlib import Path

import pytest
import yaml

from tunegate.adapters import dvc as dvc_adapter

pytestmark = pytest.mark.integration


def test_add_copies_outside_files_and_records_md5(tmp_path, tunegate_home):
    from dvc.repo import Repo

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    Repo.init(str(repo)).close()
    outside = tmp_path / "mine.jsonl"
    outside.write_text('{"prompt": "hi", "completion": "hello"}\n')
    inside = repo / "data" / "own.json"
    inside.parent.mkdir()
    inside.write_text('[{"instruction": "a", "output": "b"}]')

    added = dvc_adapter.add_files(repo, [outside, inside], repo / "data" / "sources", tunegate_home)

    assert [a.path for a in added] == ["data/sources/mine.jsonl", "data/own.json"]
    for item in added:
        meta = yaml.safe_load((repo / f"{item.path}.dvc").read_text())
        assert meta["outs"][0]["md5"] == item.md5 == dvc_adapter.file_md5(repo / item.path)
    ignored = (repo / "data" / "sources" / ".gitignore").read_text()
    assert "/mine.jsonl" in ignored
    with pytest.raises(FileNotFoundError):
        dvc_adapter.add_files(repo, [tmp_path / "missing.json"], repo / "data", tunegate_home)


def test_repo_has_a_default_remote():
    config = (Path(__file__).resolve().parents[2] / ".dvc" / "config").read_text()
    assert "remote = local" in config and '["remote "local"]' not in config and "['remote \"local\"']" in config
