"""Validation of canonical chat records: parsing, then a Great Expectations suite.

Two layers, both of which point back at the input (file, record index, id):
1. ``load_records`` parses JSONL and checks the record shape; a record that
   cannot be read fails with a :class:`DataError` naming file, line and rule.
2. ``validate_records`` flattens records into one row each and runs a GE 1.x
   suite (schema, non-empty turns, role order, unique ids, row count).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """Input data that breaks a rule; the message names file, record and rule."""


@dataclass(frozen=True)
class Offender:
    file: str
    record_index: int
    record_id: str


@dataclass(frozen=True)
class RuleResult:
    rule: str
    expectation: str
    passed: bool
    unexpected_count: int
    offenders: list[Offender] = field(default_factory=list)

    def describe(self) -> str:
        if self.passed:
            return f"PASS {self.rule}"
        where = "; ".join(f"{o.file} record {o.record_index} (id {o.record_id})" for o in self.offenders[:5])
        return f"FAIL {self.rule}: {self.unexpected_count} record(s) break it" + (f": {where}" if where else "")


@dataclass(frozen=True)
class ValidationReport:
    passed: bool
    n_records: int
    rules: list[RuleResult]

    def failures(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "n_records": self.n_records, "rules": [asdict(r) for r in self.rules]}

    def to_markdown(self, title: str = "Data validation") -> str:
        lines = [f"## {title}", "", f"**{'passed' if self.passed else 'FAILED'}** on {self.n_records} records", ""]
        lines += ["| rule | result | unexpected |", "|---|---|---|"]
        for r in self.rules:
            lines.append(f"| {r.rule} | {'pass' if r.passed else '**fail**'} | {r.unexpected_count} |")
        for r in self.failures():
            lines += ["", f"### {r.rule}", ""]
            lines += [f"- `{o.file}` record {o.record_index} (id `{o.record_id}`)" for o in r.offenders[:5]]
        return "\n".join(lines) + "\n"


def _shape_error(path: Path, index: int, rule: str) -> DataError:
    return DataError(f"{path}: record {index}: {rule}")


def load_records(path: Path) -> list[dict[str, Any]]:
    """Read canonical JSONL records, attaching ``_source`` = (file, index) to each."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    records = []
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n")
        raise _shape_error(path, line, f"not valid UTF-8 ({error.reason} at byte {error.start})") from None
    for index, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise _shape_error(path, index, f"not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise _shape_error(path, index, "must be a JSON object")
        messages = record.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _shape_error(path, index, "'messages' must be a list of {role, content} objects")
        for turn, message in enumerate(messages):
            if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                raise _shape_error(path, index, f"message {turn}: 'role' and 'content' must be strings")
        record.setdefault("id", f"{path.name}:{index}")
        record["_source"] = {"file": str(path), "index": index}
        records.append(record)
    return records


def roles_valid(roles: list[str]) -> bool:
    """Optional system first, then user/assistant alternating, ending with assistant."""
    if roles and roles[0] == "system":
        roles = roles[1:]
    if len(roles) < 2 or len(roles) % 2:
        return False
    return all(role == ("user" if i % 2 == 0 else "assistant") for i, role in enumerate(roles))


def record_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per record: the columns the expectation suite checks."""
    rows = []
    for record in records:
        messages = record["messages"]
        roles = [m["role"] for m in messages]

        def min_chars(role: str, messages=messages) -> int:
            sizes = [len(m["content"].strip()) for m in messages if m["role"] == role]
            return min(sizes) if sizes else 0

        rows.append(
            {
                "id": str(record["id"]),
                "n_messages": len(messages),
                "roles_valid": roles_valid(roles),
                "unknown_roles": sum(r not in ROLES for r in roles),
                "min_user_chars": min_chars("user"),
                "min_assistant_chars": min_chars("assistant"),
            }
        )
    return rows


def _expectations(min_records: int) -> list[tuple[str, Any]]:
    import great_expectations as gx

    e = gx.expectations
    return [
        ("schema: id present", e.ExpectColumnValuesToNotBeNull(column="id")),
        ("unique ids", e.ExpectColumnValuesToBeUnique(column="id")),
        ("at least one user and one assistant turn", e.ExpectColumnValuesToBeBetween(column="n_messages", min_value=2)),
        ("only system/user/assistant roles", e.ExpectColumnValuesToBeInSet(column="unknown_roles", value_set=[0])),
        ("role order: [system] user/assistant alternating, ending with assistant",
         e.ExpectColumnValuesToBeInSet(column="roles_valid", value_set=[True])),
        ("non-empty user turns", e.ExpectColumnValuesToBeBetween(column="min_user_chars", min_value=1)),
        ("non-empty assistant turns", e.ExpectColumnValuesToBeBetween(column="min_assistant_chars", min_value=1)),
        (f"at least {min_records} records", e.ExpectTableRowCountToBeBetween(min_value=min_records)),
    ]


def validate_records(records: list[dict[str, Any]], min_records: int, suite_name: str = "canonical_chat") -> ValidationReport:
    """Run the Great Expectations suite over ``records`` (an ephemeral GE context)."""
    import logging

    import great_expectations as gx
    import pandas as pd

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    frame = pd.DataFrame(record_rows(records), columns=[
        "id", "n_messages", "roles_valid", "unknown_roles", "min_user_chars", "min_assistant_chars"])
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    batch_definition = (
        context.data_sources.add_pandas("tunegate")
        .add_dataframe_asset("records")
        .add_batch_definition_whole_dataframe("all")
    )
    named = _expectations(min_records)
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for _, expectation in named:
        suite.add_expectation(expectation)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    by_type: dict[str, Any] = {}
    for item in result.results:
        config = item.expectation_config
        by_type[(config.type, config.kwargs.get("column"))] = item
    rules = []
    for rule, expectation in named:
        item = by_type[(expectation.expectation_type, getattr(expectation, "column", None))]
        details = item.result or {}
        indexes = details.get("unexpected_index_list") or []
        offenders = []
        for idx in indexes[:5]:
            idx = idx if isinstance(idx, int) else idx.get("index", 0) if isinstance(idx, dict) else int(idx)
            source = records[idx].get("_source", {})
            offenders.append(Offender(source.get("file", "?"), int(source.get("index", idx)), str(records[idx]["id"])))
        count = int(details.get("unexpected_count") or (0 if item.success else 1))
        rules.append(RuleResult(rule, expectation.expectation_type, bool(item.success), count, offenders))
    return ValidationReport(passed=bool(result.success), n_records=len(records), rules=rules)
