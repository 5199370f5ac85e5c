"""Batched tokenisation (``tokenize_records``) gives the per-record reference's examples exactly.

The reference (``tokenize_records_per_record``) renders each record and each of its assistant
prefixes with ``apply_chat_template`` and tokenises with the tokenizer's call; the batched path
renders through the compiled template and reads a chunk's fast-tokenizer encodings at once.
Every record must get the same input_ids and labels, or the same error (type and message) in
the same record order. Checked on the demo tokenizer (stories260K, alpaca, as params/demo.yaml
sets it up), the same tokenizer with the built-in chatml template, and two other families
(tests/model_families.py): a Qwen2-style ChatML tokenizer with its own tool-calling template
(end of turn <|im_end|>, not EOS) and GPT-2's byte-level BPE (tunegate's default template).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunegate.data import tokenize as T
from tunegate.tuning.modeling import load_tokenizer
from tunegate.data.tokenize import (
    IGNORE,
    AllMaskedError,
    TemplateError,
    _tokenize_records_batched,
    span_labels,
    tokenize_records,
    tokenize_records_per_record,
)

REPO = Path(__file__).resolve().parents[2]

from chat_records import TOKENIZERS, family_tokenizer, pick, real_records  # noqa: E402
from chat_records import assistant as _a, record as _record, user as _u  # noqa: E402,F401

RECORDS = pick(
    "en",
    "zh",
    "ar",
    "emoji",
    "multi-turn",
    "loss-weight",
    "loss-weight-last",
    "specials-in-text",
    "empty-and-spaces",
    "answer-repeats-prompt",
    "assistant-first",
    "tools-string",
    "tools-list-no-system",
    "tools-dict",
    "long",
    "long-multi-turn",
)
ALL_MASKED = [
    _record("only-question", [_u("Only a question, no answer?")], index=3),
    _record("weights-off", [_u("a"), _a("b", loss_weight=0)], index=4),
]
MAX_LENGTHS = (16, 64, 4096)


@pytest.fixture(scope="module", params=TOKENIZERS)
def tokenizer(request, base_model_path):
    return family_tokenizer(request, base_model_path)


@pytest.fixture(scope="module")
def demo_tokenizer(base_model_path):
    return load_tokenizer(base_model_path, "alpaca")


def _real_records() -> list[dict]:
    return real_records(100)


def _demo_train_records() -> list[dict]:
    """The demo's training records: data/demo/train.jsonl, or generated as params/demo.yaml says."""
    path = REPO / "data" / "demo" / "train.jsonl"
    if path.is_file():
        from tunegate.data.sources import read_canonical

        return list(read_canonical(path))
    from tunegate.data.demo import generate_demo_records
    from tunegate.params import load_params

    d = load_params(REPO / "params" / "demo.yaml").demo_data
    return generate_demo_records(d.seed, d.train_per_family, d.eval_per_family, d.families)[0]


def _outcome(tokenize, tokenizer, records, max_length, last_turn_only, **kwargs):
    """The examples (as plain lists), or the error's type and message."""
    try:
        examples = tokenize(tokenizer, records, max_length, last_turn_only, **kwargs)
    except Exception as err:  # noqa: BLE001 - the error is what is compared
        return ("error", type(err), str(err))
    return [(e.input_ids, e.labels) for e in examples]


def _batched(tokenizer, records, max_length, last_turn_only=False, chunk_size=T.TOKENIZE_CHUNK):
    return _tokenize_records_batched(tokenizer, records, max_length, last_turn_only, chunk_size)


@pytest.mark.parametrize("last_turn_only", [False, True])
def test_every_record_equals_the_reference(tokenizer, last_turn_only):
    """Each record on its own (example or error), then all that pass together, in chunks of any size."""
    records = RECORDS + ALL_MASKED + _real_records()
    assert any(r.get("tools") for r in records) and any(m.get("tool_calls") for r in records for m in r["messages"])
    for max_length in MAX_LENGTHS:
        passing = []
        for record in records:
            reference = _outcome(tokenize_records_per_record, tokenizer, [record], max_length, last_turn_only)
            assert _outcome(tokenize_records, tokenizer, [record], max_length, last_turn_only) == reference, record["id"]
            if reference[0] != "error":
                passing.append(record)
        assert passing or max_length < 64  # a 16-token context can leave every answer cut off
        reference = _outcome(tokenize_records_per_record, tokenizer, passing, max_length, last_turn_only)
        assert _outcome(tokenize_records, tokenizer, passing, max_length, last_turn_only) == reference
        assert _outcome(_batched, tokenizer, passing, max_length, last_turn_only, chunk_size=3) == reference


def test_truncation_keeps_the_start(tokenizer):
    long = [r for r in RECORDS if r["id"].startswith("long")]
    full = tokenize_records_per_record(tokenizer, long, 100_000)
    for max_length in (1, 17, 63, 64, 65, 200, 201, 999):
        for record, whole in zip(long, full):
            outcome = _outcome(_batched, tokenizer, [record], max_length, False, chunk_size=1)
            assert outcome == _outcome(tokenize_records_per_record, tokenizer, [record], max_length, False)
            if outcome[0] == "error":  # the answer lies past the cut
                assert outcome[1] is AllMaskedError and all(label == IGNORE for label in whole.labels[:max_length])
            else:
                assert outcome == [(whole.input_ids[:max_length], whole.labels[:max_length])]


def test_labels_mark_the_assistant_turns(tokenizer):
    """Not only equal: the batched labels are assistant text and the end of turn, the rest IGNORE."""
    from tunegate.data.templates import end_of_turn

    eot = end_of_turn(tokenizer)
    example = tokenize_records(tokenizer, RECORDS[:1], 4096)[0]
    labelled = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE])
    assert labelled.startswith("Blue is one.") and (eot is None or labelled.endswith(eot))
    assert example.labels[0] == IGNORE and len(example.labels) == len(example.input_ids)


@pytest.mark.parametrize("last_turn_only", [False, True])
def test_demo_training_records_equal_the_reference(demo_tokenizer, last_turn_only):
    from tunegate.params import load_params

    records = _demo_train_records()
    assert len(records) > 1000
    max_length = load_params(REPO / "params" / "demo.yaml").train.max_length
    reference = _outcome(tokenize_records_per_record, demo_tokenizer, records, max_length, last_turn_only)
    assert reference[0] != "error"
    assert _outcome(tokenize_records, demo_tokenizer, records, max_length, last_turn_only) == reference
    assert _outcome(_batched, demo_tokenizer, records, max_length, last_turn_only, chunk_size=1000) == reference


def test_the_batched_path_is_taken(tokenizer, monkeypatch):
    """Ordinary records never reach the per-record path (tokenize_conversation)."""
    records = [r for r in RECORDS if r["id"] != "loss-weight-last"]
    reference = tokenize_records_per_record(tokenizer, records, 4096)

    def per_record(*args, **kwargs):
        raise AssertionError("per-record path taken")

    monkeypatch.setattr(T, "tokenize_conversation", per_record)
    assert tokenize_records(tokenizer, records, 4096) == reference


def test_span_labels_is_the_reference_scan():
    """The label scan on hand-made offsets, overlapping and out of order included."""
    def reference(ids, offsets, spans):
        labels, index = [], 0
        for token_id, (begin, _end) in zip(ids, offsets):
            while index < len(spans) and begin >= spans[index][1]:
                index += 1
            inside = index < len(spans) and spans[index][0] <= begin < spans[index][1]
            labels.append(token_id if inside else IGNORE)
        return labels

    begins = [0, 1, 2, 3, 3, 5, 8, 9, 4, 10, 12, 12, 15, 20, 2, 21, 30]
    ids = list(range(100, 100 + len(begins)))
    offsets = [(b, b + 1) for b in begins]
    for spans in ([], [(2, 5)], [(0, 1)], [(5, 5)], [(3, 9), (10, 13)], [(1, 4), (4, 4), (9, 21)], [(6, 3), (12, 40)], [(40, 50)]):
        for n in (0, 1, 5, len(ids)):
            assert span_labels(ids[:n], offsets[:n], spans) == reference(ids[:n], offsets[:n], spans), (spans, n)
    assert span_labels(ids, offsets[:4], [(0, 50)]) == reference(ids, offsets[:4], [(0, 50)])


# --- errors: the same error, for the same record, as the reference -------------------------------


def _same_error(tokenizer, records, max_length=4096, last_turn_only=False, chunk_sizes=(T.TOKENIZE_CHUNK, 2)):
    reference = _outcome(tokenize_records_per_record, tokenizer, records, max_length, last_turn_only)
    assert reference[0] == "error", reference
    for chunk_size in chunk_sizes:
        assert _outcome(_batched, tokenizer, records, max_length, last_turn_only, chunk_size=chunk_size) == reference
    return reference


def test_all_masked_errors_name_the_first_record(demo_tokenizer):
    ok = [RECORDS[0], dict(RECORDS[0], id="en-2")]  # short enough for 64 tokens
    truncated = _record("long-prompt", [_u("word " * 300), _a("b")], index=7)
    _, kind, message = _same_error(demo_tokenizer, ok + [truncated] + ALL_MASKED, max_length=64)
    assert kind is AllMaskedError and "t.jsonl record 7 (id long-prompt)" in message and "every label is masked" in message
    _, kind, message = _same_error(demo_tokenizer, ok + ALL_MASKED[::-1] + [truncated], max_length=64)
    assert kind is AllMaskedError and "record 4 (id weights-off)" in message and "loss_weight 0" in message
    _, kind, message = _same_error(demo_tokenizer, ok + ALL_MASKED, last_turn_only=True)
    assert kind is AllMaskedError and "record 3 (id only-question)" in message


def test_a_template_that_is_not_prefix_stable_fails_at_its_record(base_model_path):
    from tunegate.data.templates import chat_template

    tokenizer = load_tokenizer(base_model_path, "alpaca")
    # The alpaca template, but a conversation that mentions "unstable" gets its length written first.
    tokenizer.chat_template = (
        "{% for m in messages %}{% if 'unstable' in m['content'] %}{{ messages | length }}{% endif %}{% endfor %}"
        + chat_template("alpaca")
    )
    unstable = _record("unstable", [_u("this is unstable"), _a("yes")], index=5)
    _, kind, message = _same_error(tokenizer, RECORDS[:4] + [unstable] + ALL_MASKED)
    assert kind is TemplateError and "assistant turn 1" in message
    _, kind, _ = _same_error(tokenizer, RECORDS[:4] + ALL_MASKED + [unstable])
    assert kind is AllMaskedError
    assert _outcome(_batched, tokenizer, RECORDS, 4096, False, chunk_size=2) == _outcome(
        tokenize_records_per_record, tokenizer, RECORDS, 4096, False
    )


def test_template_exceptions_are_the_reference_errors(base_model_path):
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    tokenizer = load_tokenizer(base_model_path, "alpaca")
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tool turns here') }}{% endif %}"
        "{% if m['role'] == 'assistant' %}A: {{ m['content'] }}{{ eos_token }}{% else %}U: {{ m['content'] }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}A: {% endif %}"
    )
    plain = [r for r in RECORDS if not any(m["role"] == "tool" for m in r["messages"])]
    assert _outcome(tokenize_records, tokenizer, plain, 4096, False) == _outcome(tokenize_records_per_record, tokenizer, plain, 4096, False)
    _, kind, message = _same_error(tokenizer, RECORDS)
    assert issubclass(kind, JinjaTemplateError) and "no tool turns here" in message
    _, kind, _ = _same_error(tokenizer, ALL_MASKED + RECORDS)
    assert kind is AllMaskedError


def test_malformed_records_fail_as_the_reference_does(tokenizer):
    class Text(str):
        pass

    odd = [_record("str-subclass", [_u(Text("Hello 你好")), _a("Hi")]), _record("int-name", [_u("x"), _a("y", name=7)])]
    records = RECORDS[:2] + odd + RECORDS[2:4]
    assert _outcome(tokenize_records, tokenizer, records, 4096, False) == _outcome(tokenize_records_per_record, tokenizer, records, 4096, False)
    for bad in (
        {"id": "no-messages", "source": {"file": "t.jsonl", "index": 9}},
        _record("bad-tools", [_u("x"), _a("y")], tools="{not json"),
        _record("no-content", [_u("x"), {"role": "assistant"}]),
        _record("none-content", [_u("x"), _a(None)]),
        _record("lone-surrogate", [_u("bad \ud800 text"), _a("y")]),
    ):
        for records in (RECORDS[:3] + [bad] + RECORDS[3:5], RECORDS[:1] + ALL_MASKED + [bad]):
            reference = _outcome(tokenize_records_per_record, tokenizer, records, 4096, False)
            for chunk_size in (T.TOKENIZE_CHUNK, 2):
                assert _outcome(_batched, tokenizer, records, 4096, False, chunk_size=chunk_size) == reference, bad["id"]
    _same_error(tokenizer, RECORDS[:3] + [{"id": "no-messages"}] + RECORDS[3:5])
    _same_error(tokenizer, RECORDS[:3] + [_record("bad-tools", [_u("x"), _a("y")], tools="{not json")])


def test_other_inputs_take_the_reference_path(demo_tokenizer, monkeypatch):
    reference = tokenize_records_per_record(demo_tokenizer, RECORDS, 4096)
    assert tokenize_records(demo_tokenizer, iter(RECORDS), 4096) == reference  # not a list
    assert tokenize_records(demo_tokenizer, tuple(RECORDS), 4096) == reference
    assert tokenize_records(demo_tokenizer, [], 4096) == []
    backend = demo_tokenizer.backend_tokenizer
    backend.enable_truncation(max_length=4)  # a tokenizer.json shipped truncating: the call resets it, and so do we
    try:
        assert tokenize_records(demo_tokenizer, RECORDS, 4096) == reference
    finally:
        backend.no_truncation()
    monkeypatch.setattr(T, "_batched_tokenizer", lambda tokenizer: False)  # e.g. a slow tokenizer
    assert tokenize_records(demo_tokenizer, RECORDS, 4096) == reference
