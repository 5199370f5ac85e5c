"""Preference data in, one canonical pair record out: the chosen/rejected pairs DPO tunes on (and KTO's
unpaired records), read like the SFT sources in :mod:`tunegate.data.sources`.

Canonical pair::

    {"id": "hh_harmless-000017-3f2a9c1e07",
     "prompt": [{"role": "system"|"user"|"assistant"|"tool", "content": str, ...}, ...],  # ends with user or tool
     "chosen": {"role": "assistant", "content": str, "tool_calls": [...]},   # tool_calls only on calls
     "rejected": {"role": "assistant", "content": str, "tool_calls": [...]},
     "source": {"file": str, "index": int, "format": str},
     "family": str,                    # the record's "family" or the source name
     "tools": str,                     # only with tool schemas (formats._tools_json)
     "prompt_mismatch": str}           # only where full-conversation pairs disagree on the prompt (see below)

Unpaired (KTO) record: ``{"id", "prompt", "completion": {"role": "assistant", "content"}, "label": bool,
"source", "family"}`` (and ``tools``).

Formats (``format: auto`` detects per record):

- ``trl``: ``{"prompt": str, "chosen": str, "rejected": str}``; conversational, ``{"prompt": [messages],
  "chosen": [one assistant message], "rejected": [...]}``; implicit prompt, ``{"chosen": [whole
  conversation], "rejected": [whole conversation]}``: the prompt is what precedes the last assistant turn;
- ``ranking_alpaca``: LLaMA-Factory ``{"instruction", "input", "chosen", "rejected", "system", "history"}``;
- ``ranking_sharegpt``: LLaMA-Factory ``{"conversations", "chosen": {"from", "value"}, "rejected", "system", "tools"}``;
- ``hh``: Anthropic HH ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}``;
- ``kto``: ``{"messages": [...], "label": bool}`` or TRL unpaired ``{"prompt", "completion", "label"}``.

Full-conversation pairs (``hh``, implicit-prompt ``trl``) whose two conversations disagree before the last
answer are not a pair of answers to one prompt: :func:`convert_preference_record` refuses them
(``prompt_mismatch: ...`` says where they diverge) or, for the reader, keeps them with that text under
``prompt_mismatch``, so that the validation rule of that name decides (error, warning, drop).

Conversion is pure; only :func:`read_preference_source` and :func:`build_preference_dataset` read files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tunegate.data.formats import (
    FormatError,
    _from_alpaca,
    _from_openai,
    _from_sharegpt,
    _text,
    _tools_json,
    apply_columns,
    normalize_texts,
    prompt_text,
)
from tunegate.data.digest import file_md5
from tunegate.data.sources import LoadedSource, data_error, iter_raw_records, split_eval
from tunegate.paths import repo_root

# No import of tunegate.params here, not even for types: training objectives read pairs through this module,
# and params checks train.objective against their registry (an import back would be a circle).
PREFERENCE_FORMATS = ("trl", "ranking_alpaca", "ranking_sharegpt", "hh", "kto")  # = tunegate.params.PREFERENCE_FORMATS
PAIRED_FORMATS = ("trl", "ranking_alpaca", "ranking_sharegpt", "hh")
# The fix a chat record read as preference data needs (the CLI adds `--kind chat`).
CHAT_IN_PREFERENCE = "SFT data goes under data.train; preference data needs chosen and rejected"

_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_ANSWER_KEYS = ("role", "content", "tool_calls")


def _clip(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def detect_preference_format(record: Any) -> str:
    """Name the preference format of one raw record, or raise :class:`FormatError` saying why none fits."""
    if not isinstance(record, dict):
        raise FormatError(f"must be a JSON object, got {type(record).__name__}")
    keys = set(record)
    if {"chosen", "rejected"} <= keys:
        if "conversations" in keys:
            return "ranking_sharegpt"
        if "instruction" in keys:
            return "ranking_alpaca"
        if "prompt" not in keys and isinstance(record["chosen"], str) and _HH_TURN.match(record["chosen"].lstrip(" ")):
            return "hh"
        return "trl"
    if "chosen" in keys or "rejected" in keys:
        have, missing = ("chosen", "rejected") if "chosen" in keys else ("rejected", "chosen")
        raise FormatError(f"preference record with {have!r} but no {missing!r}: a pair needs both answers")
    if "label" in keys and ({"messages", "conversations"} & keys or {"prompt", "completion"} <= keys):
        return "kto"
    for fields, shape in (
        ({"messages"}, "messages/conversations"),
        ({"conversations"}, "messages/conversations"),
        ({"instruction", "output"}, "instruction/output"),
        ({"prompt", "completion"}, "prompt/completion"),
    ):
        if fields <= keys:
            raise FormatError(f"chat record ({shape} without chosen/rejected): {CHAT_IN_PREFERENCE}")
    raise FormatError(
        f"unknown preference format: keys {sorted(keys)} match none of {', '.join(PREFERENCE_FORMATS)} "
        "(set the source's format and columns in params)"
    )


def _message(item: Any, field: str) -> dict[str, Any]:
    """One message given as an OpenAI ``{"role", "content"}`` or a ShareGPT ``{"from", "value"}`` object."""
    if not isinstance(item, dict):
        raise FormatError(f"{field} must be a message object, got {type(item).__name__}")
    if "from" in item and "role" not in item:
        messages = _from_sharegpt({"conversations": [item]})
    else:
        messages = _from_openai({"messages": [item]})
    if len(messages) != 1:  # a system turn that only carried tool schemas
        raise FormatError(f"{field} must be an assistant message")
    return messages[0]


def _answer(value: Any, field: str) -> dict[str, Any]:
    """The assistant answer a pair compares: text, one message, or a list of one message."""
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if isinstance(value, list):
        if not value:
            return {"role": "assistant", "content": ""}  # the non_empty rule names it
        if len(value) > 1:
            raise FormatError(f"{field}: {len(value)} messages; a pair compares one assistant answer "
                              "(earlier turns belong in the prompt)")
        value = value[0]
    message = _message(value, field)
    if message["role"] != "assistant":
        raise FormatError(f"{field}: the answer is a {message['role']} turn; it must be the assistant's")
    return {key: message[key] for key in _ANSWER_KEYS if key in message}


def _prompt_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The prompt is never in the loss: a loss_weight there means nothing.
    return [{k: v for k, v in m.items() if k != "loss_weight"} for m in messages]


def _prompt(value: Any, holder: dict[str, Any]) -> list[dict[str, Any]]:
    """A TRL prompt: text (one user turn) or messages; tool schemas carried by a system turn go to ``holder``."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        carrier = {"messages": value}
        messages = _from_openai(carrier)
        if "tools" in carrier:
            holder.setdefault("tools", carrier["tools"])
        return _prompt_turns(messages)
    raise FormatError(f"field 'prompt' must be a string or a list of messages, got {type(value).__name__}")


def _split_conversation(messages: list[dict[str, Any]], field: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(the turns before the last assistant turn, that turn) of a whole conversation ending with the answer."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise FormatError(f"{field}: no assistant turn to compare")
    if last != len(messages) - 1:
        raise FormatError(f"{field}: the conversation must end with the assistant's answer "
                          f"(turn {len(messages) - 1} is a {messages[-1]['role']} turn)")
    answer = messages[last]
    return _prompt_turns(messages[:last]), {key: answer[key] for key in _ANSWER_KEYS if key in answer}


def _divergence(chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> str | None:
    """Where two prompts differ, as the ``prompt_mismatch`` rule text; None when they agree."""
    for turn, (a, b) in enumerate(zip(chosen, rejected)):
        if (a["role"], a["content"]) != (b["role"], b["content"]):
            return (f"prompt_mismatch: chosen and rejected differ at turn {turn} (chosen: {a['role']} "
                    f"{_clip(a['content'])!r}; rejected: {b['role']} {_clip(b['content'])!r}); "
                    "a pair compares two answers to one prompt")
    if len(chosen) == len(rejected):
        return None
    longer, shorter = ("chosen", rejected) if len(chosen) > len(rejected) else ("rejected", chosen)
    extra = (chosen if longer == "chosen" else rejected)[len(shorter)]
    return (f"prompt_mismatch: chosen has {len(chosen)} turns before its answer, rejected {len(rejected)}; "
            f"{longer} goes on at turn {len(shorter)} ({extra['role']} {_clip(extra['content'])!r})")


Pair = tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], str | None]  # prompt, chosen, rejected, mismatch


def _shared_prompt(chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> Pair:
    prompt, chosen_answer = _split_conversation(chosen, "chosen")
    other, rejected_answer = _split_conversation(rejected, "rejected")
    return prompt, chosen_answer, rejected_answer, _divergence(prompt, other)


def _from_trl(record: dict[str, Any]) -> Pair:
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" in record:
        return _prompt(record["prompt"], record), _answer(chosen, "chosen"), _answer(rejected, "rejected"), None
    if isinstance(chosen, list) and isinstance(rejected, list):
        carrier: dict[str, Any] = {"messages": chosen}
        conversation = _from_openai(carrier)
        if "tools" in carrier:
            record.setdefault("tools", carrier["tools"])
        return _shared_prompt(conversation, _from_openai({"messages": rejected}))
    raise FormatError("trl record without 'prompt': chosen and rejected must then be whole conversations "
                      "(message lists) sharing the prompt; text answers need a prompt field")


def _hh_turns(text: Any, field: str) -> list[dict[str, Any]]:
    text = _text(text, field)
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise FormatError(f"{field}: an HH transcript starts with '\\n\\nHuman: ', got {_clip(text)!r}")
    turns: list[dict[str, Any]] = []
    for speaker, body in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if turns and turns[-1]["role"] == role:
            # The same speaker twice in a row (HH has assistants that go on): one turn, as templates that
            # insist on alternating roles need.
            turns[-1]["content"] += "\n\n" + body.strip()
        else:
            turns.append({"role": role, "content": body.strip()})
    if not turns:
        raise FormatError(f"{field}: no 'Human:' / 'Assistant:' turns")
    return turns


def _from_hh(record: dict[str, Any]) -> Pair:
    return _shared_prompt(_hh_turns(record["chosen"], "chosen"), _hh_turns(record["rejected"], "rejected"))


def _from_ranking_alpaca(record: dict[str, Any]) -> Pair:
    prompt = _from_alpaca({**record, "output": ""})[:-1]  # the alpaca turns without the (absent) output
    return prompt, _answer(record["chosen"], "chosen"), _answer(record["rejected"], "rejected"), None


def _from_ranking_sharegpt(record: dict[str, Any]) -> Pair:
    prompt = _prompt_turns(_from_sharegpt(record))
    return prompt, _answer(record["chosen"], "chosen"), _answer(record["rejected"], "rejected"), None


def _from_kto(record: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
    label = record["label"]
    if not isinstance(label, bool):
        raise FormatError(f"field 'label' must be true (desirable) or false (undesirable), got {label!r}")
    if "messages" in record:
        prompt, completion = _split_conversation(_from_openai(record), "messages")
    elif "conversations" in record:
        prompt, completion = _split_conversation(_from_sharegpt(record), "conversations")
    else:
        prompt, completion = _prompt(record["prompt"], record), _answer(record["completion"], "completion")
    return prompt, completion, label


_PAIR_CONVERTERS = {"trl": _from_trl, "hh": _from_hh, "ranking_alpaca": _from_ranking_alpaca,
                    "ranking_sharegpt": _from_ranking_sharegpt}


def _hash(parts: list[Any]) -> str:
    body = json.dumps(parts, ensure_ascii=False)
    return hashlib.sha1(body.encode("utf-8")).hexdigest()[:10]


def convert_preference_record(
    record: Any,
    *,
    source_name: str,
    file: str,
    index: int,
    fmt: str = "auto",
    columns: Mapping[str, str] | None = None,
    keep_mismatch: bool = False,
) -> dict[str, Any]:
    """Convert one raw record to a canonical pair (or unpaired KTO record).

    Raises :class:`FormatError` with the broken rule; callers add file and index. A full-conversation pair
    whose prompts differ raises ``prompt_mismatch: ...``, or with ``keep_mismatch`` comes back with that text
    under ``"prompt_mismatch"`` (the chosen side's prompt), for the validation rule of that name.
    """
    if isinstance(record, dict):
        record = apply_columns(record, columns or {})
    if fmt != "auto" and fmt not in PREFERENCE_FORMATS:
        raise FormatError(f"unknown preference format {fmt!r}; allowed: auto, {', '.join(PREFERENCE_FORMATS)}")
    if fmt == "auto" or not isinstance(record, dict):
        detected = detect_preference_format(record)
    elif fmt in PAIRED_FORMATS and not {"chosen", "rejected"} & set(record):
        # A chat or unpaired record under a pair format: say what it is rather than which field is missing.
        if detect_preference_format(record) == "kto":
            raise FormatError("unpaired record (label, no chosen/rejected): set the source's format: kto")
        detected = fmt
    else:
        detected = fmt
    try:
        if detected == "kto":
            prompt, completion, label = _from_kto(record)
            body: dict[str, Any] = {"prompt": prompt, "completion": completion, "label": label}
            digest = _hash([[m["role"], m["content"]] for m in prompt] + [completion["content"], label])
            mismatch = None
        else:
            prompt, chosen, rejected, mismatch = _PAIR_CONVERTERS[detected](record)
            body = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            digest = _hash([[m["role"], m["content"]] for m in prompt] + [chosen["content"], rejected["content"]])
    except KeyError as missing:
        raise FormatError(f"{detected} record without field {missing}") from None
    if mismatch and not keep_mismatch:
        raise FormatError(mismatch)
    canonical = {
        "id": f"{source_name}-{index:06d}-{digest}",
        **body,
        "source": {"file": file, "index": index, "format": detected},
        "family": str(record.get("family") or source_name),
    }
    tools = _tools_json(record.get("tools"))
    if tools:
        canonical["tools"] = tools
    if mismatch:
        canonical["prompt_mismatch"] = mismatch
    return canonical


def is_unpaired(record: Mapping[str, Any]) -> bool:
    """An unpaired (KTO) record: one completion with a label, no chosen/rejected."""
    return "completion" in record and "chosen" not in record


def _prompt_text(record: Mapping[str, Any]) -> str:
    # formats.prompt_text of the prompt turns plus a stand-in answer: the same text an SFT record with this
    # prompt gives, so pairs and SFT eval records are compared on one key. Malformed turns count as empty
    # text here (the schema rule names them).
    prompt = record.get("prompt")
    turns = [
        {"content": m["content"] if isinstance(m, dict) and isinstance(m.get("content"), str) else ""}
        for m in (prompt if isinstance(prompt, list) else [])
    ]
    try:
        return prompt_text({"messages": [*turns, {"content": ""}], "tools": record.get("tools")})
    except (TypeError, ValueError):  # tool schemas that are not JSON: the schema rule names them
        return prompt_text({"messages": [*turns, {"content": ""}]})


def pair_prompt_keys(records: list[Mapping[str, Any]]) -> list[str]:
    """:func:`pair_prompt_key` of many records at once."""
    return normalize_texts([_prompt_text(r) for r in records])


def pair_prompt_key(record: Mapping[str, Any]) -> str:
    """The normalised prompt (turns and tool schemas), for duplicates and train/eval overlap; equal to
    ``formats.prompt_keys`` of a chat record with the same prompt."""
    return pair_prompt_keys([record])[0]


class PreferenceSource(Protocol):
    """What the reader needs of a source: ``tunegate.params.PreferenceSource``."""

    path: str
    format: str
    columns: dict[str, str]
    max_records: int | None

    def source_name(self) -> str: ...


def preference_path(source: PreferenceSource, root: Path | None = None) -> Path:
    """The source's file: ``source.path`` as given when absolute, else under ``root`` (default: the repo root)."""
    path = Path(source.path)
    return path if path.is_absolute() else ((root or repo_root()) / path).resolve()


def read_preference_source(source: PreferenceSource, root: Path | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Canonical pairs of one source and counts (read, converted, prompt_mismatch).

    ``source.path`` is relative to ``root`` (default: the repo root) unless absolute; ``max_records`` takes
    the first that many records of the file. A record that cannot be converted raises
    :class:`~tunegate.data.sources.DataError` "FILE: record N: rule".
    """
    path = preference_path(source, root)
    name = source.source_name()
    records: list[dict[str, Any]] = []
    counts = {"read": 0, "converted": 0, "prompt_mismatch": 0}
    for index, raw in iter_raw_records(path):
        if source.max_records is not None and len(records) >= source.max_records:
            break
        counts["read"] += 1
        try:
            record = convert_preference_record(raw, source_name=name, file=str(path), index=index, fmt=source.format,
                                               columns=source.columns, keep_mismatch=True)
        except FormatError as error:
            raise data_error(path, index, error.rule) from None
        counts["prompt_mismatch"] += "prompt_mismatch" in record
        records.append(record)
    counts["converted"] = len(records)
    return records, counts


def split_preference_eval(records: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out ``fraction`` of the distinct prompts (seeded): every pair of a prompt lands on one side."""
    return split_eval(records, fraction, seed, keys=pair_prompt_keys(records))


@dataclass
class PreferenceDataset:
    """The preference pairs of a run: train, held-out eval, and the sources they came from."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    train_sources: list[LoadedSource]
    eval_sources: list[LoadedSource]

    def source_md5s(self) -> dict[str, str]:
        return {s.name: s.md5 for s in self.train_sources + self.eval_sources}

    def source_summary(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "path": s.path, "md5": s.md5, "split": split, **s.counts}
            for split, group in (("train", self.train_sources), ("eval", self.eval_sources))
            for s in group
        ]


def load_preference_sources(sources: list[PreferenceSource], root: Path | None = None) -> list[LoadedSource]:
    """Each source read, with its file's md5."""
    loaded = []
    for source in sources:
        records, counts = read_preference_source(source, root)
        path = preference_path(source, root)
        loaded.append(LoadedSource(source.source_name(), str(path), file_md5(path), counts, records))
    return loaded


def build_preference_dataset(params: Any) -> PreferenceDataset:
    """Read ``preference.data``: the train sources, and the eval sources or else a seeded
    ``eval_fraction`` of the train prompts held out. ``params``: the validated ``tunegate.params.Params``."""
    if params.preference is None:
        raise ValueError("no preference section in params: preference.data.train lists the chosen/rejected files")
    data = params.preference.data
    train_sources = load_preference_sources(data.train)
    eval_sources = load_preference_sources(data.eval)
    train = [r for s in train_sources for r in s.records]
    if eval_sources:
        evaluation = [r for s in eval_sources for r in s.records]
    else:
        train, evaluation = split_preference_eval(train, data.eval_fraction, params.project.seed)
    return PreferenceDataset(train, evaluation, train_sources, eval_sources)

