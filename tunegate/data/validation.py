"""Validation of canonical chat records with a Great Expectations 1.x suite built from params.

Two layers, both of which point back at the input (file, record index, id):
1. reading (``tunegate.data.sources``): a record that cannot be parsed or converted
   fails with a :class:`DataError` naming file, record and rule;
2. the suite: ``record_frame`` computes one row of facts per record and each
   rule becomes one or more expectations on those columns. A rule's severity
   (params ``validation.rules``) decides whether a failure stops the run
   (error), is reported (warning), removes the offending records (drop) or is skipped (off).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunegate.params import ValidationParams
from tunegate.data.sources import DataError  # noqa: F401  (re-exported: validation errors and read errors are one kind)

MAX_OFFENDERS = 5
# What the token-limit rules measure, with the limit they used (validation.max_length, else train.max_length).
LIMIT_RULES = {
    "max_length": "limit {limit} tokens with the chat template, from validation.max_length or else train.max_length",
    "runaway_length": "over 8x the {limit}-token limit (validation.max_length or else train.max_length): most "
    "likely a broken record; validation.rules.runaway_length: drop where such records are real",
    "response_truncated": "the prompt must stay under the {limit}-token limit (validation.max_length or else "
    "train.max_length) to leave a response token to learn",
}


@dataclass(frozen=True)
class Offender:
    file: str
    record_index: int
    record_id: str
    detail: str = ""


@dataclass(frozen=True)
class RuleResult:
    rule: str
    severity: str
    passed: bool
    unexpected_count: int
    observed: str = ""
    offenders: list[Offender] = field(default_factory=list)

    def describe(self) -> str:
        status = "PASS" if self.passed else ("DROP" if self.severity == "drop" else self.severity.upper())
        if self.passed:
            return f"PASS {self.rule}" + (f" ({self.observed})" if self.observed else "")
        where = "; ".join(
            f"{o.file} record {o.record_index} (id {o.record_id}{', ' + o.detail if o.detail else ''})"
            for o in self.offenders[:MAX_OFFENDERS]
        )
        count = f"{self.unexpected_count} record(s) break it" if self.unexpected_count else self.observed
        if self.rule in LIMIT_RULES and self.unexpected_count and self.observed:
            count += f" ({self.observed})"
        return f"{status} {self.rule}: {count}" + (f": {where}" if where else "")


@dataclass
class ValidationReport:
    split: str
    passed: bool
    n_records: int
    rules: list[RuleResult]
    dropped_ids: list[str] = field(default_factory=list)
    refusal_share: float = 0.0
    docs_index: str | None = None
    kind: str = "chat"  # chat: SFT records; preference: chosen/rejected pairs (tunegate.data.preference_validation)

    def failures(self) -> list[RuleResult]:
        """Failed rules of severity error: the ones that stop a run."""
        return [r for r in self.rules if not r.passed and r.severity == "error"]

    def warnings(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed and r.severity != "error"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rules"] = [asdict(r) for r in self.rules]
        return data

    def to_markdown(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        preference = self.kind == "preference"
        lines = [
            f"## {'Preference data' if preference else 'Data'} validation: {self.split}",
            "",
            f"**{verdict}** on {self.n_records} records"
            + ("" if preference else f"; refusal share {self.refusal_share:.1%}")
            + (f"; {len(self.dropped_ids)} record(s) dropped" if self.dropped_ids else ""),
            "",
            "| rule | severity | result | unexpected | observed |",
            "|---|---|---|---:|---|",
        ]
        for r in self.rules:
            result = "pass" if r.passed else ("**fail**" if r.severity == "error" else r.severity)
            lines.append(f"| {r.rule} | {r.severity} | {result} | {r.unexpected_count} | {r.observed} |")
        for r in [r for r in self.rules if not r.passed]:
            lines += ["", f"### {r.rule} ({r.severity})", ""]
            if not r.offenders:
                lines.append(f"- {r.observed}")
            lines += [
                f"- `{o.file}` record {o.record_index} (id `{o.record_id}`){': ' + o.detail if o.detail else ''}"
                for o in r.offenders[:MAX_OFFENDERS]
            ]
        return "\n".join(lines) + "\n"


def _expectations(params: ValidationParams, columns: list[str], has_eval: bool) -> list[tuple[str, Any]]:
    """(rule, expectation) pairs for every rule whose severity is not 'off'."""
    import great_expectations as gx

    e = gx.expectations

    def in_set(column: str, value: Any, mostly: float = 1.0):
        return e.ExpectColumnValuesToBeInSet(column=column, value_set=[value], mostly=max(mostly, 1e-9))

    rules: dict[str, list[Any]] = {
        "schema": [e.ExpectColumnValuesToNotBeNull(column="id"), in_set("unknown_roles", 0)],
        "unique_ids": [e.ExpectColumnValuesToBeUnique(column="id")],
        "min_records": [e.ExpectTableRowCountToBeBetween(min_value=params.min_records)],
        "non_empty": [
            e.ExpectColumnValuesToBeBetween(column="min_user_chars", min_value=1),
            e.ExpectColumnValuesToBeBetween(column="min_assistant_chars", min_value=1),
        ],
        "role_order": [in_set("roles_valid", True)],
        "max_length": [in_set("too_long", False)],
        "runaway_length": [in_set("runaway", False)],
        "response_truncated": [in_set("truncated_away", False)],
        "duplicates": [in_set("dup_exact", False, 1 - params.max_duplicate_rate)],
        "near_duplicates": [in_set("dup_norm", False, 1 - params.max_near_duplicate_rate)],
        "conflicts": [in_set("conflict", False, 1 - params.max_conflict_rate)],
        "train_eval_overlap": [in_set("in_eval", False)] if has_eval else [],
        "policy_coverage": [
            e.ExpectColumnSumToBeBetween(column=f"cov_{rule.name}", min_value=rule.min_examples)
            for rule in params.coverage
            if f"cov_{rule.name}" in columns
        ],
        "pii": [in_set("pii", False)],
        "secrets": [in_set("secret", False)],
        "placeholders": [in_set("placeholder", False)],
        "control_chars": [in_set("control_chars", False)],
        "refusal_share": [
            e.ExpectColumnMeanToBeBetween(
                column="is_refusal", min_value=params.refusal_share[0], max_value=params.refusal_share[1]
            )
        ],
    }
    return [
        (rule, expectation)
        for rule, expectations in rules.items()
        if params.severity(rule) != "off"
        for expectation in expectations
    ]


_DETAIL_COLUMNS = {"pii": "pii_kinds", "secrets": "secret_kinds", "max_length": "n_tokens", "runaway_length": "n_tokens", "response_truncated": "prompt_tokens"}


def _offender(records: list[dict[str, Any]], frame, idx: int, rule: str) -> Offender:
    source = records[idx].get("source") or {}
    detail = ""
    column = _DETAIL_COLUMNS.get(rule)
    if column:
        value = frame.at[idx, column]
        detail = f"{column.replace('_', ' ')}: {value}"
    return Offender(str(source.get("file", "?")), int(source.get("index", idx)), str(records[idx].get("id")), detail)


def _index_list(details: dict[str, Any]) -> list[int]:
    out = []
    for item in details.get("unexpected_index_list") or []:
        if isinstance(item, dict):
            item = item.get("index", next(iter(item.values()), 0))
        out.append(int(item))
    return out


def run_suite(frame, params: ValidationParams, has_eval: bool, suite_name: str, docs_dir: Path | None):
    """Run the suite over ``frame``; returns (GE result, [(rule, expectation)], docs index or None)."""
    named = _expectations(params, list(frame.columns), has_eval)
    result, docs_index = run_expectations(frame, named, suite_name, docs_dir)
    return result, named, docs_index


def run_expectations(frame, named: list[tuple[str, Any]], suite_name: str, docs_dir: Path | None):
    """Run the expectations of ``named`` ([(rule, expectation)]) over ``frame`` in an ephemeral GE context,
    with Data Docs under ``docs_dir`` when given; returns (GE result, docs index or None)."""
    import logging

    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    batch_definition = (
        context.data_sources.add_pandas("tunegate")
        .add_dataframe_asset(suite_name)
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for _, expectation in named:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch_definition, suite=suite, name=f"{suite_name}_validation")
    )
    docs_index = None
    actions = []
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        context.add_data_docs_site(
            site_name="tunegate",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["tunegate"]))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite_name}_checkpoint",
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "COMPLETE"},
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    result = next(iter(outcome.run_results.values()))
    if docs_dir is not None and (docs_dir / "index.html").is_file():
        docs_index = str(docs_dir / "index.html")
    return result, docs_index


def rule_results(
    result,
    named: list[tuple[str, Any]],
    severity: Callable[[str], str],
    offender: Callable[[int, str], Offender],
    observed: Callable[[str, Any, str], str],
) -> tuple[dict[str, RuleResult], set[int]]:
    """One :class:`RuleResult` per rule from a GE result (a rule of several expectations fails if any does,
    its counts added), and the row indexes its "drop" rules remove.

    ``offender(row, rule)`` names a breaking row; ``observed(rule, expectation, text)`` words what GE
    observed (``text``: its observed value, formatted)."""
    by_id = {item.expectation_config.id: item for item in result.results}
    merged: dict[str, RuleResult] = {}
    dropped: set[int] = set()
    for rule, expectation in named:
        item = by_id[expectation.id]
        details = item.result or {}
        indexes = _index_list(details)
        level = severity(rule)
        if level == "drop" and not item.success:
            dropped.update(indexes)
        value = details.get("observed_value")
        observed_text = observed(rule, expectation, "" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value)))
        count = int(details.get("unexpected_count") or 0)
        offenders = [offender(idx, rule) for idx in indexes[:MAX_OFFENDERS]]
        previous = merged.get(rule)
        if previous is None:
            merged[rule] = RuleResult(rule, level, bool(item.success), count, observed_text, offenders)
        else:
            merged[rule] = RuleResult(
                rule,
                level,
                previous.passed and bool(item.success),
                previous.unexpected_count + count,
                "; ".join(x for x in (previous.observed, observed_text) if x),
                (previous.offenders + offenders)[:MAX_OFFENDERS],
            )
    return merged, dropped


def check_left_after_drops(merged: dict[str, RuleResult], dropped: set[int], n_records: int, min_records: int,
                           severity: str) -> None:
    """Drops must not empty the split: a limit that removes every record is a setting to fix, not a pass."""
    left = n_records - len(dropped)
    if dropped and "min_records" in merged and left < min_records:
        merged["min_records"] = RuleResult(
            "min_records", severity, False, 0,
            f"{left} record(s) left after {len(dropped)} dropped by policy (need {min_records}; see the drop rules)",
        )


def validate_dataset(
    records: list[dict[str, Any]],
    params: ValidationParams,
    *,
    max_length: int,
    token_counts: tuple[list[int], list[int]] | None = None,
    eval_records: list[dict[str, Any]] | None = None,
    split: str = "train",
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Check ``records`` against every rule in params; ``eval_records`` enables the overlap rule."""
    from tunegate.data.checks import record_frame
    from tunegate.data.formats import prompt_keys

    eval_keys = set(prompt_keys(eval_records)) if eval_records else None
    frame = record_frame(
        records,
        token_counts=token_counts,
        max_length=max_length,
        refusal_patterns=params.all_refusal_patterns(),
        coverage=params.coverage,
        eval_prompt_keys=eval_keys,
    )
    if params.severity("max_length") == "drop":
        # A prompt that fills the limit makes its record over-long too: max_length drops it (and names it), so
        # response_truncated has nothing left to stop on.
        frame["truncated_away"] = frame["truncated_away"] & ~frame["too_long"]
    result, named, docs_index = run_suite(frame, params, eval_keys is not None, f"tunegate_{split}", docs_dir)

    def observed(rule: str, expectation: Any, text: str) -> str:
        if rule == "policy_coverage":
            return f"{expectation.column[4:]}: {text} (need {int(expectation.min_value)})"
        if rule in LIMIT_RULES:
            return LIMIT_RULES[rule].format(limit=max_length)
        return text

    merged, dropped = rule_results(
        result, named, params.severity, lambda idx, rule: _offender(records, frame, idx, rule), observed
    )
    check_left_after_drops(merged, dropped, len(records), params.min_records, params.severity("min_records"))
    rules = list(merged.values())
    passed = not any(r.severity == "error" and not r.passed for r in rules)
    return ValidationReport(
        split=split,
        passed=passed,
        n_records=len(records),
        rules=rules,
        dropped_ids=[str(records[i].get("id")) for i in sorted(dropped)],
        refusal_share=float(frame["is_refusal"].mean()) if len(frame) else 0.0,
        docs_index=docs_index,
    )


def error_message(reports: list[ValidationReport]) -> str:
    """The CLI's and the flow's message for failed validation: rule, file and record of each failure."""
    lines = ["data validation failed:"]
    for report in reports:
        lines += [f"  {report.split}: {rule.describe()}" for rule in report.failures()]
    return "\n".join(lines)


def save_report(reports: list[ValidationReport], out_dir: Path) -> tuple[Path, Path]:
    """Write report.md and report.json for a set of split reports; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "report.md"
    markdown.write_text("\n".join(r.to_markdown() for r in reports), encoding="utf-8")
    data = out_dir / "report.json"
    data.write_text(json.dumps([r.to_dict() for r in reports], indent=2, default=str), encoding="utf-8")
    return markdown, data
