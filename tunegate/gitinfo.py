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


def code_fingerprint(root: Path) -> str:
    """The commit, plus a hash of the uncommitted diff of tracked files when the tree is dirty.

    Two runs with the same fingerprint ran the same code (untracked files aside).
    """
    import hashlib

    sha, dirty = git_commit(root)
    if not dirty:
        return sha
    diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=root, capture_output=True).stdout
    return f"{sha}+dirty.{hashlib.sha256(diff).hexdigest()[:16]}"
