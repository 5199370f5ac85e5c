"""Data validation computed ahead, beside `tunegate run`'s start-up.

`tunegate run` checks its params in a child process on the other core while it imports the pipeline
(:mod:`tunegate.operations.preflight`). Once the preflight passed, that child goes on: it builds the canonical
datasets from the sources as they are on disk and runs the expectation suites on them, exactly as
the flow's ``validate_data`` task would, and writes the reports as JSON into a private directory.

The task uses that result only when it was computed on the same params and on byte-identical
canonical files (the md5 of each canonical split, as ``prepare_data`` wrote them after ``dvc repro``);
otherwise (the data changed, the child failed, the flow runs elsewhere) it validates as always.
Either way the same code, on the same records, decides: only where it runs differs.

No state in this module joins the launcher and the task: the directory is named by the process that
runs the flow and the params (:func:`directory_for`), so the task finds what its own launcher started
and a served or scheduled run (no launcher) finds nothing. The child holds a lock on the directory's
``busy`` file while it works; the task waits for that lock, the kernel releasing it however the child ends.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.data.validation import Offender, RuleResult, ValidationReport
from tunegate.params import Params, dump_params

RESULT = "validation.json"
DOCS = "validation"
BUSY = "busy"  # locked by the child while it validates


def params_key(params: Params) -> str:
    return hashlib.sha256(dump_params(params).encode()).hexdigest()


def report_from_dict(data: dict[str, Any] | None) -> ValidationReport | None:
    if data is None:
        return None
    rules = [RuleResult(**{**r, "offenders": [Offender(**o) for o in r.get("offenders", [])]}) for r in data["rules"]]
    return ValidationReport(**{**data, "rules": rules})


def compute(params: Params, directory: Path) -> Path:
    """In the preflight's child: canonical splits, then the suites on them; the result file's path."""
    from tunegate.data.dataset import build_dataset, validate_canonical
    from tunegate.data.digest import file_md5
    from tunegate.data.sources import read_canonical, write_jsonl

    dataset = build_dataset(params)
    train_path, eval_path = directory / "train.jsonl", directory / "eval.jsonl"
    write_jsonl(train_path, dataset.train)
    write_jsonl(eval_path, dataset.eval)
    train, evaluation = read_canonical(train_path), read_canonical(eval_path)  # as the task reads them
    reports = validate_canonical(params, train, evaluation, directory / DOCS / "data_docs")
    result = {
        "params_key": params_key(params),
        "train_md5": file_md5(train_path),
        "eval_md5": file_md5(eval_path),
        "docs_root": str(directory / DOCS),
        "reports": [r.to_dict() if r is not None else None for r in reports],
    }
    partial = directory / (RESULT + ".partial")
    partial.write_text(json.dumps(result, default=_plain))
    os.replace(partial, directory / RESULT)  # whole or absent
    return directory / RESULT


def _plain(value: Any) -> Any:
    """numpy scalars in GE's counts become Python numbers (as in the task's own reports' JSON)."""
    return value.item() if hasattr(value, "item") else str(value)


@dataclass
class Ahead:
    train: ValidationReport
    eval: ValidationReport | None


def process_directory(pid: int | None = None) -> Path:
    """``$TUNEGATE_HOME/ahead/<pid>-<start time>``: what the launcher of process ``pid`` (default: this one)
    had computed ahead (pid and start time name one process, pids being reused)."""
    import psutil

    from tunegate.paths import tunegate_home

    pid = os.getpid() if pid is None else pid
    return tunegate_home() / "ahead" / f"{pid}-{psutil.Process(pid).create_time():.2f}"


def directory_for(params: Params) -> Path:
    """Where this process's preflight child validates ``params`` ahead, and where the task looks."""
    return process_directory() / params_key(params)[:16]


def sweep() -> None:
    """Remove what launchers that are gone (killed before their atexit cleanup) left under ``ahead/``."""
    import psutil

    from tunegate.paths import tunegate_home

    for directory in (tunegate_home() / "ahead").glob("*-*"):
        pid, _, started = directory.name.partition("-")
        try:
            alive = abs(psutil.Process(int(pid)).create_time() - float(started)) < 0.02
        except (psutil.NoSuchProcess, ValueError):
            alive = False
        if not alive:
            shutil.rmtree(directory, ignore_errors=True)


def hold(directory: Path):
    """In the child: lock ``directory``'s busy file until the child ends (the open file is returned: keep it)."""
    directory.mkdir(parents=True, exist_ok=True)
    busy = open(directory / BUSY, "w")
    fcntl.flock(busy, fcntl.LOCK_EX)
    return busy


def _wait_until_done(directory: Path, timeout_s: float) -> bool:
    """Whether the child that validates into ``directory`` has ended (its lock released) within ``timeout_s``."""
    try:
        busy = open(directory / BUSY)
    except OSError:  # never locked: no child works here
        return True
    deadline = time.monotonic() + timeout_s
    with busy:
        while True:
            try:
                fcntl.flock(busy, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)


def take(params: Params, train_md5: str | None, eval_md5: str | None, out_dir: Path, timeout_s: float = 600,
         directory: Path | None = None) -> Ahead | None:
    """The reports computed ahead for ``params`` (in ``directory``, default :func:`directory_for`) on canonical
    files with these md5s, their data docs moved under ``out_dir``; ``None`` when there are none (the caller
    validates itself). Used once: the directory is removed."""
    directory = directory_for(params) if directory is None else directory
    if not directory.is_dir() or not _wait_until_done(directory, timeout_s):
        return None  # a child still busy after the timeout dies with its launcher
    try:
        return _read(params, train_md5, eval_md5, out_dir, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _read(params: Params, train_md5: str | None, eval_md5: str | None, out_dir: Path, directory: Path) -> Ahead | None:
    try:
        result = json.loads((directory / RESULT).read_text())
    except (OSError, ValueError):
        return None
    if (result.get("params_key"), result.get("train_md5"), result.get("eval_md5")) != (params_key(params), train_md5, eval_md5):
        return None
    reports = [report_from_dict(r) for r in result["reports"]]
    docs_root = Path(result["docs_root"])
    if (docs_root / "data_docs").is_dir():
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(docs_root / "data_docs", out_dir / "data_docs", dirs_exist_ok=True)
    for report in reports:
        if report is not None and report.docs_index and report.docs_index.startswith(str(docs_root)):
            report.docs_index = str(out_dir) + report.docs_index[len(str(docs_root)):]
    return Ahead(reports[0], reports[1])
