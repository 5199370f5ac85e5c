"""Chat templates: the model's own, or a built-in one for models that ship without.

A template is a Jinja chat template set on the tokenizer and saved with the model, so
training, evaluation and later serving render prompts identically. The tokenizer's own
template is used unless params name a built-in one (``model.chat_template``); a tokenizer
with none gets :data:`DEFAULT_TEMPLATE`. What was really used is recorded as
:func:`template_id`: the built-in's name, or ``tokenizer:<sha256 prefix>`` of the text.

Both built-ins render tool schemas (``tools=``) and assistant tool calls
(``message.tool_calls``) the way Qwen/Hermes-style models do: schemas as JSON lines in
the system part, each call as ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# Each template starts with the BOS token: tunegate tokenises the rendered text with
# add_special_tokens=False, so the template owns BOS and EOS.
_TOOLS_ALPACA = (
    "{% if tools %}### Tools:\nYou may call these functions; answer a call with "
    '<tool_call>{"name": ..., "arguments": ...}</tool_call>.\n'
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}\n{% endif %}"
)
_TOOL_CALLS = (
    "{% for call in message['tool_calls'] %}{% set fn = call['function'] if call['function'] is defined else call %}"
    '<tool_call>{"name": "{{ fn[\'name\'] }}", "arguments": {{ fn[\'arguments\'] | tojson }}}</tool_call>'
    "{% endfor %}"
)
_ASSISTANT_BODY = (
    "{% if message['tool_calls'] %}{% if message['content'] %}{{ message['content'] }}\n{% endif %}"
    + _TOOL_CALLS
    + "{% else %}{{ message['content'] }}{% endif %}"
)

CHAT_TEMPLATES: dict[str, str] = {
    "alpaca": (
        "{{ bos_token }}"
        + _TOOLS_ALPACA
        + "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'tool' %}### Observation:\n{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'assistant' %}### Response:\n" + _ASSISTANT_BODY + "{{ eos_token }}"
        "{% if not loop.last %}\n\n{% endif %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}### Response:\n{% endif %}"
    ),
    "chatml": (
        "{{ bos_token }}"
        "{% if tools %}<|im_start|>system\n"
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
        "# Tools\n\nYou may call one or more functions. Function signatures within <tools></tools>:\n<tools>"
        "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
        'Return each call as <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\n'
        "{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' and tools and loop.first %}"
        "{% elif message['role'] == 'assistant' %}<|im_start|>assistant\n" + _ASSISTANT_BODY + "{{ eos_token }}"
        "{% if not loop.last %}\n{% endif %}"
        "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}
DEFAULT_TEMPLATE = "alpaca"


def chat_template(name: str) -> str:
    """Return the Jinja source of a named template, or raise with the allowed names."""
    try:
        return CHAT_TEMPLATES[name]
    except KeyError:
        allowed = ", ".join(sorted(CHAT_TEMPLATES))
        raise ValueError(f"unknown chat template {name!r}; allowed: {allowed}") from None


def apply_template(tokenizer, name: str | None) -> str:
    """Set the template params ask for on ``tokenizer``; return its :func:`template_id`.

    ``name`` None: the tokenizer's own template, or :data:`DEFAULT_TEMPLATE` when it has
    none. A name: that built-in, also over a template of the tokenizer's own.
    """
    if name is not None:
        tokenizer.chat_template = chat_template(name)
    elif not tokenizer.chat_template:
        tokenizer.chat_template = chat_template(DEFAULT_TEMPLATE)
    return template_id(tokenizer.chat_template)


def template_id(text: str | None) -> str:
    """A built-in's name when ``text`` is one, else ``tokenizer:`` and the first 12 hex of its sha256."""
    if not text:
        return "none"
    if not isinstance(text, str):  # a dict of named templates (some tokenizers): hash them all
        text = repr(sorted(dict(text).items()))
    for name, source in CHAT_TEMPLATES.items():
        if text == source:
            return name
    return "tokenizer:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def supports_tools(tokenizer) -> bool:
    """Whether the template renders a ``tools`` list (else tunegate writes the schemas into the system turn)."""
    return "tools" in str(tokenizer.chat_template or "")


def supports_tool_calls(tokenizer) -> bool:
    """Whether the template renders ``message.tool_calls`` (else the call stays as JSON text)."""
    return "tool_calls" in str(tokenizer.chat_template or "")


_PROBE_USER, _PROBE_ANSWER = "tunegate probe question", "tunegate probe answer"


def end_of_turn(tokenizer) -> str | None:
    """The text the template puts right after an assistant turn's content to end it, or None.

    Found by rendering a probe conversation and reading the first token after the answer:
    a special token (``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ``<end_of_turn>``) or the EOS text.
    Whatever follows it (the ``\\n`` of ChatML, the ``▁\\n`` of Zephyr) is not part of the turn.
    """
    messages = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ANSWER}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    at = rendered.rfind(_PROBE_ANSWER)
    if at < 0:
        return None
    after = rendered[at + len(_PROBE_ANSWER) :]
    stripped = after.lstrip(" ")
    specials = sorted({str(t) for t in tokenizer.all_special_tokens} | set(_added_special(tokenizer)), key=len, reverse=True)
    for token in specials:
        if token and stripped.startswith(token):
            return token
    eos = tokenizer.eos_token
    if eos and stripped.startswith(eos):
        return eos
    return None


def _added_special(tokenizer) -> list[str]:
    """Added tokens marked special (e.g. ``<|im_end|>`` added to a base vocabulary)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return [str(t.content) for t in decoder.values() if getattr(t, "special", False)]


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Token ids that end generation: the tokenizer's EOS, the template's end-of-turn token and
    every EOS id of the model's ``generation_config``; sorted, without duplicates."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eot = end_of_turn(tokenizer)
    if eot is not None:
        eot_ids = tokenizer.convert_tokens_to_ids([eot])
        if eot_ids and eot_ids[0] is not None and eot_ids[0] != tokenizer.unk_token_id:
            ids.add(int(eot_ids[0]))
    configured = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    return sorted(ids)


def load_tokenizer(path: str | Path, template_name: str | None = None):
    """The tokenizer with the chat template params ask for (see :func:`apply_template`)
    and a pad token (unk, else EOS: padding is masked everywhere tunegate pads)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    apply_template(tokenizer, template_name)
    if tokenizer.pad_token is None:
        # stories260K and GPT-2 have no pad token; unk never occurs in the demo data.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer
