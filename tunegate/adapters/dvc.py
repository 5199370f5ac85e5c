"""Adapter over DVC: reproduce a stage and read the md5s it recorded in ``dvc.lock``.

DVC's cache and site cache go under ``$TUNEGATE_HOME`` through a config
override, so the repo's committed ``.dvc/config`` stays machine-independent.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunegate.data.digest import file_md5


@dataclass(frozen=True)
class StageOutput:
    path: str
    md5: str


def _config(home: Path) -> dict:
    return {
        "cache": {"dir": str(home / "dvc-cache")},
        "core": {"site_cache_dir": str(home / "dvc-site"), "analytics": "false"},
    }


@contextlib.contextmanager
def repo_lock(root: Path) -> Iterator[None]:
    """Wait for, then hold, tunegate's lock on the DVC repo ``root``: two runs (of any project, any
    ``$TUNEGATE_HOME``) take turns instead of one dying on DVC's own lock ("... is busy")."""
    import fcntl

    lock_dir = root / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "tunegate-repo.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # the kernel drops it if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reproduce(root: Path, stage: str, home: Path, force: bool = False) -> None:
    """Run ``dvc repro STAGE`` in ``root`` with this interpreter's scripts first on PATH."""
    from dvc.repo import Repo

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    with repo_lock(root), _stdout_to_stderr(), Repo(str(root), config=_config(home)) as repo:
        repo.reproduce(stage, force=force)


@contextlib.contextmanager
def _stdout_to_stderr():
    """DVC's own lines ("Running stage ...") and the stage command's output go to stderr, file descriptor and
    all (the command is a child process): stdout is ``tunegate run --json``'s JSON and nothing else."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def reproduce_md5(root: Path, stage: str, home: Path) -> str:
    """``dvc repro`` ``stage`` (a no-op when nothing changed) and the md5 of its outputs as ``dvc.lock``
    records them, ``+``-joined when there are several."""
    reproduce(root, stage, home)
    outs = stage_outputs(root / "dvc.lock", stage)
    return outs[0].md5 if len(outs) == 1 else "+".join(o.md5 for o in outs)


def stage_outputs(lock_file: Path, stage: str) -> list[StageOutput]:
    """The outs of ``stage`` as recorded in ``dvc.lock``."""
    if not lock_file.is_file():
        raise FileNotFoundError(f"{lock_file}: no dvc.lock; run `dvc repro {stage}` first")
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    entry = (lock.get("stages") or {}).get(stage)
    if entry is None:
        raise KeyError(f"{lock_file}: stage {stage!r} not found")
    return [StageOutput(o["path"], o["md5"]) for o in entry.get("outs", [])]


def add_files(root: Path, paths: list[Path], dest_dir: Path, home: Path) -> list[StageOutput]:
    """``dvc add`` each file; a file outside the repo is copied into ``dest_dir`` first."""
    import shutil

    from dvc.repo import Repo

    targets = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        try:
            path.relative_to(root)
            target = path
        except ValueError:
            dest_dir.mkdir(parents=True, exist_ok=True)
            target = dest_dir / path.name
            shutil.copyfile(path, target)
        targets.append(target)
    with repo_lock(root), Repo(str(root), config=_config(home)) as repo:
        repo.add([str(t) for t in targets])
    return [StageOutput(str(t.relative_to(root)), file_md5(t)) for t in targets]
