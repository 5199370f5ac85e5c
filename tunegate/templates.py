"""Prompt templates for models that ship without a chat template.

A template is a Jinja chat template set on the tokenizer and saved with the
model, so training, evaluation and later serving render prompts identically.
"""

from __future__ import annotations

# Each template starts with the BOS token: TRL and our evaluation tokenize the
# rendered text with add_special_tokens=False, so the template owns BOS and EOS.
CHAT_TEMPLATES: dict[str, str] = {
    "alpaca": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'tool' %}### Observation:\n{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'assistant' %}### Response:\n{{ message['content'] }}{{ eos_token }}"
        "{% if not loop.last %}\n\n{% endif %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}### Response:\n{% endif %}"
    ),
    "chatml": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}<|im_start|>assistant\n{{ message['content'] }}{{ eos_token }}"
        "{% if not loop.last %}\n{% endif %}"
        "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}


def chat_template(name: str) -> str:
    """Return the Jinja source of a named template, or raise with the allowed names."""
    try:
        return CHAT_TEMPLATES[name]
    except KeyError:
        allowed = ", ".join(sorted(CHAT_TEMPLATES))
        raise ValueError(f"unknown chat template {name!r}; allowed: {allowed}") from None
