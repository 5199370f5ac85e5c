"""Benchmark: validating 100k generated records (mixed lengths).

Run: .venv/bin/python bench/validate.py [--records 100000]

Measures, in one run on the same records:
  * tunegate's path: conversion to canonical records, token counting through the chat
    template, the per-record facts (pandas, column-wise) and the Great Expectations suite;
  * the same rules evaluated row by row in plain Python (a loop with ``re`` per record),
    fed the same token counts;
and reports records/s, the speed-up of the column-wise rules over the row-by-row ones,
and the process's peak resident memory. Then, on the same records, the per-record token
counting it replaced (``count_record_tokens_per_record``: ``apply_chat_template`` one record at a
time, the tokenizer's own call): its time, the speed-up of the batched counting over it, and
whether the counts and the suite's findings (every rule's result and offenders) are identical.

Token counting runs as in the pipeline: the tokenizers library's own thread pool off
(``TOKENIZERS_PARALLELISM=false``, as ``tunegate.paths.configure_environment`` sets it) unless the
environment says otherwise. The last line printed is one JSON object; a one-line summary goes to
stderr. Exits non-zero when the counts or the findings differ.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as tunegate's runs have it (tunegate.paths)

from tunegate.data.checks import CONTROL_PATTERN, PII_PATTERNS, PLACEHOLDER_PATTERN, SECRET_PATTERNS, card_number_like, roles_valid  # noqa: E402
from tunegate.data.formats import convert_record, prompt_keys, prompt_text  # noqa: E402
from tunegate.data.refusals import union_regex  # noqa: E402
from tunegate.params import ValidationParams  # noqa: E402

WORDS = "the a cat dog sun tree ball happy little big red blue girl boy park play run jump mom dad friend".split()


def generate(n: int, seed: int = 0) -> list[dict]:
    """Alpaca-style raw records; answers from 3 to ~400 words, a few planted defects."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = int(rng.paretovariate(1.2) * 3) % 400 + 3
        answer = " ".join(rng.choice(WORDS) for _ in range(length))
        row = {"instruction": f"Task {i}: write about the {rng.choice(WORDS)}.", "input": "", "output": answer}
        if i % 997 == 0:
            row["output"] += " mail jane@example.com"
        rows.append(row)
    return rows


def py_normalize(text: str) -> str:
    """Plain-Python normalisation (agrees with tunegate's on ASCII text such as this benchmark's)."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


_PUNCT = re.compile(r"[^\w\s]")


def rowwise_rules(records, token_counts, params: ValidationParams, max_length: int, eval_keys: set[str]) -> dict[str, int]:
    """The suite's rules, one record at a time, in plain Python."""
    pii = {k: re.compile(v) for k, v in PII_PATTERNS.items()}
    secrets = {k: re.compile(v) for k, v in SECRET_PATTERNS.items()}
    placeholder, control = re.compile(PLACEHOLDER_PATTERN), re.compile(CONTROL_PATTERN)
    refusal = re.compile(union_regex(params.all_refusal_patterns()))
    counts = dict.fromkeys(
        ["null_id", "unknown_roles", "dup_id", "empty", "role_order", "too_long", "truncated", "dup_exact",
         "dup_norm", "conflict", "overlap", "pii", "secret", "placeholder", "control", "refusal"], 0)
    seen_ids, seen_exact, seen_norm, answers_by_prompt = set(), set(), set(), {}
    keys = []
    for record, n_tokens, n_prompt in zip(records, *token_counts):
        messages = record["messages"]
        roles = [m["role"] for m in messages]
        counts["null_id"] += record.get("id") is None
        counts["unknown_roles"] += any(r not in ("system", "user", "assistant", "tool") for r in roles)
        counts["dup_id"] += record["id"] in seen_ids
        seen_ids.add(record["id"])
        counts["empty"] += any(not m["content"].strip() for m in messages if m["role"] in ("user", "assistant"))
        counts["role_order"] += not roles_valid(roles)
        counts["too_long"] += n_tokens > max_length
        counts["truncated"] += n_prompt >= max_length
        exact = repr([(m["role"], m["content"]) for m in messages])
        counts["dup_exact"] += exact in seen_exact
        seen_exact.add(exact)
        key = py_normalize(prompt_text(record))
        answer = py_normalize(messages[-1]["content"])
        norm = key + " => " + answer
        counts["dup_norm"] += norm in seen_norm
        seen_norm.add(norm)
        answers_by_prompt.setdefault(key, set()).add(answer)
        keys.append(key)
        counts["overlap"] += key in eval_keys
        text = "\n".join(m["content"] for m in messages)
        found_pii = False
        for name, pattern in pii.items():
            if name == "card_number":
                found_pii |= any(card_number_like(x) for x in pattern.findall(text))
            else:
                found_pii |= bool(pattern.search(text))
        counts["pii"] += found_pii
        counts["secret"] += any(p.search(text) for p in secrets.values())
        counts["placeholder"] += bool(placeholder.search(text))
        counts["control"] += bool(control.search(text))
        counts["refusal"] += bool(refusal.search(messages[-1]["content"].strip().lower()))
    counts["conflict"] = sum(len(answers_by_prompt[k]) > 1 for k in keys)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()

    from tunegate.data.checks import count_record_tokens, count_record_tokens_per_record
    from tunegate.data.validation import validate_dataset
    from tunegate.tuning.modeling import load_tokenizer

    import great_expectations  # noqa: F401  (import time is not validation time)

    tokenizer = load_tokenizer(Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K", "alpaca")
    raw = generate(args.records)
    params = ValidationParams(max_near_duplicate_rate=1.0, rules={"pii": "warning"})
    max_length = 512

    t0 = time.perf_counter()
    records = [r for i, row in enumerate(raw) for r in convert_record(row, source_name="bench", file="bench.jsonl", index=i)]
    t1 = time.perf_counter()
    token_counts = count_record_tokens(tokenizer, records)
    t2 = time.perf_counter()
    report = validate_dataset(records, params, max_length=max_length, token_counts=token_counts, eval_records=records[:100])
    t3 = time.perf_counter()
    eval_keys = set(prompt_keys(records[:100]))
    rowwise = rowwise_rules(records, token_counts, params, max_length, eval_keys)
    t4 = time.perf_counter()

    total = t3 - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pii_rule = next(r for r in report.rules if r.rule == "pii")
    assert pii_rule.unexpected_count == rowwise["pii"], (pii_rule.unexpected_count, rowwise["pii"])

    # The per-record counting this path replaced, on the same records, and the findings it leads to.
    t5 = time.perf_counter()
    reference_counts = count_record_tokens_per_record(tokenizer, records)
    t6 = time.perf_counter()
    reference_report = validate_dataset(
        records, params, max_length=max_length, token_counts=reference_counts, eval_records=records[:100]
    )
    counts_identical = reference_counts == token_counts
    findings_identical = reference_report.to_dict() == report.to_dict()
    length_rules = {r.rule: r.unexpected_count for r in report.rules if r.rule in ("max_length", "response_truncated")}
    result = {
        "records": len(records),
        "convert_s": round(t1 - t0, 2),
        "token_count_s": round(t2 - t1, 2),
        "rules_and_ge_suite_s": round(t3 - t2, 2),
        "total_s": round(total, 2),
        "records_per_s": round(len(records) / total),
        "rowwise_rules_s": round(t4 - t3, 2),
        "speedup_rules_vs_rowwise": round((t4 - t3) / (t3 - t2), 2),
        "peak_rss_mib": round(peak_mib),
        "pii_found": rowwise["pii"],
        "tokens_total": sum(token_counts[0]),
        "tokenizers_parallelism": os.environ["TOKENIZERS_PARALLELISM"],
        "length_rule_offenders": length_rules,
        "token_count_per_record_s": round(t6 - t5, 2),
        "token_count_speedup": round((t6 - t5) / (t2 - t1), 2),
        "total_s_with_per_record_counting": round(total - (t2 - t1) + (t6 - t5), 2),
        "token_counts_identical": counts_identical,
        "findings_identical": findings_identical,
    }
    print(
        f"token counting: batched {result['token_count_s']} s vs per record {result['token_count_per_record_s']} s "
        f"({result['token_count_speedup']}x); counts identical: {counts_identical}; findings identical: {findings_identical}",
        file=sys.stderr,
    )
    print(json.dumps(result))
    if not (counts_identical and findings_identical):
        raise SystemExit("the batched token counts or the findings differ from the per-record path")


if __name__ == "__main__":
    main()
