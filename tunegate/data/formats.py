"""Instruction-data formats in, one canonical chat record out.

Canonical record::

    {"id": "alpaca_en_demo-000017-3f2a9c1e",
     "messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str,
                   "tool_calls": [{"type": "function", "function": {"name", "arguments": {...}}}],  # calls only
                   "loss_weight": 0}, ...],   # only on assistant turns kept out of the loss
     "tools": str | None,            # JSON tool schemas (ShareGPT/OpenAI/LLaMA-Factory tool-calling data)
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


# A preference pair in SFT data: the file-level fix (the CLI adds `--kind preference`).
PREFERENCE_IN_SFT = ("preference pair (chosen/rejected): preference data is not for SFT: list the file under "
                     "preference.data.train and set train.objective: dpo")


def _refuse_unsupported(record: Any) -> None:
    """What no format converts, whether the format is detected or set: non-objects and preference pairs
    (those are read by :mod:`tunegate.data.preference`)."""
    if not isinstance(record, dict):
        raise FormatError(f"must be a JSON object, got {type(record).__name__}")
    if {"chosen", "rejected"} <= set(record):
        raise FormatError(PREFERENCE_IN_SFT)


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


def _part_text(part: dict[str, Any]) -> Any:
    """A typed part's text: OpenAI puts it under ``text``, LLaMA-Factory v1 under ``value``."""
    return part["text"] if "text" in part else part.get("value")


def _openai_content(content: Any, field: str) -> tuple[str, list[dict[str, Any]], Any]:
    """OpenAI / LLaMA-Factory v1 content: a string, or typed parts.

    Returns (text of the text parts, tool calls from ``tool_call`` parts, tool schemas from a
    ``tools`` part or None). Media and reasoning parts are refused: this pipeline tunes on text.
    """
    if content is None:
        return "", [], None
    if isinstance(content, str):
        return content, [], None
    if not isinstance(content, list):
        raise FormatError(f"{field} must be a string or a list of typed parts, got {type(content).__name__}")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    tools = None
    for n, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        value = _part_text(part) if isinstance(part, dict) else None
        if kind == "text" and isinstance(value, str):
            texts.append(value)
        elif kind == "tool_call" and value is not None:
            calls += tool_calls_from(value, f"{field}[{n}]")
        elif kind == "tools" and value is not None:
            tools = value
        elif kind in ("text", "tool_call", "tools"):
            raise FormatError(f"{field}[{n}]: {kind} part without a string 'text' or 'value'")
        else:
            raise FormatError(
                f"{field}[{n}]: content part of type {kind!r} is not supported (text, tool_call and tools parts are; "
                "images, audio, video and reasoning are not)"
            )
    return "".join(texts), calls, tools


def tool_calls_from(value: Any, field: str) -> list[dict[str, Any]]:
    """Tool calls in the form chat templates take: ``[{"type": "function", "function": {"name", "arguments": {...}}}]``.

    Accepts a JSON string or object of one call ``{"name", "arguments"}`` (ShareGPT ``function_call``,
    LLaMA-Factory), a list of them, or OpenAI ``tool_calls`` entries (``arguments`` as a JSON string).
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise FormatError(f'{field}: a tool call must be JSON {{"name": ..., "arguments": {{...}}}}, got text') from None
    items = value if isinstance(value, list) else [value]
    calls = []
    for n, item in enumerate(items):
        fn = item.get("function", item) if isinstance(item, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise FormatError(f"{field}: tool call {n} has no function name")
        arguments = fn.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise FormatError(f"{field}: arguments of tool call {fn['name']!r} are not JSON") from None
        call: dict[str, Any] = {"type": "function", "function": {"name": fn["name"], "arguments": arguments}}
        if isinstance(item, dict) and item.get("id"):
            call["id"] = str(item["id"])
        calls.append(call)
    return calls


def _calls_text(calls: list[dict[str, Any]]) -> str:
    """The calls as JSON text: the turn's content for checks, and for templates without tool-call support."""
    plain = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls]
    return json.dumps(plain[0] if len(plain) == 1 else plain, ensure_ascii=False)


def _loss_weight(item: dict[str, Any], role: str, field: str) -> int | None:
    """A turn's ``loss_weight`` (LLaMA-Factory) or ``weight`` (Axolotl): 0 keeps an assistant turn out of
    the loss, 1 keeps it in. Anything else is refused rather than silently ignored."""
    key = "loss_weight" if "loss_weight" in item else "weight" if "weight" in item else None
    if key is None:
        return None
    value = item[key]
    if isinstance(value, bool) or value not in (0, 1):
        raise FormatError(f"{field}.{key} {value!r}: only 0 (turn out of the loss) or 1 (in the loss) are supported")
    if role != "assistant" and value == 1:
        raise FormatError(f"{field}.{key} 1 on a {role} turn: only assistant turns can be in the loss")
    return int(value) if role == "assistant" else None


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


def _with_weight(message: dict[str, Any], item: dict[str, Any], field: str) -> dict[str, Any]:
    if _loss_weight(item, message["role"], field) == 0:
        message["loss_weight"] = 0
    return message


def _from_sharegpt(record: dict[str, Any]) -> list[dict[str, Any]]:
    messages = []
    if record.get("system"):
        messages.append({"role": "system", "content": _text(record["system"], "system")})
    for turn, item, role in _turns(record, "conversations", "from", SHAREGPT_ROLES):
        field = f"conversations[{turn}]"
        message = {"role": role, "content": _text(item.get("value"), f"{field}.value")}
        if item["from"] == "function_call":
            message["tool_calls"] = tool_calls_from(message["content"], f"{field}.value")
        messages.append(_with_weight(message, item, field))
    return messages


def _from_openai(record: dict[str, Any]) -> list[dict[str, Any]]:
    messages = []
    for turn, item, role in _turns(record, "messages", "role", OPENAI_ROLES):
        field = f"messages[{turn}]"
        text, calls, tools = _openai_content(item.get("content"), f"{field}.content")
        if item.get("tool_calls"):
            calls += tool_calls_from(item["tool_calls"], f"{field}.tool_calls")
        if tools is not None:
            record.setdefault("tools", tools)
            if role == "system" and not text:
                continue  # a system turn that only carried the tool schemas
        message: dict[str, Any] = {"role": role, "content": text}
        if calls:
            message["tool_calls"] = calls
            message["content"] = text or _calls_text(calls)
        for key in ("name", "tool_call_id"):
            if isinstance(item.get(key), str):
                message[key] = item[key]
        messages.append(_with_weight(message, item, field))
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
    return normalize_column(texts)


def normalize_column(values):
    """Vectorised :func:`normalize_text` over a column (pyarrow compute)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = pa.array(list(values), type=pa.large_string())
    array = pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(array), r"[^\p{L}\p{N}_\s]", " "))
    return pc.binary_join(pc.utf8_split_whitespace(array), pa.scalar(" ", pa.large_string())).to_pylist()


def prompt_text(record: dict[str, Any]) -> str:
    """What the model sees before the final answer: the tool schemas (normalised JSON) and every earlier turn.

    Records with the same turns but different tools are different prompts.
    """
    turns = "\n".join(m["content"] for m in record["messages"][:-1])
    tools = record.get("tools")
    if not tools:
        return turns
    parsed = json.loads(tools) if isinstance(tools, str) else tools
    return json.dumps(parsed, sort_keys=True, ensure_ascii=False) + "\n" + turns


def prompt_keys(records: list[dict[str, Any]]) -> list[str]:
    """Normalised :func:`prompt_text` of many records at once (duplicates, conflicts, train/eval overlap)."""
    return normalize_texts([prompt_text(r) for r in records])


def content_hash(messages: list[dict[str, Any]]) -> str:
    body = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha1(body.encode("utf-8")).hexdigest()[:10]


def _tools_json(tools: Any) -> str | None:
    """Tool schemas as canonical JSON text (sorted keys), None when there are none."""
    if tools is None or tools == "":
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise FormatError("field 'tools' is not JSON (a list of function schemas)") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise FormatError("field 'tools' must be a list of function schemas (JSON objects)")
    return json.dumps(tools, sort_keys=True, ensure_ascii=False) if tools else None


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
    tools = _tools_json(record.get("tools"))
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
