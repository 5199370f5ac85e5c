"""Data validation computed ahead, beside `tunegate run`'s start-up.

`tunegate run` checks its params in a child process on the other core while it imports the pipeline
(:mod:`tunegate.operations.preflight`). Once the preflight passed, that child goes on: it builds the canonical
datasets from the sources as they are on disk and runs the expectation suites on them, exactly as
the flow's ``validate_data`` task would, and writes the reports as JSON into a private directory.

The task uses that result only when it was computed on the same params and on byte-identical
canonical files (the md5 of each canonical split, as ``prepare_data`` wrote them after ``dvc repro``);
otherwise (the data changed, the child failed, the flow runs elsewhere) it validates as always.
Either way the same code, on the same records, decides: only where it runs differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.data.validation import Offender, RuleResult, ValidationReport
from tunegate.params import Params, dump_params

RESULT = "validation.json"
DOCS = "validation"


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


# Children that validate ahead for this process: params key -> (process, directory).
_pending: dict[str, tuple[subprocess.Popen, Path]] = {}


def register(params: Params, process: subprocess.Popen, directory: Path) -> None:
    _pending[params_key(params)] = (process, directory)


def take(params: Params, train_md5: str | None, eval_md5: str | None, out_dir: Path, timeout_s: float = 600) -> Ahead | None:
    """The reports computed ahead for ``params`` on canonical files with these md5s, their data docs
    moved under ``out_dir``; ``None`` when there are none (the caller validates itself). Used once."""
    entry = _pending.pop(params_key(params), None)
    if entry is None:
        return None
    process, directory = entry
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return None
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
