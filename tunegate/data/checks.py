"""Per-record facts the validation suite checks, computed column-wise with pandas.

``record_frame`` turns canonical records into one row each; every column is a
fact a Great Expectations expectation then checks. Pure: no files, no GE.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tunegate.data.formats import normalize_column, prompt_text
from tunegate.data.refusals import union_regex

ROLES = ("system", "user", "assistant", "tool")

# PII and secrets. Deliberately conservative patterns: each is a well-known shape.
PII_PATTERNS = {
    "email": r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b",
    "phone": r"(?:\+\d{1,3}[\s.-]?)?\(?\b\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b",
    "card_number": r"\b(?:\d[ -]?){13,19}\b",
}
SECRET_PATTERNS = {
    "aws_access_key": r"\bAKIA[0-9A-Z]{16}\b",
    "openai_key": r"\bsk-[A-Za-z0-9_-]{20,}\b",
    "github_token": r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",
    "slack_token": r"\bxox[abpors]-[A-Za-z0-9-]{10,}\b",
    "google_api_key": r"\bAIza[0-9A-Za-z_-]{35}\b",
    "private_key": r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP )?PRIVATE KEY",
}
PLACEHOLDER_PATTERN = r"\{\{\s*[A-Za-z_][\w.]*\s*\}\}|\{%.*?%\}|<<\s*[A-Za-z_]\w*\s*>>"
# C0 controls except tab, newline, carriage return; DEL; C1 controls.
CONTROL_PATTERN = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"

def roles_valid(roles: Sequence[str]) -> bool:
    """Optional system, then user turns each answered by an assistant block, ending with assistant.

    An assistant block is an assistant turn, optionally a tool call followed by tool
    results and a further assistant turn (ShareGPT function_call/observation).
    """
    codes = "".join(_ROLE_CODES.get(role, "?") for role in roles)
    return _CONVERSATION.fullmatch(codes) is not None


# system? then one or more (user, assistant, then any number of tool results + assistant) blocks
_ROLE_CODES = {"system": "s", "user": "u", "assistant": "a", "tool": "t"}
_CONVERSATION = re.compile(r"s?(?:ua(?:t+a)*)+")


def card_number_like(text: str) -> bool:
    """A payment card number: 13-19 digits, first digit 2-6 (Mastercard 2/5, Amex/JCB/Diners 3, Visa 4,
    Discover/UnionPay 6) and Luhn-valid. ISBN-13s (978/979...) are Luhn-valid too, but start with 9."""
    digits = "".join(c for c in text if c.isdigit())
    return digits[:1] in ("2", "3", "4", "5", "6") and luhn_valid(digits)


def luhn_valid(digits: str) -> bool:
    numbers = [int(c) for c in digits if c.isdigit()]
    if not 13 <= len(numbers) <= 19:
        return False
    total = 0
    for position, value in enumerate(reversed(numbers)):
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _any_match(texts, patterns: dict[str, str]):
    """Per row, the names of the patterns found (empty string when none)."""
    import pandas as pd

    found = pd.Series([""] * len(texts), index=texts.index, dtype=object)
    for name, pattern in patterns.items():
        hits = texts.str.contains(pattern, regex=True)
        if name == "card_number" and hits.any():
            # Digit runs of card length are common (ids, ISBNs): count only card-like, Luhn-valid ones.
            candidates = texts[hits].str.findall(pattern)
            hits.loc[hits] = candidates.map(lambda items: any(card_number_like(x) for x in items))
        found = found.where(~hits, found + name + " ")
    return found.str.strip()


def _facts(record: dict[str, Any]) -> tuple:
    """The per-record values everything else is computed from, in one pass over the record."""
    messages = record["messages"]
    roles = tuple(m["role"] for m in messages)
    contents = [m["content"] for m in messages]
    user = [c for r, c in zip(roles, contents) if r == "user"]
    assistant = [c for r, c in zip(roles, contents) if r == "assistant"]
    return (
        None if record.get("id") is None else str(record["id"]),
        str(record.get("family") or ""),
        roles,
        "\n".join(user),
        "\n".join(contents),
        contents[-1] if contents else "",
        prompt_text(record),  # earlier turns and the tool schemas: other tools, other prompt
        min((len(c.strip()) for c in user), default=0),
        min((len(c.strip()) for c in assistant), default=0),
        "\x1e".join(f"{r}\x1f{c}" for r, c in zip(roles, contents)),
    )


# A record this many times over the token limit is a broken file (a missing line break, a dumped log), not
# a long answer: validation.rules.runaway_length stops the run on it even where max_length drops or warns.
RUNAWAY_FACTOR = 8


def record_frame(
    records: list[dict[str, Any]],
    *,
    token_counts: tuple[list[int], list[int]] | None,
    max_length: int,
    refusal_patterns: Sequence[str],
    coverage: Sequence[Any] = (),
    eval_prompt_keys: set[str] | None = None,
):
    """One row per record with every column the suite checks.

    ``refusal_patterns``: the complete list (``ValidationParams.all_refusal_patterns()``), matched
    on the stripped, lowercased final answer like the safety suite's classifier.

    One Python pass extracts the raw values; normalisation, duplicate and conflict
    detection and every pattern check then run column-wise (pyarrow/RE2 through pandas).
    """
    import pandas as pd

    columns = list(zip(*[_facts(r) for r in records])) or [[] for _ in range(10)]
    ids, families, roles, user_text, all_text, answers, prompts, min_user, min_assistant, exact = columns
    valid = {t: roles_valid(t) for t in set(roles)}
    unknown = {t: sum(x not in ROLES for x in t) for t in set(roles)}
    frame = pd.DataFrame(
        {
            "id": pd.Series(ids, dtype=object),
            "family": pd.Series(families, dtype=str),
            "n_messages": pd.Series([len(t) for t in roles], dtype="int64"),
            "unknown_roles": pd.Series([unknown[t] for t in roles], dtype="int64"),
            "roles_valid": pd.Series([valid[t] for t in roles], dtype=bool),
            "min_user_chars": pd.Series(min_user, dtype="int64"),
            "min_assistant_chars": pd.Series(min_assistant, dtype="int64"),
        }
    )
    frame["prompt_key"] = pd.Series(normalize_column(prompts), dtype=str)
    answer_key = pd.Series(normalize_column(answers), dtype=str)
    frame["dup_exact"] = pd.Series(exact, dtype=str).duplicated(keep="first")
    frame["dup_norm"] = (frame["prompt_key"] + " => " + answer_key).duplicated(keep="first") & ~frame["dup_exact"]
    answers_per_prompt = answer_key.groupby(frame["prompt_key"]).transform("nunique")
    frame["conflict"] = (answers_per_prompt > 1) & (frame["prompt_key"] != "")
    frame["in_eval"] = frame["prompt_key"].isin(eval_prompt_keys) if eval_prompt_keys else False

    full_tokens, prompt_tokens = token_counts if token_counts is not None else ([0] * len(frame), [0] * len(frame))
    frame["n_tokens"] = pd.Series(full_tokens, dtype="int64")
    frame["prompt_tokens"] = pd.Series(prompt_tokens, dtype="int64")
    frame["too_long"] = frame["n_tokens"] > max_length
    frame["runaway"] = frame["n_tokens"] > RUNAWAY_FACTOR * max_length
    frame["truncated_away"] = frame["prompt_tokens"] >= max_length

    text = pd.Series(all_text, dtype=str)
    frame["pii_kinds"] = _any_match(text, PII_PATTERNS)
    frame["pii"] = frame["pii_kinds"] != ""
    frame["secret_kinds"] = _any_match(text, SECRET_PATTERNS)
    frame["secret"] = frame["secret_kinds"] != ""
    frame["placeholder"] = text.str.contains(PLACEHOLDER_PATTERN, regex=True)
    frame["control_chars"] = text.str.contains(CONTROL_PATTERN, regex=True)
    refusal = union_regex(list(refusal_patterns))  # the classifier's regex (tunegate.data.refusals)
    answer = pd.Series(answers, dtype=str)
    frame["is_refusal"] = answer.str.strip().str.lower().str.contains(refusal, regex=True).astype(int)
    users = pd.Series(user_text, dtype=str)
    for rule in coverage:
        hit = pd.Series(False, index=frame.index)
        if rule.family:
            hit |= frame["family"] == rule.family
        if rule.pattern:
            hit |= users.str.contains(rule.pattern, case=False, regex=True)
        frame[f"cov_{rule.name}"] = hit.astype(int)
    return frame


def count_record_tokens(tokenizer, records: list[dict[str, Any]], chunk_size: int = 2000) -> tuple[list[int], list[int]]:
    """(full length, prompt length) in tokens of each record rendered with the chat template.

    Batched: each chunk of records is rendered with the template compiled once
    (:func:`tunegate.data.tokenize.render_many_with_prompt`) and tokenised in one call of the fast
    tokenizer (:func:`tunegate.data.tokenize.token_offsets`); the prompt length is read off the offsets
    (tokens that start inside the rendered prompt), so no second pass is needed. The counts are
    :func:`count_record_tokens_per_record`'s, the reference (tests/data/test_token_counts.py).
    """
    from tunegate.data.tokenize import render_many_with_prompt, token_offsets, unbounded_length

    full_lengths: list[int] = []
    prompt_lengths: list[int] = []
    with unbounded_length(tokenizer):  # counting, not feeding a model
        # Chunks bound the memory the offset lists take; the result is the same.
        for start in range(0, len(records), chunk_size):
            rendered = render_many_with_prompt(tokenizer, records[start : start + chunk_size])
            offsets = token_offsets(tokenizer, [full for full, _ in rendered])
            for encoded, (_, prompt) in zip(offsets, rendered):
                limit = len(prompt)
                full_lengths.append(len(encoded))
                prompt_lengths.append(sum(1 for begin, _ in encoded if begin < limit))
    return full_lengths, prompt_lengths


def count_record_tokens_per_record(tokenizer, records: list[dict[str, Any]], chunk_size: int = 2000) -> tuple[list[int], list[int]]:
    """The reference for :func:`count_record_tokens`: each record rendered on its own with
    ``apply_chat_template`` (:func:`tunegate.data.tokenize.render_with_prompt`), tokenised with the
    tokenizer's own call."""
    from tunegate.data.tokenize import render_with_prompt, unbounded_length

    full_lengths: list[int] = []
    prompt_lengths: list[int] = []
    with unbounded_length(tokenizer):
        for start in range(0, len(records), chunk_size):
            fulls, prompt_chars = [], []
            for record in records[start : start + chunk_size]:
                full, prompt = render_with_prompt(tokenizer, record)
                fulls.append(full)
                prompt_chars.append(len(prompt))
            encoded = tokenizer(fulls, add_special_tokens=False, return_offsets_mapping=True)
            for offsets, limit in zip(encoded["offset_mapping"], prompt_chars):
                full_lengths.append(len(offsets))
                prompt_lengths.append(sum(1 for begin, _ in offsets if begin < limit))
    return full_lengths, prompt_lengths
