"""Per-record facts the validation suite checks, computed column-wise with pandas.

``record_frame`` turns canonical records into one row each; every column is a
fact a Great Expectations expectation then checks. Pure: no files, no GE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    i = 1 if roles and roles[0] == "system" else 0
    if i >= len(roles):
        return False
    while i < len(roles):
        if roles[i] != "user":
            return False
        i += 1
        if i >= len(roles) or roles[i] != "assistant":
            return False
        i += 1
        while i < len(roles) and roles[i] == "tool":
            while i < len(roles) and roles[i] == "tool":
                i += 1
            if i >= len(roles) or roles[i] != "assistant":
                return False
            i += 1
    return roles[-1] == "assistant"


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
            # Digit runs of card length are common (ids, numbers): count only Luhn-valid ones.
            candidates = texts[hits].str.findall(pattern)
            hits.loc[hits] = candidates.map(lambda items: any(luhn_valid(x) for x in items))
        found = found.where(~hits, found + name + " ")
    return found.str.strip()


def record_frame(
    records: list[dict[str, Any]],
    *,
    token_counts: tuple[list[int], list[int]] | None,
    max_length: int,
    refusal_patterns: Sequence[str],
    coverage: Sequence[Any] = (),
    eval_prompt_keys: set[str] | None = None,
):
    """One row per record with every column the suite checks (vectorised where it counts)."""
    import pandas as pd

    from tunegate.formats import normalize_text

    roles = [[m["role"] for m in r["messages"]] for r in records]
    frame = pd.DataFrame(
        {
            "id": [str(r.get("id")) if r.get("id") is not None else None for r in records],
            "family": [str(r.get("family") or "") for r in records],
            "n_messages": [len(m) for m in roles],
            "unknown_roles": [sum(x not in ROLES for x in m) for m in roles],
            "roles_valid": [roles_valid(m) for m in roles],
            "user_text": ["\n".join(m["content"] for m in r["messages"] if m["role"] == "user") for r in records],
            "all_text": ["\n".join(m["content"] for m in r["messages"]) for r in records],
            "answer": [r["messages"][-1]["content"] if r["messages"] else "" for r in records],
            "min_user_chars": [min((len(m["content"].strip()) for m in r["messages"] if m["role"] == "user"), default=0) for r in records],
            "min_assistant_chars": [min((len(m["content"].strip()) for m in r["messages"] if m["role"] == "assistant"), default=0) for r in records],
        }
    )
    frame["prompt_key"] = pd.Series(
        [" | ".join(normalize_text(m["content"]) for m in r["messages"][:-1]) for r in records], dtype=str
    )
    frame["answer"] = frame["answer"].astype(str)  # keeps string dtype when there are no records
    answer_key = frame["answer"].map(normalize_text).astype(str)
    exact_key = pd.Series([repr([(m["role"], m["content"]) for m in r["messages"]]) for r in records])
    frame["dup_exact"] = exact_key.duplicated(keep="first")
    frame["dup_norm"] = (frame["prompt_key"] + " => " + answer_key).duplicated(keep="first") & ~frame["dup_exact"]
    answers_per_prompt = answer_key.groupby(frame["prompt_key"]).transform("nunique")
    frame["conflict"] = (answers_per_prompt > 1) & (frame["prompt_key"] != "")
    frame["in_eval"] = frame["prompt_key"].isin(eval_prompt_keys) if eval_prompt_keys else False

    if token_counts is not None:
        full_tokens, prompt_tokens = token_counts
        frame["n_tokens"] = full_tokens
        frame["prompt_tokens"] = prompt_tokens
    else:
        frame["n_tokens"] = 0
        frame["prompt_tokens"] = 0
    frame["too_long"] = frame["n_tokens"] > max_length
    frame["truncated_away"] = frame["prompt_tokens"] >= max_length

    text = frame["all_text"].astype(str)
    frame["pii_kinds"] = _any_match(text, PII_PATTERNS)
    frame["pii"] = frame["pii_kinds"] != ""
    frame["secret_kinds"] = _any_match(text, SECRET_PATTERNS)
    frame["secret"] = frame["secret_kinds"] != ""
    frame["placeholder"] = text.str.contains(PLACEHOLDER_PATTERN, regex=True)
    frame["control_chars"] = text.str.contains(CONTROL_PATTERN, regex=True)
    refusal = "|".join(f"(?:{p})" for p in refusal_patterns) if refusal_patterns else r"(?!x)x"
    frame["is_refusal"] = frame["answer"].str.strip().str.lower().str.contains(refusal, regex=True).astype(int)
    for rule in coverage:
        hit = pd.Series(False, index=frame.index)
        if rule.family:
            hit |= frame["family"] == rule.family
        if rule.pattern:
            hit |= frame["user_text"].astype(str).str.contains(rule.pattern, case=False, regex=True)
        frame[f"cov_{rule.name}"] = hit.astype(int)
    return frame.drop(columns=["user_text", "all_text"])


def count_record_tokens(tokenizer, records: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """(full length, prompt length) in tokens of each record rendered with the chat template.

    One tokenizer pass over the full texts; the prompt length is read off the offsets
    (tokens that start inside the rendered prompt), so no second pass is needed.
    """
    fulls, prompt_chars = [], []
    for record in records:
        messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False) if len(messages) > 1 else ""
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        fulls.append(full)
        prompt_chars.append(len(prompt))
    limit_before = tokenizer.model_max_length
    tokenizer.model_max_length = int(1e30)  # counting, not feeding a model: no over-length warning
    try:
        encoded = tokenizer(fulls, add_special_tokens=False, return_offsets_mapping=True)
    finally:
        tokenizer.model_max_length = limit_before
    full_lengths, prompt_lengths = [], []
    for offsets, limit in zip(encoded["offset_mapping"], prompt_chars):
        full_lengths.append(len(offsets))
        prompt_lengths.append(sum(1 for start, _ in offsets if start < limit))
    return full_lengths, prompt_lengths
