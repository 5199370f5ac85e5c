"""Chat records in many shapes and languages, shared by the tokenisation tests (token counts, batched
training tokenisation): `pick(ids...)` returns them by id."""

from __future__ import annotations

import json

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city (°C) — 天气",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALL = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]


def record(rid: str, messages: list[dict], index: int = 0, **extra) -> dict:
    return {"id": rid, "messages": messages, "source": {"file": "t.jsonl", "index": index, "format": "openai"}, "family": "t", **extra}


def user(text):
    return {"role": "user", "content": text}


def assistant(text, **extra):
    return {"role": "assistant", "content": text, **extra}


_ALL = [
    record("en", [user("Name a colour."), assistant("Blue is one.")]),
    record("zh", [user("请把这句话翻译成英文：今天天气很好。"), assistant("The weather is nice today. 今天天气很好！")]),
    record("ar", [user("ما هي عاصمة فرنسا؟"), assistant("عاصمة فرنسا هي باريس.")]),
    record("emoji", [user("Describe 🐱 and 👩‍👩‍👧 in 🇫🇷 🤖🎉"), assistant("Cats 😺! Family 👨‍👩‍👧‍👦 — ok 👍🏽.")]),
    record("multi-turn", [
        {"role": "system", "content": "You are terse. Réponds brièvement. 简短回答。"},
        user("Name a colour."), assistant("Blue."), user("Another? 另一个？"), assistant("Red. أحمر"), user("And one more 🎨"), assistant("Green 🟩"),
    ]),
    record("loss-weight", [user("a"), assistant("kept out", loss_weight=0), user("b"), assistant("in")]),
    record("loss-weight-last", [user("a"), assistant("in", loss_weight=1), user("b"), assistant("kept out", loss_weight=0)]),
    record("specials-in-text", [user("Say </s> and <s> and <|im_end|> <|im_start|>user"), assistant("Done </s><unk> <|endoftext|>")]),
    record("empty-and-spaces", [user("   "), assistant("")]),
    record("one-message", [user("Only a question, no answer?")]),
    record("answer-repeats-prompt", [user("echo: yes yes"), assistant("yes"), user("yes"), assistant("yes yes")]),
    record("assistant-first", [assistant("Hello, how can I help? 你好"), user("Tell me a joke."), assistant("No. 🙃")]),
    record("tools-string", [
        {"role": "system", "content": "You check the weather."},
        user("Weather in Zürich? 苏黎世天气？"),
        assistant(json.dumps({"name": "get_weather", "arguments": {"city": "Zürich"}}, ensure_ascii=False), tool_calls=CALL),
        {"role": "tool", "content": '{"temperature_c": 21, "sky": "clear ☀️"}', "name": "get_weather", "tool_call_id": "call_1"},
        assistant("21 °C and clear ☀️."),
    ], tools=json.dumps([WEATHER], ensure_ascii=False)),
    record("tools-list-no-system", [
        user("Weather in Cairo? الطقس في القاهرة؟"), assistant('{"name": "get_weather", "arguments": {"city": "Cairo"}}', tool_calls=CALL),
        {"role": "tool", "content": "35"}, assistant("35 °C. الجو حار."),
    ], tools=[{"type": "function", "function": WEATHER}]),
    record("tools-dict", [user("Weather in Oslo?"), assistant("", tool_calls=CALL), {"role": "tool", "content": "-3"}, assistant("−3 °C ❄️")],
            tools=WEATHER),
    record("long", [user("Tell a long story. " * 20), assistant(" ".join(["once upon a time the cat sat on the mat 🐈"] * 40))]),
    record("long-multi-turn", [
        {"role": "system", "content": "说中文。" * 10},
        user("第一个问题？" * 15), assistant("第一个回答。" * 15), user("سؤال ثان؟ " * 15), assistant("جواب ثان. " * 15), user("🙂" * 30), assistant("🎉" * 30),
    ]),
]
SAMPLES = {r["id"]: r for r in _ALL}


def pick(*ids: str) -> list[dict]:
    return [SAMPLES[i] for i in ids]


# --- the tokenizers and real records both tokenisation test modules run over -------------------------

TOKENIZERS = ["demo", "stories-chatml", "tiny_chatml", "tiny_gpt2"]


def family_tokenizer(request, base_model_path):
    """The tokenizer named by a ``TOKENIZERS`` fixture param: the demo's (stories260K with alpaca, as
    params/demo.yaml), the same with chatml, or another family's with its own template or the default."""
    from tunegate.tuning.modeling import load_tokenizer

    if request.param == "demo":
        return load_tokenizer(base_model_path, "alpaca")
    if request.param == "stories-chatml":
        return load_tokenizer(base_model_path, "chatml")
    return load_tokenizer(request.getfixturevalue(request.param), None)


def real_records(limit: int) -> list[dict]:
    """The first ``limit`` records of the shared tool-calling (glaive) and Alpaca demo sets, canonical."""
    from pathlib import Path

    import pytest

    from tunegate.data.formats import convert_record

    shared = Path(__file__).resolve().parents[2] / "shared"
    out = []
    for name in ("glaive_toolcall_en_demo.json", "alpaca_en_demo.json"):
        path = shared / "data" / "instruction" / name
        if not path.is_file():
            pytest.skip(f"{path} is missing: the tests need ../shared beside the repo")
        for i, raw in enumerate(json.loads(path.read_text(encoding="utf-8"))[:limit]):
            out += convert_record(raw, source_name=name, file=str(path), index=i)
    return out
