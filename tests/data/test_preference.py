"""Preference pairs through stage 1: every format read into the canonical pair, each preference rule on a
small fixture (file, record and rule in the result), the refusals between chat and preference data, and
`tunegate validate --kind preference`."""

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from tunegate.cli import app
from tunegate.data.digest import file_md5
from tunegate.data.formats import FormatError, PREFERENCE_IN_SFT, convert_record, prompt_keys
from tunegate.data.preference import (
    CHAT_IN_PREFERENCE,
    PREFERENCE_FORMATS,
    build_preference_dataset,
    convert_preference_record,
    detect_preference_format,
    is_unpaired,
    pair_prompt_key,
    read_preference_source,
)
from tunegate.data.preference_validation import eval_preference_validation, validate_preference
from tunegate.data.sources import DataError, SourceSpec, load_source
from tunegate.data.validation import error_message, save_report
from tunegate.params import PREFERENCE_FORMATS as PARAMS_FORMATS
from tunegate.params import PreferenceData, PreferenceSource, PreferenceValidation

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
HH = SHARED / "preference" / "hh_rlhf_harmless_base" / "test.jsonl"
KTO = SHARED / "instruction" / "kto_en_demo.json"


def convert(raw, **kw):
    return convert_preference_record(raw, source_name="s", file="f.jsonl", index=kw.pop("index", 0), **kw)


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read(path: Path, **kw):
    return read_preference_source(PreferenceSource(path=str(path), **kw))


def shared(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} missing: the tests need ../shared beside the repo")
    return path


def clean_rows(n=10):
    return [{"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}.", "rejected": f"It is {2 * i + 1}, I think."}
            for i in range(n)]


def pairs(rows):
    return [convert(r, index=i) for i, r in enumerate(rows)]


def check(records, evaluation=None, sft_eval=None, **settings):
    return validate_preference(PreferenceValidation(**{"min_records": 4, **settings}), records, evaluation, sft_eval, None)


def failed(report):
    return {r.rule: r for r in report.rules if not r.passed}


# --- formats -----------------------------------------------------------------------------------


def test_formats_match_params():
    assert PREFERENCE_FORMATS == PARAMS_FORMATS


def test_trl_standard():
    record = convert({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "family": "geo"}, index=7)
    assert record["prompt"] == [{"role": "user", "content": "Capital of France?"}]
    assert record["chosen"] == {"role": "assistant", "content": "Paris."}
    assert record["rejected"] == {"role": "assistant", "content": "Lyon."}
    assert record["source"] == {"file": "f.jsonl", "index": 7, "format": "trl"} and record["family"] == "geo"
    assert record["id"].startswith("s-000007-") and len(record["id"].split("-")[-1]) == 10
    assert not is_unpaired(record) and "tools" not in record


def test_trl_conversational_with_tools():
    tools = [{"name": "get_time", "parameters": {"type": "object", "properties": {}}}]
    record = convert({
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Time?"}],
        "chosen": [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}],
        "rejected": [{"role": "assistant", "content": "I cannot tell."}],
        "tools": tools,
    })
    assert [m["role"] for m in record["prompt"]] == ["system", "user"]
    assert record["chosen"]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": {}}
    assert record["rejected"] == {"role": "assistant", "content": "I cannot tell."}
    assert json.loads(record["tools"]) == tools and record["source"]["format"] == "trl"
    with pytest.raises(FormatError, match="one assistant answer"):
        convert({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}] * 2, "rejected": "b"})
    with pytest.raises(FormatError, match="user turn; it must be the assistant's"):
        convert({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"})


def test_trl_implicit_prompt_is_the_shared_prefix():
    head = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    record = convert({"chosen": head + [{"role": "assistant", "content": "4"}], "rejected": head + [{"role": "assistant", "content": "5"}]})
    assert record["prompt"] == head
    assert (record["chosen"]["content"], record["rejected"]["content"]) == ("4", "5")
    other = [*head[:2], {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "5"}]
    raw = {"chosen": head + [{"role": "assistant", "content": "4"}], "rejected": other}
    with pytest.raises(FormatError, match=r"prompt_mismatch: chosen and rejected differ at turn 2 .*'2\+2\?'.*'3\+3\?'"):
        convert(raw)
    kept = convert(raw, keep_mismatch=True)
    assert kept["prompt"] == head and "differ at turn 2" in kept["prompt_mismatch"]
    with pytest.raises(FormatError, match="must end with the assistant's answer"):
        convert({"chosen": head, "rejected": head})


def test_ranking_alpaca():
    record = convert({"system": "You are terse.", "history": [["Hi", "Hello"]], "instruction": "Translate",
                      "input": "chat", "chosen": "cat", "rejected": "dog"})
    assert record["prompt"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Translate\n\nchat"},
    ]
    assert (record["chosen"]["content"], record["rejected"]["content"]) == ("cat", "dog")
    assert record["source"]["format"] == "ranking_alpaca"


def test_ranking_sharegpt_with_tool_call():
    tools = json.dumps([{"name": "weather", "parameters": {}}])
    record = convert({
        "conversations": [{"from": "human", "value": "Weather in Oslo?"}],
        "chosen": {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {"city": "Oslo"}})},
        "rejected": {"from": "gpt", "value": "Sunny, always."},
        "system": "Use tools.",
        "tools": tools,
    })
    assert [m["role"] for m in record["prompt"]] == ["system", "user"]
    assert record["chosen"]["role"] == "assistant"
    assert record["chosen"]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert record["rejected"] == {"role": "assistant", "content": "Sunny, always."}
    assert record["source"]["format"] == "ranking_sharegpt" and json.loads(record["tools"])[0]["name"] == "weather"


def test_hh_real_file():
    path = shared(HH)
    start = time.perf_counter()
    records, counts = read(path, name="hh")
    assert time.perf_counter() - start < 5
    assert counts == {"read": 2312, "converted": 2312, "prompt_mismatch": 0}
    assert {r["source"]["format"] for r in records} == {"hh"} and len({r["id"] for r in records}) == 2312
    first = records[0]
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][0]["content"] == "what are some pranks with a pen i can do?"
    assert first["prompt"][2]["content"] == "yep"
    assert first["prompt"][-1]["content"] == "okay some of these do not have anything to do with pens"
    assert first["chosen"]["content"].startswith("No, sorry!  All of these involve a pen")
    assert first["rejected"]["content"].startswith("There are lots of funny things you can do with pens")
    # An assistant that went on (two Assistant: blocks in a row) is one turn: roles alternate.
    raw = json.loads(path.read_text(encoding="utf-8").splitlines()[763])
    assert raw["chosen"].count("\n\nAssistant:") == 3
    assert [m["role"] for m in records[763]["prompt"]] == ["user", "assistant", "user"]


def test_hh_prompt_mismatch_is_named_and_kept_for_the_rule(tmp_path):
    rows = [{"chosen": f"\n\nHuman: Q{i}\n\nAssistant: Good {i}", "rejected": f"\n\nHuman: Q{i}\n\nAssistant: Bad {i}"} for i in range(6)]
    rows[2]["rejected"] = "\n\nHuman: Something else\n\nAssistant: Bad"
    path = write(tmp_path / "hh.jsonl", rows)
    records, counts = read(path)
    assert counts["prompt_mismatch"] == 1 and "differ at turn 0" in records[2]["prompt_mismatch"]
    report = check(records)
    rule = failed(report)["prompt_mismatch"]
    assert (rule.offenders[0].file, rule.offenders[0].record_index) == (str(path), 2)
    assert "differ at turn 0" in rule.offenders[0].detail and f"{path} record 2" in error_message([report])
    dropped = check(records, rules={"prompt_mismatch": "drop"})
    assert dropped.passed and dropped.dropped_ids == [records[2]["id"]]


def test_kto_real_file():
    records, counts = read(shared(KTO))
    assert counts["converted"] == 300 and all(is_unpaired(r) for r in records)
    assert sum(r["label"] for r in records) == 150
    raw = json.loads(KTO.read_text(encoding="utf-8"))[0]
    assert records[0]["prompt"] == [{"role": "user", "content": raw["messages"][0]["content"]}]
    assert records[0]["completion"] == {"role": "assistant", "content": raw["messages"][1]["content"]}
    assert records[0]["label"] is True and records[0]["source"]["format"] == "kto"
    report = validate_preference(PreferenceValidation(rules={"pii": "drop"}), records)
    assert report.passed and {r.rule for r in report.rules} == {"schema", "min_records", "non_empty", "duplicates", "pii", "secrets"}


def test_trl_unpaired_and_label_checked():
    record = convert({"prompt": "Hi", "completion": "Hello!", "label": False})
    assert record["completion"] == {"role": "assistant", "content": "Hello!"} and record["label"] is False
    with pytest.raises(FormatError, match="label"):
        convert({"prompt": "Hi", "completion": "Hello!", "label": "yes"})
    with pytest.raises(FormatError, match="format: kto"):
        convert({"prompt": "Hi", "completion": "Hello!", "label": True}, fmt="trl")


def test_non_english_pairs(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "中国的首都是哪里？"}], "chosen": [{"role": "assistant", "content": "北京。"}],
         "rejected": [{"role": "assistant", "content": "上海。"}]},
        {"prompt": [{"role": "user", "content": "Wie heißt die Hauptstadt von Österreich?"}],
         "chosen": [{"role": "assistant", "content": "Wien."}], "rejected": [{"role": "assistant", "content": "Salzburg."}]},
        {"prompt": [{"role": "user", "content": "一加一等于几？"}], "chosen": [{"role": "assistant", "content": "二。"}],
         "rejected": [{"role": "assistant", "content": "三。"}]},
        {"prompt": [{"role": "user", "content": "Übersetze „Straße“."}], "chosen": [{"role": "assistant", "content": "street"}],
         "rejected": [{"role": "assistant", "content": "Street!"}]},  # differs in case and punctuation: a real pair
        {"prompt": [{"role": "user", "content": "二加二等于几？"}], "chosen": [{"role": "assistant", "content": "四。"}],
         "rejected": [{"role": "assistant", "content": " 四。 "}]},  # the same answer but for whitespace
    ]
    path = write(tmp_path / "zh_de.jsonl", rows)
    records, _ = read(path)
    assert records[0]["chosen"]["content"] == "北京。" and records[1]["prompt"][0]["content"].startswith("Wie heißt")
    assert pair_prompt_key(records[0]) == "中国的首都是哪里"
    bad = failed(check(records, min_records=1))
    assert set(bad) == {"identical"} and [o.record_index for o in bad["identical"].offenders] == [4]


@pytest.mark.parametrize(
    "raw, fmt",
    [
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "trl"),
        ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}, "trl"),
        ({"instruction": "q", "input": "", "chosen": "a", "rejected": "b"}, "ranking_alpaca"),
        ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"},
          "rejected": {"from": "gpt", "value": "b"}}, "ranking_sharegpt"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "hh"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": True}, "kto"),
        ({"prompt": "q", "completion": "a", "label": False}, "kto"),
    ],
)
def test_auto_detection(raw, fmt):
    assert detect_preference_format(raw) == fmt
    assert convert(raw)["source"]["format"] == fmt


@pytest.mark.parametrize(
    "raw, message",
    [
        ([1, 2], "must be a JSON object"),
        ({"prompt": "q", "chosen": "a"}, "'chosen' but no 'rejected'"),
        ({"question": "q", "answer": "a"}, "unknown preference format"),
        ({"chosen": "just text", "rejected": "other text"}, "trl record without 'prompt'"),
        ({"chosen": "\n\nHuman: q", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "no assistant turn"),
    ],
)
def test_unconvertible_preference_records(raw, message):
    with pytest.raises(FormatError, match=message):
        convert(raw)


# --- the two cross-refusals --------------------------------------------------------------------


def test_preference_pairs_in_sft_data_are_refused_naming_the_fix(tmp_path):
    path = write(tmp_path / "pairs.jsonl", clean_rows(3))
    with pytest.raises(DataError) as error:
        load_source(SourceSpec(path=path, name="pairs"))
    assert str(error.value) == f"{path}: record 0: {PREFERENCE_IN_SFT}"
    assert "preference.data.train" in str(error.value) and "train.objective: dpo" in str(error.value)
    with pytest.raises(FormatError, match="preference.data.train"):
        convert_record(clean_rows(1)[0], source_name="s", file="f", index=0)


@pytest.mark.parametrize("fmt", ["auto", "trl", "hh"])
def test_chat_records_as_preference_data_are_refused_naming_the_fix(tmp_path, fmt):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    path = write(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DataError) as error:
        read(path, format=fmt)
    text = str(error.value)
    assert text.startswith(f"{path}: record 0: chat record (messages/conversations without chosen/rejected)")
    assert CHAT_IN_PREFERENCE in text and "data.train" in text


# --- reading and the dataset -------------------------------------------------------------------


def test_columns_and_max_records(tmp_path):
    rows = [{"q": f"Question {i}?", "good": "yes", "bad": "no"} for i in range(5)]
    path = write(tmp_path / "renamed.jsonl", rows)
    records, counts = read(path, name="mine", format="trl", columns={"prompt": "q", "chosen": "good", "rejected": "bad"},
                           max_records=3)
    assert counts == {"read": 3, "converted": 3, "prompt_mismatch": 0} and len(records) == 3
    assert records[2]["prompt"][0]["content"] == "Question 2?" and records[0]["family"] == "mine"


def test_relative_paths_resolve_under_root(tmp_path):
    write(tmp_path / "p.jsonl", clean_rows(2))
    records, _ = read_preference_source(PreferenceSource(path="p.jsonl"), root=tmp_path)
    assert records[0]["source"]["file"] == str(tmp_path / "p.jsonl")


def test_pair_prompt_key_equals_the_chat_records():
    chat = convert_record({"messages": [{"role": "system", "content": "Be Brief"}, {"role": "user", "content": "Hi, there!"},
                                        {"role": "assistant", "content": "x"}]}, source_name="c", file="f", index=0)[0]
    pair = convert({"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
                    "chosen": "a", "rejected": "b"})
    assert pair_prompt_key(pair) == prompt_keys([chat])[0]


def test_build_preference_dataset_split_and_sources(tmp_path):
    rows = clean_rows(20) + [{**r, "chosen": r["chosen"] + " Sure."} for r in clean_rows(20)]  # two pairs per prompt
    train_path = write(tmp_path / "train.jsonl", rows)
    params = SimpleNamespace(project=SimpleNamespace(seed=7), preference=SimpleNamespace(
        data=PreferenceData(train=[PreferenceSource(path=str(train_path), name="pairs")], eval_fraction=0.2)))
    dataset = build_preference_dataset(params)
    assert len(dataset.train) + len(dataset.eval) == 40 and len(dataset.eval) == 8
    train_keys = {pair_prompt_key(r) for r in dataset.train}
    assert train_keys.isdisjoint({pair_prompt_key(r) for r in dataset.eval})
    assert build_preference_dataset(params).eval == dataset.eval  # seeded
    assert dataset.source_md5s() == {"pairs": file_md5(train_path)}
    [summary] = dataset.source_summary()
    assert summary["split"] == "train" and summary["read"] == 40 and summary["md5"] == file_md5(train_path)

    eval_path = write(tmp_path / "eval.jsonl", clean_rows(3))
    params.preference.data = PreferenceData(train=[PreferenceSource(path=str(train_path), name="pairs")],
                                            eval=[PreferenceSource(path=str(eval_path), name="held")])
    dataset = build_preference_dataset(params)
    assert len(dataset.train) == 40 and len(dataset.eval) == 3 and set(dataset.source_md5s()) == {"pairs", "held"}


# --- the rules ---------------------------------------------------------------------------------


def test_clean_pairs_pass_and_report(tmp_path):
    report = check(pairs(clean_rows()))
    assert report.passed and not failed(report) and report.kind == "preference"
    assert [r.rule for r in report.rules] == ["schema", "min_records", "non_empty", "identical", "prompt_mismatch",
                                              "duplicates", "pii", "secrets", "length_bias"]
    assert "0.0% of 10 pairs" in next(r.observed for r in report.rules if r.rule == "length_bias")
    markdown, data = save_report([report], tmp_path)
    assert "## Preference data validation: train" in markdown.read_text() and json.loads(data.read_text())[0]["kind"] == "preference"


def test_rules_run_in_great_expectations(tmp_path):
    report = validate_preference(PreferenceValidation(min_records=4), pairs(clean_rows()), docs_dir=tmp_path / "docs")
    assert report.docs_index and Path(report.docs_index).is_file()


def test_schema():
    records = pairs(clean_rows())
    records[4]["prompt"].append({"role": "assistant", "content": "Let me think."})
    records[6]["id"] = None
    records[7] = {**records[7], "prompt": "not a list", "chosen": "a"}  # written by other code, not the reader
    records[8]["tools"] = "{broken"
    rule = failed(check(records))["schema"]
    details = {o.record_index: o.detail for o in rule.offenders}
    assert set(details) == {4, 6, 7, 8} and rule.unexpected_count == 4
    assert "ending with a user or tool turn" in details[4] and details[6] == "no id"
    assert details[7] == "prompt is not a list of messages" and details[8].startswith("tools is not JSON")


def test_min_records():
    bad = failed(check(pairs(clean_rows(3))))
    assert bad["min_records"].observed == "3"


def test_non_empty():
    rows = clean_rows()
    rows[2]["rejected"] = " "
    rows[5]["prompt"] = ""
    rule = failed(check(pairs(rows)))["non_empty"]
    assert [(o.record_index, o.detail) for o in rule.offenders] == [(2, "empty: rejected"), (5, "empty: prompt")]


def test_identical():
    rows = clean_rows()
    rows[1]["rejected"] = "  " + rows[1]["chosen"].replace(" ", "\n ") + " "  # the same answer, whitespace aside
    rule = failed(check(pairs(rows)))["identical"]
    assert [o.record_index for o in rule.offenders] == [1]


def test_duplicates():
    rows = clean_rows() + [clean_rows()[3]]
    records = pairs(rows)
    rule = failed(check(records))["duplicates"]
    assert [o.record_index for o in rule.offenders] == [10] and records[3]["id"] in rule.offenders[0].detail
    assert check(pairs(clean_rows() + [{**clean_rows()[3], "rejected": "Another wrong one."}])).passed  # same prompt only


def test_eval_overlap_with_preference_and_sft_eval():
    records = pairs(clean_rows())
    held = pairs([clean_rows()[2]])
    sft_eval = convert_record({"instruction": "what is 7 plus 7", "output": "14"}, source_name="e", file="e", index=0)
    rule = failed(check(records, held, sft_eval))["eval_overlap"]
    assert {(o.record_index, o.detail) for o in rule.offenders} == {
        (2, "prompt in the preference eval records"), (7, "prompt in the SFT eval records")}
    assert "eval_overlap" not in {r.rule for r in check(records).rules}  # nothing held out: no rule


def test_pii_and_secrets():
    rows = clean_rows()
    rows[3]["chosen"] = "Mail jane.doe@example.com"
    rows[8]["prompt"] = "My key is AKIAABCDEFGHIJKLMNOP, what is 8 plus 8?"
    bad = failed(check(pairs(rows)))
    assert [(o.record_index, o.detail) for o in bad["pii"].offenders] == [(3, "pii kinds: email")]
    assert [(o.record_index, o.detail) for o in bad["secrets"].offenders] == [(8, "secret kinds: aws_access_key")]


def test_length_bias_warns_with_the_share():
    rows = [{"prompt": f"Question {i}?", "chosen": "A long and careful answer.", "rejected": "No."} for i in range(10)]
    report = check(pairs(rows))
    rule = failed(report)["length_bias"]
    assert report.passed and rule.severity == "warning" and "100.0% of 10 pairs" in rule.observed
    assert failed(check(pairs(rows), rules={"length_bias": "error"}))["length_bias"] and not check(pairs(rows), rules={"length_bias": "error"}).passed
    assert check(pairs(rows), max_length_bias=1.0).passed and "length_bias" not in failed(check(pairs(rows), max_length_bias=1.0))


def test_drop_rules_list_the_pairs_and_eval_params():
    rows = clean_rows()
    rows[0]["rejected"] = rows[0]["chosen"]
    records = pairs(rows)
    report = check(records, rules={"identical": "drop"})
    assert report.passed and report.dropped_ids == [records[0]["id"]]
    short = eval_preference_validation(PreferenceValidation(min_records=100))
    assert validate_preference(short, records[1:3], split="eval").passed


# --- tunegate validate --kind preference -------------------------------------------------------


def run_cli(*args):
    result = CliRunner().invoke(app, ["validate", *args])
    return result, " ".join(result.output.split())


def test_cli_preference_passes(tmp_path):
    path = write(tmp_path / "good.jsonl", clean_rows())
    result, text = run_cli("--kind", "preference", str(path), "--report-dir", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    assert f"{path}: 10 records (trl)" in text and "default preference rules" in text
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "data_docs" / "train" / "index.html").is_file()


def test_cli_preference_fails_naming_file_record_rule(tmp_path):
    rows = clean_rows()
    rows[4]["rejected"] = rows[4]["chosen"]
    path = write(tmp_path / "bad.jsonl", rows)
    result, text = run_cli("--kind", "preference", str(path))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"ERROR identical: 1 record(s) break it: {path} record 4" in text


def test_cli_preference_json_with_eval(tmp_path):
    train = write(tmp_path / "train.jsonl", clean_rows())
    held = write(tmp_path / "eval.jsonl", [{"prompt": "What is 3 plus 3?", "chosen": "6", "rejected": "7"}])
    result = CliRunner().invoke(app, ["validate", "--kind", "preference", "--json", str(train), "--eval", str(held)])
    assert result.exit_code == 1
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["passed"] is False and [r["split"] for r in data["reports"]] == ["train", "eval"]
    overlap = next(r for r in data["reports"][0]["rules"] if r["rule"] == "eval_overlap")
    assert overlap["offenders"][0]["record_index"] == 3 and data["reports"][1]["passed"]


def test_cli_preference_rules_from_params(tmp_path):
    raw = yaml.safe_load((REPO / "params" / "demo.yaml").read_text(encoding="utf-8"))
    sft_eval = write(tmp_path / "sft_eval.jsonl", [{"instruction": "What is 5 plus 5?", "input": "", "output": "10"}])
    raw["train"]["objective"] = "dpo"
    raw["data"]["eval"] = [{"path": str(sft_eval), "name": "sft_eval"}]
    raw["preference"] = {"data": {"train": [{"path": "unused.jsonl"}]},
                         "validation": {"min_records": 2, "rules": {"identical": "warning"}}}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    rows = clean_rows()
    rows[1]["rejected"] = rows[1]["chosen"]
    path = write(tmp_path / "pairs.jsonl", rows)
    result, text = run_cli("--kind", "preference", "--params", str(params), str(path))
    assert result.exit_code == 1, result.output
    assert f"preference.validation of --params {params}" in text and "1 SFT eval records" in text
    assert "warning: train: WARNING identical" in text
    assert f"ERROR eval_overlap: 1 record(s) break it: {path} record 5" in text


def test_cli_refuses_chat_data_as_preference(tmp_path):
    path = write(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    result, text = run_cli("--kind", "preference", str(path))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{path}: record 0: chat record" in text and "--kind chat" in text


def test_cli_refuses_preference_data_as_chat(tmp_path, base_model_path):
    path = write(tmp_path / "pairs.jsonl", clean_rows(3))
    result, text = run_cli(str(path))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{path}: record 0: preference pair" in text and "preference.data.train" in text and "--kind preference" in text


def test_cli_unreadable_preference_file_and_bad_options(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(clean_rows(1)[0]) + "\n{not json\n", encoding="utf-8")
    result, text = run_cli("--kind", "preference", str(path))
    assert result.exit_code == 1 and f"{path}: record 1: not valid JSON" in text
    result, text = run_cli("--kind", "preference", "--format", "alpaca", str(path))
    assert result.exit_code == 2 and "ranking_alpaca" in text
    result, text = run_cli("--kind", "pairs", str(path))
    assert result.exit_code == 2 and "--kind 'pairs'" in text
