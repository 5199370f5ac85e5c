"""Rendering chat records through the template, and tokenising them for training.

Every render of a canonical record (training text, masks, token counts, evaluation
prompts) goes through :func:`template_messages` and :func:`render`, so tools reach the
template as ``tools=`` and tool calls as ``tool_calls`` wherever the template supports
them, identically in training, evaluation and serving.

Labels: each assistant turn's characters — from the end of the generation prompt up to
and including the template's end-of-turn token (:func:`tunegate.data.templates.end_of_turn`),
nothing after it — keep their token ids; everything else is -100. Turns with
``loss_weight`` 0 are left out of the loss.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from tunegate.data.templates import end_of_turn, supports_tool_calls, supports_tools

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


def record_tools(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The record's tool schemas as the list ``apply_chat_template(tools=...)`` takes, or None."""
    raw = record.get("tools")
    if not raw:
        return None
    tools = json.loads(raw) if isinstance(raw, str) else raw
    if isinstance(tools, dict):
        tools = [tools]
    return [t if "function" in t and t.get("type", "function") == "function" else {"type": "function", "function": t} for t in tools]


def template_messages(tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Canonical messages as the template takes them: role and content; tool calls as ``tool_calls``
    when the template renders them (else their JSON text); with tools the template cannot render,
    the schemas are written into the system turn so the model still sees them."""
    native_calls = supports_tool_calls(tokenizer)
    out = []
    for m in messages:
        message: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls") and native_calls:
            message = {"role": m["role"], "content": "", "tool_calls": m["tool_calls"]}
        for key in ("name", "tool_call_id"):
            if m.get(key):
                message[key] = m[key]
        out.append(message)
    if tools and not supports_tools(tokenizer):
        schema = "Available tools (JSON schemas):\n" + "\n".join(json.dumps(t, ensure_ascii=False, sort_keys=True) for t in tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{schema}"}
        else:
            out.insert(0, {"role": "system", "content": schema})
    return out


def render(tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, *, generation_prompt: bool = False) -> str:
    """The template's text for template-ready ``messages`` (see :func:`template_messages`)."""
    if not messages:
        return ""
    kwargs: dict[str, Any] = {"tools": tools} if tools and supports_tools(tokenizer) else {}
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False, **kwargs)


def render_record(tokenizer, record: dict[str, Any]) -> str:
    """The whole conversation of a canonical record as the model is trained on it."""
    tools = record_tools(record)
    return render(tokenizer, template_messages(tokenizer, record["messages"], tools), tools)


def render_prompt_of(tokenizer, record: dict[str, Any]) -> str:
    """Everything before the record's final answer, with the generation prompt: what the model sees at evaluation."""
    tools = record_tools(record)
    messages = template_messages(tokenizer, record["messages"], tools)
    return render(tokenizer, messages[:-1], tools, generation_prompt=True)


def render_with_prompt(tokenizer, record: dict[str, Any]) -> tuple[str, str]:
    """(:func:`render_record`, :func:`render_prompt_of`) of one record, its tools parsed and turns converted once."""
    tools = record_tools(record)
    messages = template_messages(tokenizer, record["messages"], tools)
    return render(tokenizer, messages, tools), render(tokenizer, messages[:-1], tools, generation_prompt=True)


def render_many_with_prompt(tokenizer, records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """:func:`render_with_prompt` of each record: the same texts, with less work per record.

    The template is compiled once and rendered straight through Jinja with the very variables
    ``apply_chat_template`` gives it (:class:`_DirectTemplate`), skipping its per-call set-up. A
    record the direct render does not take as it is (a value that is not plain JSON, a template
    error) is rendered by :func:`render_with_prompt`, so its text or its error is today's.
    """
    direct = _DirectTemplate.for_tokenizer(tokenizer)
    if direct is None:
        return [render_with_prompt(tokenizer, record) for record in records]
    out = []
    for record in records:
        tools = record_tools(record)
        messages = template_messages(tokenizer, record["messages"], tools)
        pair = direct.render_with_prompt(messages, tools)
        out.append(pair if pair is not None else render_with_prompt(tokenizer, record))
    return out


_MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "name", "tool_call_id"})  # what template_messages writes


def _plain_json(value: Any) -> bool:
    """Whether ``value`` is made of JSON types only (what transformers' sandbox copy leaves as it is)."""
    kind = type(value)
    if value is None or kind in (str, int, float, bool):
        return True
    if kind is dict:
        return all(_plain_json(k) and _plain_json(v) for k, v in value.items())
    if kind in (list, tuple):
        return all(_plain_json(v) for v in value)
    return False


class _DirectTemplate:
    """The tokenizer's chat template, compiled once (transformers' own compiled, sandboxed template)
    and rendered with what ``tokenizer.apply_chat_template(messages, tools=..., tokenize=False)``
    passes it: ``messages``, ``tools``, ``documents`` (None), ``add_generation_prompt`` and the
    special tokens, over the template's globals; the same context Jinja's ``Template.render`` builds.
    """

    def __init__(self, tokenizer, compile_template):
        self.tokenizer = tokenizer
        self.compile = compile_template
        self.native_tools = supports_tools(tokenizer)
        self.special = dict(tokenizer.special_tokens_map)
        self.compiled: dict[str, tuple[Any, dict[str, Any]]] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer) -> _DirectTemplate | None:
        """None where the direct render cannot promise apply_chat_template's text (other transformers internals)."""
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template
        except ImportError:
            return None
        special = getattr(tokenizer, "special_tokens_map", None)
        if not callable(getattr(tokenizer, "get_chat_template", None)) or not isinstance(special, dict):
            return None
        if not all(type(v) is str for v in special.values()):
            return None
        return cls(tokenizer, _compile_jinja_template)

    def _template(self, tools: list[dict[str, Any]] | None) -> tuple[Any, dict[str, Any]] | None:
        source = self.tokenizer.get_chat_template(None, tools)
        entry = self.compiled.get(source)
        if entry is None:
            template = self.compile(source)
            if template.environment.is_async:
                return None
            entry = (template, {**template.globals, **self.special, "documents": None})
            self.compiled[source] = entry
        return entry

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, generation_prompt: bool) -> str | None:
        if not messages:
            return ""  # as :func:`render`
        try:
            entry = self._template(tools)
            if entry is None:
                return None
            template, base = entry
            variables = dict(base)
            variables.update(messages=messages, tools=tools, add_generation_prompt=generation_prompt)
            return template.environment.concat(template.root_render_func(template.new_context(variables, shared=True)))
        except Exception:  # no template, a template error: the reference render raises it as apply_chat_template does
            return None

    def takes(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> tuple[bool, list[dict[str, Any]] | None]:
        """(whether the direct render takes template-ready ``messages`` and ``tools`` as they are,
        the ``tools`` it passes the template: None where :func:`render` passes none)."""
        for m in messages:
            if type(m) is not dict or not m.keys() <= _MESSAGE_KEYS or any(type(v) is not str for k, v in m.items() if k != "tool_calls"):
                return False, None
            if "tool_calls" in m and not _plain_json(m["tool_calls"]):
                return False, None
        tools = tools if tools and self.native_tools else None
        if tools is not None and not (all(type(t) is dict for t in tools) and _plain_json(tools)):
            return False, None
        return True, tools

    def render_with_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> tuple[str, str] | None:
        """(full, prompt) as :func:`render_with_prompt` renders them, or None: render it that way."""
        ok, tools = self.takes(messages, tools)
        if not ok:
            return None
        full = self.render(messages, tools, False)
        prompt = self.render(messages[:-1], tools, True) if full is not None else None
        return None if prompt is None else (full, prompt)


def token_offsets(tokenizer, texts: list[str]) -> list[list[tuple[int, int]]]:
    """``tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]``,
    read as :func:`token_ids_offsets` reads them."""
    return [offsets for _, offsets in token_ids_offsets(tokenizer, texts)]


def token_ids_offsets(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(input_ids, offset_mapping) of each text as ``tokenizer(text, add_special_tokens=False,
    return_offsets_mapping=True)`` gives them.

    A fast tokenizer's are read straight from its Rust encodings in one batch, without the per-token
    Python lists (attention mask) the call builds; its backend set up first by a call on an empty
    text (no truncation, no padding, special-token splitting as the tokenizer says).
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        tokenizer([""], add_special_tokens=False)
        if backend.truncation is None and backend.padding is None:
            return [(encoding.ids, encoding.offsets) for encoding in backend.encode_batch(texts, add_special_tokens=False)]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(encoded["input_ids"], encoded["offset_mapping"]))


def assistant_spans(tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, eot: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn with a loss.

    A span starts where the generation prompt before the turn ends and ends right after the
    template's end-of-turn text (``eot``); turns with ``loss_weight`` 0 have no span.
    """
    eot = end_of_turn(tokenizer) if eot is None else eot
    view = template_messages(tokenizer, messages, tools)
    offset = len(view) - len(messages)  # a system turn added for tool schemas
    full = render(tokenizer, view, tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("loss_weight", 1) == 0:
            continue
        j = i + offset
        start_text = render(tokenizer, view[:j], tools, generation_prompt=True)
        end_text = render(tokenizer, view[: j + 1], tools)
        if not (end_text.startswith(start_text) and full.startswith(end_text)):
            raise TemplateError(
                "the chat template renders a conversation differently from its prefixes "
                f"(assistant turn {i}); per-turn loss masks need a prefix-stable template"
            )
        spans.append((len(start_text), turn_end(end_text, len(start_text), message["content"], eot)))
    return full, spans


def turn_end(text: str, start: int, content: str, eot: str | None) -> int:
    """Where the assistant turn starting at ``start`` ends: after its end-of-turn text (searched from
    the end of its content when the template shows the content verbatim), else after the content."""
    found = text.find(content, start) if content else -1
    search_from = found + len(content) if found >= 0 else start
    if eot:
        at = text.find(eot, search_from)
        if at >= 0:
            return at + len(eot)
    return search_from if found >= 0 else len(text.rstrip())


def tokenize_conversation(
    tokenizer, messages: list[dict[str, Any]], max_length: int, last_turn_only: bool = False,
    tools: list[dict[str, Any]] | None = None, eot: str | None = None,
) -> TokenizedExample:
    """input_ids and labels of one conversation, truncated to ``max_length`` tokens (keep the start)."""
    full, spans = assistant_spans(tokenizer, messages, tools, eot)
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


def span_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """The labels :func:`tokenize_conversation` gives tokens ``ids`` starting at ``offsets``: a token's
    id where it starts inside the span the scan over ``spans`` is at, else IGNORE.

    The same scan, with less work per token: a span is only looked up again once a token starts
    at or after the end of the current one (the scan never goes back), and once past the last
    span every label is IGNORE. A token's label depends on it and the tokens before it only, so
    the labels of a prefix of the tokens are the prefix of the labels.
    """
    count = min(len(ids), len(offsets))
    n = len(spans)
    if n == 0:
        return [IGNORE] * count
    labels: list[int] = []
    append = labels.append
    index = 0
    low, high = spans[0]
    for k, (token_id, (begin, _end)) in enumerate(zip(ids, offsets)):
        if begin >= high:
            index += 1
            while index < n and begin >= spans[index][1]:
                index += 1
            if index == n:
                labels += [IGNORE] * (count - k)
                break
            low, high = spans[index]
        append(token_id if low <= begin else IGNORE)  # begin < high here
    return labels


TOKENIZE_CHUNK = 2000  # records rendered and tokenised per batch: bounds the memory the encodings take


def tokenize_records(tokenizer, records: list[dict[str, Any]], max_length: int, last_turn_only: bool = False) -> list[TokenizedExample]:
    """Tokenise every record; a record left with no trainable token fails, naming it.

    Batched: each chunk of records is rendered with the template compiled once
    (:class:`_DirectTemplate`: the full conversation and the prefixes :func:`assistant_spans`
    renders) and tokenised in one call of the fast tokenizer (:func:`token_ids_offsets`). A record
    the batched path cannot promise the reference's result for (content the direct render does not
    take as it is, a template error, a template that is not prefix-stable, any other error) goes
    through :func:`tokenize_conversation` as in :func:`tokenize_records_per_record`, in its turn,
    so its example or its error is the reference's (tests/data/test_tokenize_batch.py).
    """
    return _tokenize_records_batched(tokenizer, records, max_length, last_turn_only, TOKENIZE_CHUNK)


def tokenize_records_per_record(tokenizer, records: list[dict[str, Any]], max_length: int, last_turn_only: bool = False) -> list[TokenizedExample]:
    """The reference for :func:`tokenize_records`: each record rendered with ``apply_chat_template``
    and tokenised with the tokenizer's own call, one at a time."""
    eot = end_of_turn(tokenizer)
    with unbounded_length(tokenizer):
        examples = []
        for record in records:
            example = tokenize_conversation(
                tokenizer, record["messages"], max_length, last_turn_only, tools=record_tools(record), eot=eot
            )
            _check_trainable(record, example, max_length)
            examples.append(example)
        return examples


def _check_trainable(record: dict[str, Any], example: TokenizedExample, max_length: int) -> None:
    """Raise :class:`AllMaskedError`, naming the record, when ``example`` has no trainable token."""
    if example.trainable == 0:
        source = record.get("source") or {}
        where = f"{source.get('file', '?')} record {source.get('index', '?')} (id {record.get('id')})"
        weights_off = all(m.get("loss_weight", 1) == 0 for m in record["messages"] if m["role"] == "assistant")
        why = (
            "every assistant turn has loss_weight 0" if weights_off else
            f"every label is masked after truncation to {max_length} tokens (the prompt fills the context); "
            "drop it with validation.rules.response_truncated=drop or raise train.max_length"
        )
        raise AllMaskedError(f"{where}: {why}")


def _batched_tokenizer(tokenizer) -> bool:
    """Whether the tokenizer's call is transformers' own fast-tokenizer call (what :func:`token_ids_offsets` reads directly)."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return False
    if not (isinstance(tokenizer, TokenizersBackend) and getattr(tokenizer, "is_fast", False)):
        return False
    cls = type(tokenizer)
    return all(getattr(cls, name) is getattr(TokenizersBackend, name) for name in ("__call__", "_encode_plus", "_convert_encoding"))


def _tokenize_records_batched(
    tokenizer, records: list[dict[str, Any]], max_length: int, last_turn_only: bool, chunk_size: int,
) -> list[TokenizedExample]:
    direct = _DirectTemplate.for_tokenizer(tokenizer)
    if direct is None or not _batched_tokenizer(tokenizer) or type(records) not in (list, tuple):
        return tokenize_records_per_record(tokenizer, records, max_length, last_turn_only)
    eot = end_of_turn(tokenizer)
    examples: list[TokenizedExample] = []
    with unbounded_length(tokenizer):
        for start in range(0, len(records), max(1, chunk_size)):
            chunk = records[start : start + max(1, chunk_size)]
            planned = [_planned_spans(direct, tokenizer, record, eot) for record in chunk]
            try:
                encodings = token_ids_offsets(tokenizer, [plan[0] for plan in planned if plan is not None])
            except Exception:  # a text the tokenizer refuses: the reference raises it at its record
                examples += tokenize_records_per_record(tokenizer, chunk, max_length, last_turn_only)
                continue
            encoded = iter(encodings)
            for record, plan in zip(chunk, planned):
                if plan is None:
                    example = tokenize_conversation(
                        tokenizer, record["messages"], max_length, last_turn_only, tools=record_tools(record), eot=eot
                    )
                else:
                    ids, offsets = next(encoded)
                    spans = plan[1][-1:] if last_turn_only else plan[1]
                    ids = ids[:max_length]
                    example = TokenizedExample(ids, span_labels(ids, offsets[: len(ids)], spans))
                _check_trainable(record, example, max_length)
                examples.append(example)
    return examples


def _planned_spans(direct: _DirectTemplate, tokenizer, record: dict[str, Any], eot: str | None) -> tuple[str, list[tuple[int, int]]] | None:
    """:func:`assistant_spans` of the record through the compiled template, or None: take the reference path."""
    try:
        messages = record["messages"]
        if type(messages) is not list or not all(type(m) is dict for m in messages):
            return None
        tools = record_tools(record)
        view = template_messages(tokenizer, messages, tools)
        ok, template_tools = direct.takes(view, tools)
        if not ok:
            return None
        offset = len(view) - len(messages)
        full = direct.render(view, template_tools, False)
        if full is None:
            return None
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or message.get("loss_weight", 1) == 0:
                continue
            j = i + offset
            start_text = direct.render(view[:j], template_tools, True)
            end_text = full if j + 1 == len(view) else direct.render(view[: j + 1], template_tools, False)
            if start_text is None or end_text is None:
                return None
            if not (end_text.startswith(start_text) and full.startswith(end_text)):
                return None  # the reference raises its TemplateError
            spans.append((len(start_text), turn_end(end_text, len(start_text), message["content"], eot)))
        return full, spans
    except Exception:
        return None
