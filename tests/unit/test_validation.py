import json

import pytest

from tunegate.validation import DataError, load_records, roles_valid, validate_records


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def good(i):
    return {"id": f"r{i}", "messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "answer"}]}


def test_valid_records_pass(tmp_path):
    records = load_records(write_jsonl(tmp_path / "d.jsonl", [good(i) for i in range(5)]))
    report = validate_records(records, min_records=5)
    assert report.passed and report.n_records == 5
    assert all(rule.passed for rule in report.rules)


def test_failures_name_file_record_and_rule(tmp_path):
    rows = [good(i) for i in range(4)]
    rows[1]["messages"][1]["content"] = "   "
    rows[2]["messages"] = [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]
    rows[3]["id"] = "r0"
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    report = validate_records(load_records(path), min_records=10)
    assert not report.passed
    failed = {rule.rule: rule for rule in report.failures()}
    assert "non-empty assistant turns" in failed
    offender = failed["non-empty assistant turns"].offenders[0]
    assert (offender.file, offender.record_index, offender.record_id) == (str(path), 1, "r1")
    assert any(name.startswith("role order") for name in failed)
    assert "unique ids" in failed
    assert "at least 10 records" in failed
    assert "bad.jsonl record 1 (id r1)" in failed["non-empty assistant turns"].describe()
    markdown = report.to_markdown()
    assert "**fail**" in markdown and "bad.jsonl" in markdown


@pytest.mark.parametrize(
    "content, rule",
    [
        (b'{"messages": [}\n', "not valid JSON"),
        (b"\xff\xfe\n", "not valid UTF-8"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"messages": "hello"}\n', "'messages' must be a list"),
        (b'{"messages": [{"role": "user", "content": 5}]}\n', "must be strings"),
    ],
)
def test_unparseable_records_fail_with_file_record_rule(tmp_path, content, rule):
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b'{"messages": []}\n' + content)
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(path) in str(err.value) and "record 1" in str(err.value) and rule in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_records(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    "roles, ok",
    [
        (["user", "assistant"], True),
        (["system", "user", "assistant"], True),
        (["user", "assistant", "user", "assistant"], True),
        (["user"], False),
        (["assistant", "user"], False),
        (["user", "user", "assistant"], False),
        (["user", "assistant", "user"], False),
    ],
)
def test_role_order(roles, ok):
    assert roles_valid(roles) is ok
