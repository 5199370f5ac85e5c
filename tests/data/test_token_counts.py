"""Batched token counting (``count_record_tokens``) gives the per-record reference's counts exactly.

The reference renders each record on its own with ``apply_chat_template`` and tokenises with the
tokenizer's call; the batched path renders through the compiled template and reads the fast
tokenizer's encodings directly. Checked on the demo tokenizer (stories260K, alpaca, as
params/demo.yaml sets it up), the same tokenizer with the built-in chatml template, and two other
families (tests/model_families.py): a Qwen2-style ChatML tokenizer with its own tool-calling
template and GPT-2's byte-level BPE (no template of its own: tunegate's default).
"""

from __future__ import annotations


import pytest

from tunegate.data.checks import count_record_tokens, count_record_tokens_per_record
from tunegate.data.tokenize import _DirectTemplate, render_many_with_prompt, render_with_prompt, token_offsets
from tunegate.tuning.modeling import load_tokenizer


from chat_records import TOKENIZERS, family_tokenizer, pick, real_records  # noqa: E402
from chat_records import assistant as _a, record as _record, user as _u  # noqa: E402,F401

RECORDS = pick(
    "en",
    "zh",
    "ar",
    "emoji",
    "multi-turn",
    "loss-weight",
    "specials-in-text",
    "empty-and-spaces",
    "one-message",
    "tools-string",
    "tools-list-no-system",
    "long",
)


@pytest.fixture(scope="module", params=TOKENIZERS)
def tokenizer(request, base_model_path):
    return family_tokenizer(request, base_model_path)


def _real_records() -> list[dict]:
    return real_records(150)


def test_direct_render_is_used(tokenizer):
    """The batched path renders through the compiled template, not through the per-record fallback."""
    assert _DirectTemplate.for_tokenizer(tokenizer) is not None


@pytest.mark.parametrize("chunk_size", [2000, 3])
def test_batched_counts_equal_per_record(tokenizer, chunk_size):
    reference = count_record_tokens_per_record(tokenizer, RECORDS)
    assert count_record_tokens(tokenizer, RECORDS, chunk_size=chunk_size) == reference
    full, prompt = reference
    assert all(f > p >= 0 for f, p in zip(full, prompt)), reference


def test_batched_render_equals_apply_chat_template(tokenizer):
    records = RECORDS + _real_records()
    assert any(r.get("tools") for r in records) and any(m.get("tool_calls") for r in records for m in r["messages"])
    assert render_many_with_prompt(tokenizer, records) == [render_with_prompt(tokenizer, r) for r in records]


def test_batched_counts_on_demo_data_sets(tokenizer):
    records = _real_records()
    assert count_record_tokens(tokenizer, records) == count_record_tokens_per_record(tokenizer, records)


def test_token_offsets_equal_the_tokenizer_call(tokenizer):
    texts = [full for full, _ in render_many_with_prompt(tokenizer, RECORDS)] + ["", " ", "</s>", "<|im_end|>x"]
    expected = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert token_offsets(tokenizer, texts) == expected
    # A backend left truncating (some tokenizer.json files ship that way): the call counts in full, and so do we.
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(max_length=4)
    try:
        assert token_offsets(tokenizer, texts) == expected
    finally:
        backend.no_truncation()


def test_records_the_direct_render_does_not_take_fall_back(tokenizer):
    class Text(str):
        pass

    odd = [_record("str-subclass", [_u(Text("Hello 你好")), _a("Hi")]), _record("int-name", [_u("x"), _a("y", name=7)])]
    records = RECORDS[:2] + odd + RECORDS[2:4]
    assert render_many_with_prompt(tokenizer, records) == [render_with_prompt(tokenizer, r) for r in records]
    assert count_record_tokens(tokenizer, records) == count_record_tokens_per_record(tokenizer, records)


def test_template_errors_are_the_reference_errors(base_model_path):
    from jinja2.exceptions import TemplateError

    tokenizer = load_tokenizer(base_model_path, "alpaca")
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tool turns here') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(TemplateError, match="no tool turns here") as reference:
        count_record_tokens_per_record(tokenizer, RECORDS)
    with pytest.raises(TemplateError, match="no tool turns here") as batched:
        count_record_tokens(tokenizer, RECORDS)
    assert type(batched.value) is type(reference.value)


def test_named_templates_pick_tool_use_as_the_reference_does(base_model_path):
    from tunegate.data.templates import chat_template

    tokenizer = load_tokenizer(base_model_path, "alpaca")
    tokenizer.chat_template = {"default": chat_template("alpaca"), "tool_use": chat_template("chatml")}
    rendered = render_many_with_prompt(tokenizer, RECORDS)
    assert rendered == [render_with_prompt(tokenizer, r) for r in RECORDS]
    assert "<|im_start|>" in rendered[-2][0] and "<|im_start|>" not in rendered[0][0]
    assert count_record_tokens(tokenizer, RECORDS) == count_record_tokens_per_record(tokenizer, RECORDS)


def test_findings_are_the_same_with_either_count(base_model_path):
    from tunegate.data.validation import validate_dataset
    from tunegate.params import ValidationParams

    tokenizer = load_tokenizer(base_model_path, "alpaca")
    records = [dict(r, id=f"{r['id']}-{i}") for i, r in enumerate(RECORDS)]
    params = ValidationParams(min_records=1, max_near_duplicate_rate=1.0)
    reports = [
        validate_dataset(records, params, max_length=40, token_counts=count(tokenizer, records))
        for count in (count_record_tokens, count_record_tokens_per_record)
    ]
    assert reports[0].to_dict() == reports[1].to_dict()
    too_long = next(r for r in reports[0].rules if r.rule == "max_length")
    assert too_long.unexpected_count > 0 and too_long.offenders
