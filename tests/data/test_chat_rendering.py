"""Templates as the model defines them: exact loss masks per template, tools and tool calls, loss weights, stop tokens."""

from __future__ import annotations

import json

import pytest

from tunegate.data.formats import FormatError, convert_record
from tunegate.data.templates import end_of_turn, stop_token_ids, template_id
from tunegate.data.tokenize import IGNORE, AllMaskedError, render_record, tokenize_conversation, tokenize_records
from tunegate.tuning.modeling import load_tokenizer

TWO_TURNS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue is one."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Red works too."},
]

# Zephyr's template as HuggingFaceH4/zephyr-7b-beta ships it: a newline after every </s>.
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)


def labelled_runs(tokenizer, example) -> list[str]:
    """Each contiguous run of labelled tokens, decoded as it is (special tokens kept)."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


def _loaded(path, template=None, own=None):
    tokenizer = load_tokenizer(path, template)
    if own is not None:
        tokenizer.chat_template = own
    return tokenizer


def test_chatml_model_masks_each_answer_and_im_end_only(tiny_chatml):
    tokenizer = _loaded(tiny_chatml)
    assert tokenizer.eos_token == "<|endoftext|>" and end_of_turn(tokenizer) == "<|im_end|>"
    example = tokenize_conversation(tokenizer, TWO_TURNS, max_length=512)
    assert labelled_runs(tokenizer, example) == ["Blue is one.<|im_end|>", "Red works too.<|im_end|>"]
    # the template's "\n" after <|im_end|> is there, and not labelled
    newline_after = tokenizer.decode(example.input_ids).count("<|im_end|>\n")
    assert newline_after >= 4


def test_zephyr_style_masks_stop_at_eos_not_the_newline_after_it(base_model_path):
    tokenizer = _loaded(base_model_path, own=ZEPHYR)
    assert end_of_turn(tokenizer) == "</s>"
    example = tokenize_conversation(tokenizer, TWO_TURNS, max_length=512)
    runs = labelled_runs(tokenizer, example)
    assert [r.strip() for r in runs] == ["Blue is one.</s>", "Red works too.</s>"]
    assert all(r.endswith("</s>") for r in runs), "nothing after the end-of-turn token is trained"


@pytest.mark.parametrize("name", ["alpaca", "chatml"])
def test_builtin_templates_mask_each_answer_and_eos(name, base_model_path):
    tokenizer = _loaded(base_model_path, name)
    example = tokenize_conversation(tokenizer, TWO_TURNS, max_length=512)
    assert [r.strip() for r in labelled_runs(tokenizer, example)] == ["Blue is one.</s>", "Red works too.</s>"]


def test_gpt2_gets_the_default_template_and_eos_as_end_of_turn(tiny_gpt2):
    tokenizer = _loaded(tiny_gpt2)
    assert template_id(tokenizer.chat_template) == "alpaca"
    example = tokenize_conversation(tokenizer, TWO_TURNS, max_length=512)
    assert labelled_runs(tokenizer, example) == ["Blue is one.<|endoftext|>", "Red works too.<|endoftext|>"]


def test_recorded_template_is_the_one_used(tiny_chatml, base_model_path):
    own = _loaded(tiny_chatml)
    assert template_id(own.chat_template).startswith("tokenizer:")
    assert template_id(_loaded(tiny_chatml, "chatml").chat_template) == "chatml", "a named built-in wins over the own"
    assert template_id(_loaded(base_model_path).chat_template) == "alpaca", "no template of its own: the default"


def test_stop_tokens_are_eos_end_of_turn_and_generation_config(tiny_chatml):
    from transformers import GenerationConfig

    tokenizer = _loaded(tiny_chatml)
    eos, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert stop_token_ids(tokenizer) == sorted({eos, im_end})
    assert stop_token_ids(tokenizer, GenerationConfig(eos_token_id=[7, eos])) == sorted({7, eos, im_end})


def _glaive_record_with_call():
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "instruction" / "glaive_toolcall_en_demo.json"
    raw = json.loads(path.read_text())
    index = next(i for i, r in enumerate(raw) if any(t["from"] == "function_call" for t in r["conversations"]))
    return convert_record(raw[index], source_name="glaive", file=str(path), index=index)[0], raw[index]


def test_tool_calling_record_renders_schema_and_native_call(tiny_chatml):
    tokenizer = _loaded(tiny_chatml)
    record, raw = _glaive_record_with_call()
    text = render_record(tokenizer, record)
    tools = json.loads(raw["tools"])
    call = json.loads(next(t["value"] for t in raw["conversations"] if t["from"] == "function_call"))
    schema = text[text.index("<tools>\n") : text.index("\n</tools>")]
    assert all(tool["name"] in schema for tool in tools), "tool schemas are in the prompt"
    assert f'<tool_call>\n{{"name": "{call["name"]}", "arguments": ' in text, "the call in the template's own form"
    example = tokenize_records(tokenizer, [record], max_length=1024)[0]
    runs = labelled_runs(tokenizer, example)
    call_run = next(r for r in runs if "<tool_call>" in r)
    assert call_run.startswith("<tool_call>") and call_run.endswith("</tool_call><|im_end|>")
    assert all(r.endswith("<|im_end|>") for r in runs) and not any("<tool_response>" in r for r in runs)


def test_builtin_alpaca_renders_tools_too(base_model_path):
    tokenizer = _loaded(base_model_path)
    record, raw = _glaive_record_with_call()
    text = render_record(tokenizer, record)
    assert "### Tools:" in text and json.loads(raw["tools"])[0]["name"] in text and "<tool_call>{" in text


def test_conflicts_rule_treats_other_tools_as_other_prompts():
    from tunegate.data.checks import record_frame

    def record(rid, tools, answer):
        messages = [{"role": "user", "content": "What is the weather?"}, {"role": "assistant", "content": answer}]
        return {"id": rid, "messages": messages, "tools": tools, "family": "t"}

    weather = json.dumps([{"name": "get_weather", "parameters": {}}])
    stocks = json.dumps([{"name": "get_stock", "parameters": {}}])
    different_tools = [record("a", weather, "CALL weather"), record("b", stocks, "I cannot check the weather.")]
    frame = record_frame(different_tools, token_counts=None, max_length=128, refusal_patterns=[])
    assert not frame["conflict"].any()
    same_tools = [record("a", weather, "CALL weather"), record("b", weather, "I cannot check the weather.")]
    frame = record_frame(same_tools, token_counts=None, max_length=128, refusal_patterns=[])
    assert frame["conflict"].all()


V1_RECORD = {
    "messages": [
        {"role": "system", "content": [{"type": "text", "value": "You help."}], "loss_weight": 0.0},
        {"role": "user", "content": [{"type": "text", "value": "What is 6*8?"}], "loss_weight": 0.0},
        {"role": "assistant", "content": [{"type": "tool_call", "value": json.dumps({"name": "multiply", "arguments": {"a": 6, "b": 8}})}], "loss_weight": 0.0},
        {"role": "tool", "content": [{"type": "text", "value": "48"}]},
        {"role": "assistant", "content": [{"type": "text", "value": "6*8 is 48."}], "loss_weight": 1.0},
    ],
    "tools": [{"type": "function", "function": {"name": "multiply", "parameters": {"type": "object"}}}],
}


def test_llamafactory_v1_typed_parts_read():
    record = convert_record(V1_RECORD, source_name="v1", file="v1.jsonl", index=0)[0]
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert record["messages"][1]["content"] == "What is 6*8?"
    assert record["messages"][2]["tool_calls"] == [{"type": "function", "function": {"name": "multiply", "arguments": {"a": 6, "b": 8}}}]
    assert record["messages"][2]["loss_weight"] == 0 and "loss_weight" not in record["messages"][4]
    assert json.loads(record["tools"])[0]["function"]["name"] == "multiply"


def test_loss_weight_zero_turns_are_out_of_the_loss(tiny_chatml):
    tokenizer = _loaded(tiny_chatml)
    record = convert_record(V1_RECORD, source_name="v1", file="v1.jsonl", index=0)[0]
    runs = labelled_runs(tokenizer, tokenize_records(tokenizer, [record], max_length=1024)[0])
    assert runs == ["6*8 is 48.<|im_end|>"], "the weight-0 tool call is not trained"
    only_zero = {**record, "messages": [{**m, "loss_weight": 0} if m["role"] == "assistant" else m for m in record["messages"]]}
    with pytest.raises(AllMaskedError, match="loss_weight 0"):
        tokenize_records(tokenizer, [only_zero], max_length=1024)


@pytest.mark.parametrize(
    "turn, message",
    [
        ({"role": "assistant", "content": "x", "loss_weight": 0.5}, "only 0 (turn out of the loss) or 1"),
        ({"role": "user", "content": "x", "loss_weight": 1}, "only assistant turns can be in the loss"),
        ({"role": "user", "content": [{"type": "image_url", "value": "a.png"}]}, "'image_url' is not supported"),
        ({"role": "assistant", "content": [{"type": "tool_call", "value": "call it"}]}, "a tool call must be JSON"),
    ],
)
def test_bad_turns_are_refused_naming_the_rule(turn, message):
    record = {"messages": [{"role": "user", "content": "hi"}, turn] if turn["role"] == "assistant" else [turn, {"role": "assistant", "content": "ok"}]}
    with pytest.raises(FormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert_record(record, source_name="x", file="x.jsonl", index=3)


def test_sharegpt_turn_weights_and_openai_string_arguments():
    sharegpt = {"conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello", "loss_weight": 0},
        {"from": "human", "value": "bye"}, {"from": "gpt", "value": "bye"},
    ]}
    messages = convert_record(sharegpt, source_name="s", file="s.json", index=0)[0]["messages"]
    assert messages[1].get("loss_weight") == 0 and "loss_weight" not in messages[3]
    openai = {"messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ]}
    messages = convert_record(openai, source_name="o", file="o.json", index=0)[0]["messages"]
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert json.loads(messages[1]["content"]) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert messages[2]["tool_call_id"] == "c1"
