"""Local readers for the shipped capability tasks whose files ``dataset_path: json`` cannot read as they are.

lm-evaluation-harness calls them as ``custom_dataset`` (``custom_dataset: !function prepare.mmlu_redux``) with
the task's ``metadata`` as keyword arguments; each returns ``{"test": datasets.Dataset}``. Paths are relative
to the repository root, like every path in params. Nothing here reaches a hub.
"""

from __future__ import annotations

import ast
import csv
import io
import json
from pathlib import Path
from typing import Any

LETTERS = "ABCD"


def _path(value: str) -> Path:
    from tunegate.paths import resolve_path

    return resolve_path(value)


def _text(path: Path) -> str:
    """A CSV's text: UTF-8 (with or without a BOM), else cp1252 (one MMLU-Redux file is)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252")


def _normalised(error_type: str) -> str:
    return "_".join(error_type.strip().lower().replace("_", " ").split())


def _answer(value: str) -> int | None:
    value = value.strip()
    if value.upper() in LETTERS and value:
        return LETTERS.index(value.upper())
    if value.isdigit() and int(value) < 4:
        return int(value)
    return None


def mmlu_redux_rows(path: str, corrected: bool = True) -> list[dict[str, Any]]:
    """MMLU-Redux's 57 subject files as one list: ``subject, question, choices, answer``.

    Each file's delimiter (``;`` or ``,``) is read from its header and its columns by name (their order varies);
    ``choices`` is a Python list literal. The annotators' ``error_type`` is respected: ``ok`` items are kept,
    ``wrong_groundtruth`` items with a usable ``correct_answer`` (a letter or an index) are kept with the corrected
    answer when ``corrected``, every other error type (bad question or options clarity, no or multiple correct
    answers, expert) is left out.
    """
    rows = []
    for file in sorted(_path(path).glob("*.csv")):
        text = _text(file)
        delimiter = ";" if ";" in text.splitlines()[0] else ","
        subject = file.stem.removeprefix("mmlu_")
        for index, row in enumerate(csv.DictReader(io.StringIO(text), delimiter=delimiter)):
            kind = _normalised(row.get("error_type") or "")
            answer = _answer(row.get("answer") or "")
            if kind == "wrong_groundtruth" and corrected:
                answer = _answer(row.get("correct_answer") or "")
            elif kind != "ok":
                continue
            choices = ast.literal_eval(row["choices"])
            if answer is None or not isinstance(choices, list) or len(choices) != 4:
                continue
            rows.append({"id": f"{subject}/{index}", "subject": subject, "question": row["question"].strip(),
                         "choices": [str(c) for c in choices], "answer": answer, "error_type": kind})
    if not rows:
        raise ValueError(f"{path}: no MMLU-Redux rows (mmlu_*.csv with question, choices, answer, error_type)")
    return rows


def mmlu_redux(path: str = "../shared/data/eval/mmlu_redux", corrected: bool = True, **_: Any):
    import datasets

    return {"test": datasets.Dataset.from_list(mmlu_redux_rows(path, corrected))}


def piqa_rows(path: str, labels: str) -> list[dict[str, Any]]:
    """PIQA's ``{goal, sol1, sol2}`` lines joined with the line-aligned labels (0/1) of the ``.lst`` file."""
    lines = [line for line in _path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    marks = [line.strip() for line in _path(labels).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != len(marks):
        raise ValueError(f"{path} has {len(lines)} items but {labels} has {len(marks)} labels: they must be line-aligned")
    rows = []
    for index, (line, mark) in enumerate(zip(lines, marks)):
        if mark not in ("0", "1"):
            raise ValueError(f"{labels}: line {index + 1}: label {mark!r} is not 0 or 1")
        item = json.loads(line)
        rows.append({"id": index, "goal": item["goal"], "sol1": item["sol1"], "sol2": item["sol2"], "label": int(mark)})
    return rows


def piqa(path: str = "../shared/data/eval/piqa/valid.jsonl", labels: str = "../shared/data/eval/piqa/valid-labels.lst", **_: Any):
    import datasets

    return {"test": datasets.Dataset.from_list(piqa_rows(path, labels))}
