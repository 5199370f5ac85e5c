"""Eleven kinds of bad training data, each with the rule its error must name.

Each case writes ``train.jsonl`` (and, for the overlap case, ``eval.jsonl``) into a
folder and returns (train path, eval path or None, record index, rule text).
"""

from __future__ import annotations

import json
from pathlib import Path


def good_rows(n: int = 120) -> list[dict]:
    return [
        {"instruction": f"Tell me fact number {i} about cats.", "input": "", "output": f"Cats are great, fact {i}."}
        for i in range(n)
    ]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _case_broken_json(d: Path):
    path = _write(d / "train.jsonl", good_rows())
    lines = path.read_text().splitlines()
    lines[5] = lines[5][:-3]
    path.write_text("\n".join(lines) + "\n")
    return path, None, 5, "not valid JSON"


def _case_bad_utf8(d: Path):
    path = _write(d / "train.jsonl", good_rows())
    raw = path.read_bytes().split(b"\n")
    raw[7] = raw[7].replace(b"Cats", b"C\xffts")
    path.write_bytes(b"\n".join(raw))
    return path, None, 7, "not valid UTF-8"


def _case_wrong_types(d: Path):
    rows = good_rows()
    rows[9]["output"] = 42
    return _write(d / "train.jsonl", rows), None, 9, "must be a string"


def _case_empty_response(d: Path):
    rows = good_rows()
    rows[11]["output"] = "   "
    return _write(d / "train.jsonl", rows), None, 11, "non_empty"


def _case_role_order(d: Path):
    rows = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]} for r in good_rows()]
    rows[13]["messages"] = rows[13]["messages"][::-1]
    return _write(d / "train.jsonl", rows), None, 13, "role_order"


def _case_duplicates(d: Path):
    rows = good_rows()
    rows[20] = dict(rows[3])
    return _write(d / "train.jsonl", rows), None, 20, "duplicates"


def _case_overlap(d: Path):
    train = _write(d / "train.jsonl", good_rows())
    evaluation = _write(d / "eval.jsonl", [{"instruction": "Tell me fact number 17 about cats!", "input": "", "output": "x"}])
    return train, evaluation, 17, "train_eval_overlap"


def _case_too_long(d: Path):
    rows = good_rows()
    rows[30]["instruction"] = "Read this. " + "The cat sat on the mat. " * 200
    return _write(d / "train.jsonl", rows), None, 30, "runaway_length"


def _case_unknown_format(d: Path):
    rows = [{"question": "q", "answer": "a"} for _ in range(5)]
    return _write(d / "train.jsonl", rows), None, 0, "unknown format"


def _case_preference_pairs(d: Path):
    rows = [{"prompt": "p", "chosen": "good", "rejected": "bad"} for _ in range(5)]
    return _write(d / "train.jsonl", rows), None, 0, "preference pair"


def _case_pii(d: Path):
    rows = good_rows()
    rows[40]["output"] = "Write to me at jane.doe@example.com."
    return _write(d / "train.jsonl", rows), None, 40, "pii"


# Caught by the preflight before the flow starts anything (the rule is then the fix the preflight names).
CAUGHT_BY_PREFLIGHT = {"preference_pairs": "list it under preference.data.train and set train.objective: dpo"}

BAD_INPUTS = {
    "broken_json": _case_broken_json,
    "invalid_utf8": _case_bad_utf8,
    "wrong_types": _case_wrong_types,
    "empty_response": _case_empty_response,
    "role_order": _case_role_order,
    "duplicates": _case_duplicates,
    "train_eval_overlap": _case_overlap,
    "far_over_max_length": _case_too_long,
    "unknown_format": _case_unknown_format,
    "preference_pairs": _case_preference_pairs,
    "pii": _case_pii,
}
