"""The code version a run used: git commit and whether the tree was dirty."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(root: Path) -> tuple[str, bool]:
    """(commit sha or "unknown", dirty)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout
        return sha, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


# What "the code" of a run is: the pipeline's sources and pinned environment. Params and data are
# fingerprinted on their own; docs and tests do not change what a run computes.
CODE_PATHS = ("tunegate", "tasks", "flows", "pyproject.toml", "requirements.lock", "dvc.yaml")


def code_fingerprint(root: Path, sha: str | None = None) -> str:
    """The commit, plus a hash of the uncommitted diff of the code (CODE_PATHS) when there is one.

    Two runs with the same fingerprint ran the same code (untracked files aside). ``sha``: the
    commit when the caller has it already.
    """
    import hashlib

    sha = sha or git_commit(root)[0]
    try:
        diff = subprocess.run(["git", "diff", "HEAD", "--binary", "--", *CODE_PATHS], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return sha
    return f"{sha}+dirty.{hashlib.sha256(diff).hexdigest()[:16]}" if diff else sha
