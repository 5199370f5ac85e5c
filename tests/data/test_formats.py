"""Every format in ../shared/data/instruction is detected and converted; conversions checked by hand."""

import json
from pathlib import Path

import pytest

from tunegate.data.checks import roles_valid
from tunegate.data.formats import FormatError, convert_record, detect_format
from tunegate.data.sources import SourceSpec, load_source, mix, split_eval
from tunegate.data.validation import validate_dataset
from tunegate.params import ValidationParams

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "instruction"

EXPECTED = {
    # file: (format, records read, canonical records kept)
    "alpaca_en_demo.json": ("alpaca", 999, 999),
    "identity.json": ("alpaca", 91, 91),
    "glaive_toolcall_en_demo.json": ("sharegpt", 300, 300),
    "kto_en_demo.json": ("openai", 300, 150),  # label false dropped
    "self_instruct_user_oriented.jsonl": ("self_instruct", 252, 252),
}


def _load(name: str, **kw):
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"{path} missing: the tests need ../shared beside the repo")
    return load_source(SourceSpec(path=path, name=path.stem, **kw))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_files_detected_and_counted(name):
    fmt, read, kept = EXPECTED[name]
    records, counts = _load(name)
    assert counts["read"] == read and len(records) == kept
    assert {r["source"]["format"] for r in records} == {fmt}
    assert all(roles_valid([m["role"] for m in r["messages"]]) for r in records)
    assert all(r["source"]["file"].endswith(name) for r in records)
    assert len({r["id"] for r in records}) == kept


def test_alpaca_conversion():
    records, _ = _load("alpaca_en_demo.json")
    raw = json.loads((SHARED / "alpaca_en_demo.json").read_text())
    with_input = next(i for i, r in enumerate(raw) if r["input"])
    record = records[with_input]
    assert record["messages"][0] == {"role": "user", "content": raw[with_input]["instruction"] + "\n\n" + raw[with_input]["input"]}
    assert record["messages"][1] == {"role": "assistant", "content": raw[with_input]["output"]}
    assert records[0]["source"]["index"] == 0 and records[0]["family"] == "alpaca_en_demo"


def test_sharegpt_tool_call_turns_survive():
    records, _ = _load("glaive_toolcall_en_demo.json")
    raw = json.loads((SHARED / "glaive_toolcall_en_demo.json").read_text())
    index = next(i for i, r in enumerate(raw) if any(t["from"] == "function_call" for t in r["conversations"]))
    record = records[index]
    roles = [m["role"] for m in record["messages"]]
    assert "tool" in roles
    call = next(m for m in record["messages"] if m.get("tool_calls"))
    source_call = next(t for t in raw[index]["conversations"] if t["from"] == "function_call")
    assert call["role"] == "assistant" and call["content"] == source_call["value"]
    parsed = json.loads(source_call["value"])
    assert call["tool_calls"] == [{"type": "function", "function": {"name": parsed["name"], "arguments": parsed["arguments"]}}]
    observation = next(t for t in raw[index]["conversations"] if t["from"] == "observation")
    assert {"role": "tool", "content": observation["value"]} in record["messages"]
    assert json.loads(record["tools"]) == json.loads(raw[index]["tools"])
    assert len(record["messages"]) == len(raw[index]["conversations"])


def test_openai_messages_and_kto_labels():
    records, counts = _load("kto_en_demo.json")
    assert counts["dropped_label_false"] == 150 and all(r["label"] is True for r in records)
    kept_all, _ = _load("kto_en_demo.json", keep_label_false=True)
    assert len(kept_all) == 300


def test_self_instruct_instances_become_records():
    records, _ = _load("self_instruct_user_oriented.jsonl")
    first = json.loads((SHARED / "self_instruct_user_oriented.jsonl").read_text().splitlines()[0])
    instance = first["instances"][0]
    expected_user = first["instruction"] + ("\n\n" + instance["input"] if instance["input"].strip() else "")
    assert records[0]["messages"] == [{"role": "user", "content": expected_user}, {"role": "assistant", "content": instance["output"]}]


def test_identity_is_flagged_for_placeholders():
    records, _ = _load("identity.json")
    report = validate_dataset(records, ValidationParams(), max_length=512)
    rule = next(r for r in report.rules if r.rule == "placeholders")
    assert not rule.passed and rule.unexpected_count >= 80 and not report.passed
    assert rule.offenders[0].file.endswith("identity.json")


def test_openai_content_parts_and_system():
    record = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hi."},
    ]}
    out = convert_record(record, source_name="s", file="f.jsonl", index=0)[0]
    assert out["messages"][1] == {"role": "user", "content": "Hello there"}
    with pytest.raises(FormatError, match="image_url"):
        convert_record({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, source_name="s", file="f", index=0)


def test_prompt_completion_and_column_mapping():
    out = convert_record({"prompt": "2+2?", "completion": "4"}, source_name="pc", file="f", index=3)[0]
    assert out["messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert out["source"] == {"file": "f", "index": 3, "format": "prompt_completion"}
    mapped = convert_record({"question": "Why?", "answer": "Because."}, source_name="qa", file="f", index=0,
                            columns={"instruction": "question", "output": "answer"})[0]
    assert mapped["messages"][1]["content"] == "Because." and mapped["source"]["format"] == "alpaca"


def test_alpaca_history_and_system():
    out = convert_record({"system": "S", "history": [["a", "b"]], "instruction": "c", "input": "", "output": "d"},
                         source_name="x", file="f", index=0)[0]
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant", "user", "assistant"]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"chosen": "a", "rejected": "b", "prompt": "p"}, "preference pair"),
        ({"text": "just text"}, "unknown format"),
        ([1, 2], "must be a JSON object"),
        ({"instruction": 5, "output": "x"}, "must be a string"),
        ({"conversations": [{"from": "alien", "value": "x"}]}, "is not one of"),
    ],
)
def test_unconvertible_records(record, message):
    with pytest.raises(FormatError, match=message):
        detect_format(record) if not isinstance(record, dict) else convert_record(record, source_name="s", file="f", index=0)


def test_mixing_weights_caps_and_split_are_seeded():
    a = [{"id": f"a{i}", "messages": [{"role": "user", "content": f"qa {i}"}, {"role": "assistant", "content": "x"}]} for i in range(10)]
    b = [{"id": f"b{i}", "messages": [{"role": "user", "content": f"qb {i}"}, {"role": "assistant", "content": "y"}]} for i in range(10)]
    specs = [(SourceSpec(Path("a"), "a", weight=2.0), a), (SourceSpec(Path("b"), "b", max_records=3, weight=1.0), b)]
    mixed = mix(specs, seed=1)
    assert len(mixed) == 23 and sum(r["id"].startswith("b") for r in mixed) == 3
    assert mix(specs, seed=1) == mixed
    half = mix([(SourceSpec(Path("a"), "a", weight=0.5), a)], seed=1)
    assert len(half) == 5
    train, evaluation = split_eval(a + a, 0.2, seed=3)
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in evaluation})
    assert len(evaluation) == 4


def test_a_set_format_names_the_missing_field():
    """With the format set in params, a broken record says which field of that format is missing."""
    with pytest.raises(FormatError, match="alpaca record without field 'output'"):
        convert_record({"instruction": "x", "input": "y"}, source_name="s", file="f", index=0, fmt="alpaca")
    with pytest.raises(FormatError, match="preference pair"):
        convert_record({"chosen": "a", "rejected": "b", "instruction": "x", "output": "y"}, source_name="s", file="f", index=0, fmt="alpaca")
    [record] = convert_record({"question": "2+2?", "answer": "4"}, source_name="s", file="f", index=0, fmt="alpaca",
                              columns={"instruction": "question", "output": "answer"})
    assert [m["content"] for m in record["messages"]] == ["2+2?", "4"]
