"""Validation of canonical preference pairs (:mod:`tunegate.data.preference`) with a Great Expectations suite,
the way :mod:`tunegate.data.validation` checks chat records.

``pair_frame`` computes one row of facts per pair (pure, pandas); each rule of ``PREFERENCE_RULES`` becomes
one or more expectations on those columns, run in GE by :func:`tunegate.data.validation.run_expectations`.
The report is a :class:`~tunegate.data.validation.ValidationReport` (``kind="preference"``): the same
markdown, JSON, Data Docs and ``error_message`` as the SFT suite. Severities come from
``preference.validation.rules``; a "drop" rule lists the pairs it removes in ``dropped_ids``.

Unpaired (KTO) records are checked by the rules that apply to one answer: schema, min_records, non_empty,
duplicates, eval_overlap, pii and secrets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunegate.data.checks import PII_PATTERNS, ROLES, SECRET_PATTERNS, _any_match, roles_valid
from tunegate.data.formats import prompt_keys
from tunegate.data.preference import is_unpaired, pair_prompt_keys
from tunegate.data.validation import (
    Offender,
    ValidationReport,
    check_left_after_drops,
    rule_results,
    run_expectations,
)
from tunegate.params import PreferenceValidation

# Rules that have nothing to check on unpaired (KTO) records alone.
PAIR_ONLY_RULES = ("identical", "prompt_mismatch", "length_bias")
# The column whose value an offender's detail shows, per rule.
_DETAIL_COLUMNS = {
    "schema": "schema_problem",
    "non_empty": "empty_parts",
    "prompt_mismatch": "mismatch_detail",
    "duplicates": "duplicate_of",
    "eval_overlap": "eval_where",
    "pii": "pii_kinds",
    "secrets": "secret_kinds",
}


def _content(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


def _schema_problem(record: dict[str, Any]) -> str:
    """What is wrong with the record's shape, or "" (records from the reader are well formed; files
    written by other code may not be)."""
    prompt = record.get("prompt")
    if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        return "prompt is not a list of messages"
    roles = [m.get("role") for m in prompt]
    unknown = sorted({str(r) for r in roles if r not in ROLES})
    if unknown:
        return f"unknown prompt roles {unknown}"
    if any(not isinstance(m.get("content"), str) for m in prompt):
        return "a prompt turn's content is not text"
    answers = ("completion",) if is_unpaired(record) else ("chosen", "rejected")
    for part in answers:
        answer = record.get(part)
        if not isinstance(answer, dict) or answer.get("role") != "assistant" or not isinstance(answer.get("content"), str):
            return f"{part} is not an assistant message with text content"
    if is_unpaired(record) and not isinstance(record.get("label"), bool):
        return "label is not true or false"
    tools = record.get("tools")
    if tools is not None:
        try:
            json.loads(tools)
        except (TypeError, ValueError):
            return "tools is not JSON text (the tool schemas as formats._tools_json writes them)"
    if not roles_valid([*roles, "assistant"]):
        return f"prompt turns {'/'.join(roles) or '(none)'}: need an optional system turn, then user and assistant " \
               "turns in order, ending with a user or tool turn"
    return ""


def _facts(record: dict[str, Any]) -> tuple:
    """The per-record values the frame is computed from, in one pass over the record."""
    prompt = record.get("prompt") if isinstance(record.get("prompt"), list) else []
    unpaired = is_unpaired(record)
    first = _content(record.get("completion") if unpaired else record.get("chosen"))
    second = "" if unpaired else _content(record.get("rejected"))
    users = [_content(m) for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    empty = []
    if not users or min(len(u.strip()) for u in users) == 0:
        empty.append("prompt")
    empty += [part for part, text in ((("completion", first),) if unpaired else (("chosen", first), ("rejected", second)))
              if not text.strip()]
    texts = [_content(m) for m in prompt] + [first, second]
    return (
        None if record.get("id") is None else str(record["id"]),
        unpaired,
        _schema_problem(record),
        " ".join(empty),
        first,
        second,
        str(record.get("label")) if unpaired else "",
        str(record.get("prompt_mismatch") or ""),
        "\n".join(texts),
    )


def pair_frame(records: list[dict[str, Any]], eval_prompts: dict[str, str] | None = None):
    """One row per record with every column the preference suite checks.

    ``eval_prompts``: normalised prompt key -> where it is held out ("preference eval", "SFT eval").
    """
    import pandas as pd

    columns = list(zip(*[_facts(r) for r in records])) or [[] for _ in range(9)]
    ids, unpaired, schema, empty, first, second, labels, mismatch, text = columns
    frame = pd.DataFrame(
        {
            "id": pd.Series(ids, dtype=object),
            "unpaired": pd.Series(unpaired, dtype=bool),
            "schema_problem": pd.Series(schema, dtype=str),
            "empty_parts": pd.Series(empty, dtype=str),
            "mismatch_detail": pd.Series(mismatch, dtype=str),
        }
    )
    frame["schema_ok"] = frame["schema_problem"] == ""
    frame["empty"] = frame["empty_parts"] != ""
    frame["mismatch"] = frame["mismatch_detail"] != ""
    frame["prompt_key"] = pd.Series(pair_prompt_keys(records), dtype=str)
    # Whitespace collapsed, nothing else: a pair that differs in case or punctuation only ("Say this in
    # lowercase", a JSON answer) teaches exactly that difference, and is no identical pair.
    first_key = pd.Series([" ".join(str(t).split()) for t in first], dtype=str)
    second_key = pd.Series([" ".join(str(t).split()) for t in second], dtype=str)
    frame["identical"] = ~frame["unpaired"] & (first_key == second_key)
    # Same prompt, chosen and rejected (or completion and label): the later copies.
    key = frame["prompt_key"] + "\x1f" + first_key + "\x1f" + second_key + "\x1f" + pd.Series(labels, dtype=str)
    frame["duplicate"] = key.duplicated(keep="first")
    first_row = pd.Series(range(len(key)), index=key.index).groupby(key).transform("min")
    frame["duplicate_of"] = [f"same pair as id {ids[i]}" if dup else "" for dup, i in zip(frame["duplicate"], first_row)]
    where = eval_prompts or {}
    frame["eval_where"] = frame["prompt_key"].map(lambda k: f"prompt in the {where[k]} records" if k in where else "")
    frame["in_eval"] = frame["eval_where"] != ""
    texts = pd.Series(text, dtype=str)
    frame["pii_kinds"] = _any_match(texts, PII_PATTERNS)
    frame["pii"] = frame["pii_kinds"] != ""
    frame["secret_kinds"] = _any_match(texts, SECRET_PATTERNS)
    frame["secret"] = frame["secret_kinds"] != ""
    frame["chosen_chars"] = pd.Series([len(t.strip()) for t in first], dtype="int64")
    frame["rejected_chars"] = pd.Series([len(t.strip()) for t in second], dtype="int64")
    # 1.0 where chosen is the longer answer, NaN for unpaired records (out of the share).
    longer = (frame["chosen_chars"] > frame["rejected_chars"]).astype(float)
    frame["chosen_longer"] = longer.where(~frame["unpaired"])
    return frame


def _expectations(params: PreferenceValidation, has_eval: bool, has_pairs: bool) -> list[tuple[str, Any]]:
    """(rule, expectation) pairs for every rule whose severity is not 'off' and that applies."""
    import great_expectations as gx

    e = gx.expectations

    def none_of(column: str):
        return e.ExpectColumnValuesToBeInSet(column=column, value_set=[False])

    rules: dict[str, list[Any]] = {
        "schema": [e.ExpectColumnValuesToNotBeNull(column="id"), e.ExpectColumnValuesToBeInSet(column="schema_ok", value_set=[True])],
        "min_records": [e.ExpectTableRowCountToBeBetween(min_value=params.min_records)],
        "non_empty": [none_of("empty")],
        "identical": [none_of("identical")],
        "prompt_mismatch": [none_of("mismatch")],
        "duplicates": [none_of("duplicate")],
        "eval_overlap": [none_of("in_eval")] if has_eval else [],
        "pii": [none_of("pii")],
        "secrets": [none_of("secret")],
        "length_bias": [e.ExpectColumnMeanToBeBetween(column="chosen_longer", min_value=0, max_value=params.max_length_bias)],
    }
    return [
        (rule, expectation)
        for rule, expectations in rules.items()
        if params.severity(rule) != "off" and (has_pairs or rule not in PAIR_ONLY_RULES)
        for expectation in expectations
    ]


def _eval_prompts(evaluation: list[dict[str, Any]] | None, sft_eval_records: list[dict[str, Any]] | None) -> dict[str, str] | None:
    where: dict[str, str] = {}
    for key in prompt_keys(sft_eval_records) if sft_eval_records else []:
        where[key] = "SFT eval"
    for key in pair_prompt_keys(evaluation) if evaluation else []:
        where[key] = "preference eval"
    return where if (evaluation or sft_eval_records) else None


def eval_preference_validation(params: PreferenceValidation) -> PreferenceValidation:
    """The held-out pairs are checked for shape and hygiene, not for the training set's size or length balance."""
    return params.model_copy(update={"rules": {**params.rules, "min_records": "off", "length_bias": "off"}})


def validate_preference(
    params_validation: PreferenceValidation,
    train: list[dict[str, Any]],
    evaluation: list[dict[str, Any]] | None = None,
    sft_eval_records: list[dict[str, Any]] | None = None,
    docs_dir: Path | None = None,
    split: str = "train",
) -> ValidationReport:
    """Check the pairs ``train`` against every preference rule; ``evaluation`` (held-out pairs) and
    ``sft_eval_records`` (canonical chat records) enable ``eval_overlap``.

    To check the held-out pairs themselves: ``validate_preference(eval_preference_validation(v), pairs,
    split="eval")``.
    """
    params = params_validation
    eval_prompts = _eval_prompts(evaluation, sft_eval_records)
    frame = pair_frame(train, eval_prompts)
    n_pairs = int((~frame["unpaired"]).sum())
    named = _expectations(params, eval_prompts is not None, n_pairs > 0)
    result, docs_index = run_expectations(frame, named, f"tunegate_preference_{split}", docs_dir)

    def offender(idx: int, rule: str) -> Offender:
        record = train[idx]
        source = record.get("source") or {}
        column = _DETAIL_COLUMNS.get(rule)
        detail = str(frame.at[idx, column]) if column else ""
        if rule == "schema" and not detail:
            detail = "no id"
        elif rule == "non_empty":
            detail = f"empty: {detail}"
        elif rule in ("pii", "secrets"):
            detail = f"{column.replace('_', ' ')}: {detail}"
        return Offender(str(source.get("file", "?")), int(source.get("index", idx)), str(record.get("id")), detail)

    def observed(rule: str, expectation: Any, text: str) -> str:
        if rule == "length_bias":
            share = frame["chosen_longer"].mean()
            return (f"chosen longer than rejected in {share:.1%} of {n_pairs} pairs "
                    f"(max {params.max_length_bias:.0%}: DPO would learn length)")
        return text

    merged, dropped = rule_results(result, named, params.severity, offender, observed)
    check_left_after_drops(merged, dropped, len(train), params.min_records, params.severity("min_records"))
    rules = list(merged.values())
    return ValidationReport(
        split=split,
        passed=not any(r.severity == "error" and not r.passed for r in rules),
        n_records=len(train),
        rules=rules,
        dropped_ids=[str(train[i].get("id")) for i in sorted(dropped)],
        docs_index=docs_index,
        kind="preference",
    )
