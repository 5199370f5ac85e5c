"""The expectation suite: each rule on a small fixture, with file, record and rule in the result."""

import json
from pathlib import Path

import pytest

from tunegate.data.checks import luhn_valid, roles_valid
from tunegate.data.sources import SourceSpec, load_source
from tunegate.data.validation import error_message, validate_dataset
from tunegate.params import ValidationParams


def msgs(prompt, answer, system=None):
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def load(tmp_path: Path, rows: list[dict], name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, _ = load_source(SourceSpec(path=path, name=path.stem))
    return path, records


def rows(n=6):
    return [{"messages": msgs(f"Question number {i}?", f"Answer {i}.")} for i in range(n)]


def check(records, eval_records=None, **overrides):
    params = ValidationParams(**overrides)
    return validate_dataset(records, params, max_length=64, token_counts=None, eval_records=eval_records)


def failed(report):
    return {r.rule: r for r in report.rules if not r.passed}


def test_clean_records_pass(tmp_path):
    _, records = load(tmp_path, rows())
    report = check(records)
    assert report.passed and not failed(report)
    assert {r.rule for r in report.rules} >= {"schema", "non_empty", "role_order", "duplicates", "pii", "secrets"}


def test_empty_response_names_file_record_rule(tmp_path):
    data = rows()
    data[3]["messages"][1]["content"] = "  "
    path, records = load(tmp_path, data)
    report = check(records)
    rule = failed(report)["non_empty"]
    offender = rule.offenders[0]
    assert (offender.file, offender.record_index) == (str(path), 3)
    assert not report.passed
    assert f"{path} record 3" in error_message([report])


def test_role_order(tmp_path):
    data = rows()
    data[1]["messages"] = list(reversed(data[1]["messages"]))
    _, records = load(tmp_path, data)
    assert failed(check(records))["role_order"].offenders[0].record_index == 1


def test_duplicates_above_threshold_only(tmp_path):
    data = rows(10) + [rows(10)[0]]
    _, records = load(tmp_path, data)
    assert failed(check(records))["duplicates"].offenders[0].record_index == 10
    assert "duplicates" not in failed(check(records, max_duplicate_rate=0.2))


def test_near_duplicates_and_conflicts(tmp_path):
    data = rows(4) + [{"messages": msgs("question NUMBER 1", "answer 1")}, {"messages": msgs("Question number 2?", "Something else.")}]
    _, records = load(tmp_path, data)
    bad = failed(check(records, max_near_duplicate_rate=0.0))
    assert bad["near_duplicates"].offenders[0].record_index == 4
    assert {o.record_index for o in bad["conflicts"].offenders} == {2, 5}


def test_train_eval_overlap(tmp_path):
    _, train = load(tmp_path, rows(), "train.jsonl")
    _, evaluation = load(tmp_path, [{"messages": msgs("question number 2", "x")}], "eval.jsonl")
    report = check(train, eval_records=evaluation)
    assert failed(report)["train_eval_overlap"].offenders[0].record_index == 2
    assert "train_eval_overlap" not in {r.rule for r in check(train).rules}


@pytest.mark.parametrize(
    "text, rule, kind",
    [
        ("Write to jane.doe@example.com today", "pii", "email"),
        ("Call me at 415-555-0132 please", "pii", "phone"),
        ("My card is 4111 1111 1111 1111", "pii", "card_number"),
        ("key AKIAIOSFODNN7EXAMPLE here", "secrets", "aws_access_key"),
        ("token sk-abcdefghijklmnopqrstuvwxyz123456", "secrets", "openai_key"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", "secrets", "private_key"),
    ],
)
def test_pii_and_secrets(tmp_path, text, rule, kind):
    data = rows()
    data[2]["messages"][1]["content"] = text
    _, records = load(tmp_path, data)
    result = failed(check(records))[rule]
    assert result.offenders[0].record_index == 2 and kind in result.offenders[0].detail


def test_card_like_numbers_need_luhn(tmp_path):
    assert luhn_valid("4111111111111111") and not luhn_valid("1234567812345678")
    data = rows()
    data[0]["messages"][1]["content"] = "Order 1234 5678 1234 5678 shipped"
    _, records = load(tmp_path, data)
    assert "pii" not in failed(check(records))


def test_placeholders_and_control_chars(tmp_path):
    data = rows()
    data[1]["messages"][1]["content"] = "I am {{name}}, made by {{ author }}."
    data[4]["messages"][0]["content"] = "bell\x07 in the prompt"
    _, records = load(tmp_path, data)
    bad = failed(check(records))
    assert bad["placeholders"].offenders[0].record_index == 1
    assert bad["control_chars"].offenders[0].record_index == 4


def test_policy_coverage_and_refusal_share(tmp_path):
    data = rows(8) + [{"messages": msgs("How do I hurt someone?", "I'm sorry, but I cannot help with that.")}]
    _, records = load(tmp_path, data)
    coverage = [{"name": "violence_refused", "pattern": r"\bhurt\b", "min_examples": 2}]
    report = check(records, coverage=coverage, refusal_share=(0.2, 1.0))
    bad = failed(report)
    assert "violence_refused" in bad["policy_coverage"].observed and "need 2" in bad["policy_coverage"].observed
    assert bad["refusal_share"].severity == "warning"
    assert report.refusal_share == pytest.approx(1 / 9)
    assert not report.passed  # coverage is an error by default
    assert check(records, coverage=[{"name": "violence_refused", "pattern": "hurt", "min_examples": 1}]).passed


def test_severity_warning_and_drop(tmp_path):
    data = rows()
    data[2]["messages"][1]["content"] = "mail me: a@b.co"
    _, records = load(tmp_path, data)
    warned = check(records, rules={"pii": "warning"})
    assert warned.passed and warned.warnings()[0].rule == "pii"
    dropped = check(records, rules={"pii": "drop"})
    assert dropped.passed and dropped.dropped_ids == [records[2]["id"]]
    assert "pii" not in {r.rule for r in check(records, rules={"pii": "off"}).rules}


def test_length_rules_use_token_counts(tmp_path):
    _, records = load(tmp_path, rows(3))
    params = ValidationParams()
    # Default: over-long records are dropped and named, never trained cut; 8x over the limit is an error.
    report = validate_dataset(records, params, max_length=10, token_counts=([5, 12, 30], [3, 4, 10]))
    bad = failed(report)
    assert [o.record_index for o in bad["max_length"].offenders] == [1, 2]
    assert bad["max_length"].severity == "drop" and report.passed
    assert report.dropped_ids == [records[1]["id"], records[2]["id"]]
    assert "response_truncated" not in bad  # its prompt-filling record is dropped as over-long
    assert "DROP max_length: 2 record(s)" in bad["max_length"].describe()

    # Truncation on request: max_length a warning, and then a prompt that fills the limit is an error.
    kept = validate_dataset(records, ValidationParams(rules={"max_length": "warning"}), max_length=10,
                            token_counts=([5, 12, 30], [3, 4, 10]))
    bad = failed(kept)
    assert bad["max_length"].severity == "warning" and not kept.dropped_ids
    assert [o.record_index for o in bad["response_truncated"].offenders] == [2] and not kept.passed

    # A record over 8x the limit is a broken file, whatever max_length does.
    runaway = validate_dataset(records, params, max_length=10, token_counts=([5, 12, 81], [3, 4, 10]))
    bad = failed(runaway)
    assert not runaway.passed and [o.record_index for o in bad["runaway_length"].offenders] == [2]
    assert "n tokens: 81" in bad["runaway_length"].describe()
    assert not failed(validate_dataset(records, params, max_length=10, token_counts=([5, 12, 80], [3, 4, 10]))).get("runaway_length")


def test_unknown_rule_in_params():
    with pytest.raises(ValueError, match="unknown rule"):
        ValidationParams(rules={"nope": "error"})
    with pytest.raises(ValueError, match="cannot 'drop'"):
        ValidationParams(rules={"min_records": "drop"})


def test_data_docs_are_written(tmp_path):
    _, records = load(tmp_path, rows())
    report = validate_dataset(records, ValidationParams(), max_length=64, docs_dir=tmp_path / "docs")
    assert report.docs_index and Path(report.docs_index).is_file()
    assert "<html" in Path(report.docs_index).read_text().lower()


@pytest.mark.parametrize(
    "roles, ok",
    [
        (["user", "assistant"], True),
        (["system", "user", "assistant"], True),
        (["user", "assistant", "user", "assistant"], True),
        (["user", "assistant", "tool", "assistant"], True),
        (["user", "assistant", "tool", "tool", "assistant", "user", "assistant"], True),
        (["user"], False),
        (["assistant", "user"], False),
        (["user", "user", "assistant"], False),
        (["user", "assistant", "user"], False),
        (["user", "assistant", "tool"], False),
        (["user", "tool", "assistant"], False),
    ],
)
def test_role_order_grammar(roles, ok):
    assert roles_valid(roles) is ok
