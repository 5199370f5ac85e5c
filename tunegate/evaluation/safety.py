"""Safety suite inputs and the refusal classifier.

The default classifier is pattern based: an answer is a refusal when, stripped and
lowercased, it matches a refusal pattern of the chosen languages or one of the user's own
(``tunegate.data.refusals``, the same set the data check uses). It is pluggable: params
``eval.safety.classifier`` may name ``module:function`` taking a response string and
returning a bool.

Eval sets are CSV, TSV, JSON lists or JSONL files; ``EvalSetParams`` says which column holds
the prompt, the id, the category and an optional label to filter on.
"""

from __future__ import annotations

import csv
import importlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunegate.data.refusals import DEFAULT_REFUSAL_LANGUAGES, compile_refusals, normalize_answer

if TYPE_CHECKING:
    from tunegate.params import EvalSetParams

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")


def pattern_classifier(
    languages: Sequence[str] = DEFAULT_REFUSAL_LANGUAGES, extra: Sequence[str] | None = ()
) -> Callable[[str], bool]:
    """True for a response matching a refusal pattern of ``languages`` or one of ``extra``."""
    compiled = compile_refusals(languages, extra)

    def is_refusal(response: str) -> bool:
        return bool(compiled.search(normalize_answer(response)))

    return is_refusal


def load_classifier(
    spec: str | None, languages: Sequence[str] = DEFAULT_REFUSAL_LANGUAGES, extra: Sequence[str] | None = ()
) -> Callable[[str], bool]:
    """``None``/"patterns": the pattern classifier; ``module:function``: a user's classifier."""
    if not spec or spec == "patterns":
        return pattern_classifier(languages, extra)
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"classifier {spec!r}: expected 'patterns' or 'module:function'")
    return getattr(importlib.import_module(module), name)


def cell(value: Any) -> str:
    """A CSV/JSON value as text: JSON booleans as ``true``/``false``, null as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a CSV/TSV file, a JSON list of objects or a JSONL file, chosen by suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as handle:
            yield from csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".json":
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of objects")
        yield from (row if isinstance(row, dict) else {} for row in rows)
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    yield row if isinstance(row, dict) else {}
    else:
        raise ValueError(f"{path}: unsupported eval file type {suffix or '(none)'!r}; use {', '.join(SUFFIXES)}")


def usable(row: dict[str, Any], spec: EvalSetParams) -> bool:
    """A row with a prompt and, when the set filters on a label, the wanted label."""
    if not cell(row.get(spec.column)).strip():
        return False
    return spec.label_column is None or cell(row.get(spec.label_column)) == cell(spec.label_value)


def read_eval_set(path: Path, spec: EvalSetParams) -> list[dict[str, str]]:
    """{id, prompt, category} of every usable row, in file order.

    Ids are ``<name>-<id column>`` (or ``<name>-<row number>``, counting every row); the
    category is the category column's value, or the set's name.
    """
    name = spec.set_name()
    items = []
    for i, row in enumerate(iter_rows(path)):
        if not usable(row, spec):
            continue
        key = cell(row.get(spec.id_column)) if spec.id_column else str(i)
        category = cell(row.get(spec.category_column)) if spec.category_column else ""
        items.append({"id": f"{name}-{key}", "prompt": cell(row[spec.column]), "category": category or name})
    return items
