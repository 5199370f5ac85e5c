"""Tokenising chat records for training: labels on every assistant turn, nothing else.

The chat template renders the conversation; the characters of each assistant turn
(its content and the end-of-turn/EOS token the template appends) are located by
rendering the conversation up to that turn, and the tokens that start inside those
spans keep their ids as labels. Everything else is -100. The same template renders
prompts at evaluation and serving time, so training and inference agree.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

IGNORE = -100


class TemplateError(ValueError):
    """The chat template does not render conversations prefix-stably, so turns cannot be masked."""


class AllMaskedError(ValueError):
    """A training example with no trainable token (every label masked): it would teach nothing."""


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def trainable(self) -> int:
        return sum(label != IGNORE for label in self.labels)


@contextlib.contextmanager
def unbounded_length(tokenizer):
    """No over-length warning while counting tokens or before tunegate truncates (after masking) itself."""
    limit_before = tokenizer.model_max_length
    tokenizer.model_max_length = int(1e30)
    try:
        yield tokenizer
    finally:
        tokenizer.model_max_length = limit_before


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Role and content only: what the chat template renders."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render_prompt(tokenizer, plain: list[dict[str, Any]]) -> str:
    """The rendered text before the answer to ``plain`` (the turns so far plus the generation prompt)."""
    return tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False) if plain else ""


def assistant_spans(tokenizer, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    plain = plain_messages(messages)
    full = tokenizer.apply_chat_template(plain, tokenize=False)
    spans = []
    for i, message in enumerate(plain):
        if message["role"] != "assistant":
            continue
        start_text = render_prompt(tokenizer, plain[:i])
        end_text = tokenizer.apply_chat_template(plain[: i + 1], tokenize=False)
        if not (end_text.startswith(start_text) and full.startswith(end_text)):
            raise TemplateError(
                "the chat template renders a conversation differently from its prefixes "
                f"(assistant turn {i}); per-turn loss masks need a prefix-stable template"
            )
        spans.append((len(start_text), len(end_text)))
    return full, spans


def tokenize_conversation(tokenizer, messages: list[dict[str, Any]], max_length: int, last_turn_only: bool = False) -> TokenizedExample:
    """input_ids and labels of one conversation, truncated to ``max_length`` tokens (keep the start)."""
    full, spans = assistant_spans(tokenizer, messages)
    if last_turn_only:
        spans = spans[-1:]
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = []
    span_index = 0
    for token_id, (begin, _end) in zip(ids, encoded["offset_mapping"]):
        while span_index < len(spans) and begin >= spans[span_index][1]:
            span_index += 1
        inside = span_index < len(spans) and spans[span_index][0] <= begin < spans[span_index][1]
        labels.append(token_id if inside else IGNORE)
    return TokenizedExample(ids[:max_length], labels[:max_length])


def tokenize_records(tokenizer, records: list[dict[str, Any]], max_length: int, last_turn_only: bool = False) -> list[TokenizedExample]:
    """Tokenise every record; a record left with no trainable token fails, naming it."""
    with unbounded_length(tokenizer):
        examples = []
        for record in records:
            example = tokenize_conversation(tokenizer, record["messages"], max_length, last_turn_only)
            if example.trainable == 0:
                source = record.get("source") or {}
                where = f"{source.get('file', '?')} record {source.get('index', '?')} (id {record.get('id')})"
                raise AllMaskedError(
                    f"{where}: every label is masked after truncation to {max_length} tokens "
                    f"(the prompt fills the context); drop it with validation.rules.response_truncated=drop "
                    f"or raise train.max_length"
                )
            examples.append(example)
        return examples
