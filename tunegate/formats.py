"""Instruction-data formats in, one canonical chat record out.

Canonical record::

    {"id": "alpaca_en_demo-000017-3f2a9c1e",
     "messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...],
     "tools": str | None,            # JSON tool schema (ShareGPT tool-calling data)
     "source": {"file": str, "index": int, "format": str},
     "family": str}                  # task family or source name, for per-family metrics

Supported inputs (JSON list or JSONL): Alpaca, ShareGPT, OpenAI messages,
prompt/completion, and the self-instruct layout; ``detect_format`` picks one per
record unless params name it. Everything here is pure: no files are touched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

FORMATS = ("alpaca", "sharegpt", "openai", "prompt_completion", "self_instruct")

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class FormatError(ValueError):
    """A record that cannot be converted; ``rule`` says which rule it breaks."""

    def __init__(self, rule: str):
        super().__init__(rule)
        self.rule = rule


def apply_columns(record: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """Rename user field names to the format's: ``columns`` maps canonical name -> user's name."""
    if not columns:
        return dict(record)
    renamed = dict(record)
    for canonical, theirs in columns.items():
        if theirs in renamed:
            renamed[canonical] = renamed.pop(theirs)
    return renamed


def _refuse_unsupported(record: Any) -> None:
    """What no format converts, whether the format is detected or set: non-objects and preference pairs."""
    if not isinstance(record, dict):
        raise FormatError(f"must be a JSON object, got {type(record).__name__}")
    if {"chosen", "rejected"} <= set(record):
        raise FormatError("preference pair (chosen/rejected): preference data is not for SFT")


def detect_format(record: Any) -> str:
    """Name the format of one raw record, or raise :class:`FormatError`."""
    _refuse_unsupported(record)
    keys = set(record)
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "openai"
    if "instances" in keys and "instruction" in keys:
        return "self_instruct"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    raise FormatError(
        f"unknown format: keys {sorted(keys)} match none of {', '.join(FORMATS)} "
        "(set the source's format and columns in params)"
    )


def _text(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    raise FormatError(f"field {field!r} must be a string, got {type(value).__name__}")


def _openai_content(content: Any, field: str) -> str:
    """OpenAI content: a string, or a list of typed parts whose text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise FormatError(f"{field}: content part of type {kind!r} is not text")
        return "".join(texts)
    raise FormatError(f"{field} must be a string or a list of text parts, got {type(content).__name__}")


def _from_alpaca(record: dict[str, Any]) -> list[dict[str, Any]]:
    messages = []
    if record.get("system"):
        messages.append({"role": "system", "content": _text(record["system"], "system")})
    for turn, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise FormatError(f"history[{turn}] must be a [prompt, response] pair")
        messages.append({"role": "user", "content": _text(pair[0], f"history[{turn}][0]")})
        messages.append({"role": "assistant", "content": _text(pair[1], f"history[{turn}][1]")})
    instruction = _text(record["instruction"], "instruction")
    extra = _text(record.get("input") or "", "input")
    messages.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction})
    messages.append({"role": "assistant", "content": _text(record["output"], "output")})
    return messages


def _turns(record: dict[str, Any], field: str, role_key: str, roles: dict[str, str]):
    """Yield (turn index, turn object, canonical role) of a list of turns, checking its shape."""
    turns = record[field]
    if not isinstance(turns, list):
        raise FormatError(f"field {field!r} must be a list")
    for turn, item in enumerate(turns):
        if not isinstance(item, dict):
            raise FormatError(f"{field}[{turn}] must be an object")
        role = item.get(role_key)
        if role not in roles:
            raise FormatError(f"{field}[{turn}].{role_key} {role!r} is not one of {sorted(roles)}")
        yield turn, item, roles[role]


def _from_sharegpt(record: dict[str, Any]) -> list[dict[str, Any]]:
    messages = []
    if record.get("system"):
        messages.append({"role": "system", "content": _text(record["system"], "system")})
    for turn, item, role in _turns(record, "conversations", "from", SHAREGPT_ROLES):
        message = {"role": role, "content": _text(item.get("value"), f"conversations[{turn}].value")}
        if item["from"] == "function_call":
            message["tool_call"] = True
        messages.append(message)
    return messages


def _from_openai(record: dict[str, Any]) -> list[dict[str, Any]]:
    messages = []
    for turn, item, role in _turns(record, "messages", "role", OPENAI_ROLES):
        message = {"role": role, "content": _openai_content(item.get("content"), f"messages[{turn}].content")}
        if item.get("tool_calls"):
            message["tool_call"] = True
            if not message["content"]:
                message["content"] = json.dumps(item["tool_calls"], sort_keys=True)
        messages.append(message)
    return messages


def _from_prompt_completion(record: dict[str, Any]) -> list[dict[str, Any]]:
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, list):
        messages = _from_openai({"messages": prompt})
    else:
        messages = [{"role": "user", "content": _text(prompt, "prompt")}]
    if isinstance(completion, list):
        messages += _from_openai({"messages": completion})
    else:
        messages.append({"role": "assistant", "content": _text(completion, "completion")})
    return messages


def _self_instruct_records(record: dict[str, Any]) -> list[list[dict[str, Any]]]:
    instances = record["instances"]
    if not isinstance(instances, list) or not instances:
        raise FormatError("field 'instances' must be a non-empty list")
    out = []
    for n, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise FormatError(f"instances[{n}] must be an object")
        out.append(_from_alpaca({"instruction": record["instruction"], "input": instance.get("input") or "", "output": instance.get("output")}))
    return out


def normalize_text(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed: the key for near-duplicates.

    One definition for one text and for a whole column (``normalize_texts``), so keys
    computed either way always agree.
    """
    return normalize_texts([text])[0]


def normalize_texts(texts: list[str]) -> list[str]:
    from tunegate.checks import normalize_column

    return normalize_column(texts)


def prompt_keys(conversations: list[list[dict[str, Any]]]) -> list[str]:
    """Normalised text of every turn before the final answer, for many records at once."""
    return normalize_texts(["\n".join(m["content"] for m in messages[:-1]) for messages in conversations])


def content_hash(messages: list[dict[str, Any]]) -> str:
    body = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha1(body.encode("utf-8")).hexdigest()[:10]


def convert_record(
    record: Any,
    *,
    source_name: str,
    file: str,
    index: int,
    fmt: str = "auto",
    columns: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Convert one raw record to canonical records (self-instruct may yield several).

    Raises :class:`FormatError` with the broken rule; callers add file and index.
    """
    if isinstance(record, dict):
        record = apply_columns(record, columns or {})
    _refuse_unsupported(record)
    detected = detect_format(record) if fmt == "auto" else fmt
    if detected not in FORMATS:
        raise FormatError(f"unknown format {detected!r}; allowed: auto, {', '.join(FORMATS)}")
    try:
        if detected == "self_instruct":
            conversations = _self_instruct_records(record)
        else:
            converter = {
                "alpaca": _from_alpaca,
                "sharegpt": _from_sharegpt,
                "openai": _from_openai,
                "prompt_completion": _from_prompt_completion,
            }[detected]
            conversations = [converter(record)]
    except KeyError as missing:
        raise FormatError(f"{detected} record without field {missing}") from None
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, str):
        tools = json.dumps(tools, sort_keys=True)
    out = []
    for sub, messages in enumerate(conversations):
        suffix = f".{sub}" if len(conversations) > 1 else ""
        canonical = {
            "id": f"{source_name}-{index:06d}{suffix}-{content_hash(messages)}",
            "messages": messages,
            "source": {"file": file, "index": index, "format": detected},
            "family": str(record.get("family") or source_name),
        }
        if tools:
            canonical["tools"] = tools
        if "label" in record:
            canonical["label"] = record["label"]
        out.append(canonical)
    return out
