import json

import pytest

from tunegate.data.demo import FAMILIES, REFUSAL_SENTENCE, dumps_jsonl, generate_demo_records


def test_same_seed_same_bytes():
    a = generate_demo_records(7, 50, 10, list(FAMILIES))
    b = generate_demo_records(7, 50, 10, list(FAMILIES))
    assert dumps_jsonl(a[0]) == dumps_jsonl(b[0]) and dumps_jsonl(a[1]) == dumps_jsonl(b[1])


def test_different_seed_different_data():
    a, _ = generate_demo_records(7, 50, 10, list(FAMILIES))
    b, _ = generate_demo_records(8, 50, 10, list(FAMILIES))
    assert dumps_jsonl(a) != dumps_jsonl(b)


def test_at_least_six_families_and_held_out_prompts():
    train, evaluation = generate_demo_records(1, 100, 20, list(FAMILIES))
    assert len(FAMILIES) >= 6
    assert {r["family"] for r in evaluation} == set(FAMILIES)
    train_prompts = {r["messages"][0]["content"] for r in train}
    assert not train_prompts & {r["messages"][0]["content"] for r in evaluation}
    ids = [r["id"] for r in train + evaluation]
    assert len(ids) == len(set(ids))


def test_answers_are_verifiable():
    train, _ = generate_demo_records(3, 30, 5, list(FAMILIES))
    for record in train:
        prompt, answer = record["messages"][0]["content"], record["messages"][1]["content"]
        family = record["family"]
        if family == "reverse_words":
            words = prompt.split(": ")[1].split()
            assert answer.split() == words[::-1]
        elif family == "lowercase":
            assert answer == prompt.split(": ")[1].lower()
        elif family == "json_color":
            assert json.loads(answer)["color"] in prompt
        elif family == "story_start":
            assert answer.split()[0] == prompt.rstrip(".").split()[-1]
        elif family == "refusal":
            assert answer == REFUSAL_SENTENCE
        elif family == "compare":
            a, b = [int(t) for t in prompt.replace("?", "").split() if t.isdigit()]
            assert answer == ("yes" if a > b else "no")


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="allowed"):
        generate_demo_records(1, 10, 2, ["juggling"])


def test_safe_lookalikes_are_answered_helpfully_and_are_not_xstest_prompts():
    """Issue #15: the demo teaches safe look-alikes ("kill the music") beside the harmful family. Their answers
    are no refusal by the safety suite's own classifier, and none of their prompts is one of XSTest's, which
    the suite measures over-refusal on (the demo's numbers would say nothing)."""
    import csv
    from pathlib import Path

    from tunegate.evaluation.safety import pattern_classifier

    train, evaluation = generate_demo_records(1234, 400, 40, ["safe_lookalike", "refusal"])
    is_refusal = pattern_classifier()
    lookalikes = [r for r in train + evaluation if r["family"] == "safe_lookalike"]
    assert len(lookalikes) >= 300 and {r["family"] for r in evaluation} == {"safe_lookalike", "refusal"}
    assert not any(is_refusal(r["messages"][1]["content"]) for r in lookalikes)
    assert all(is_refusal(r["messages"][1]["content"]) for r in train + evaluation if r["family"] == "refusal")
    xstest = Path(__file__).resolve().parents[3] / "shared" / "data" / "eval" / "xstest_prompts.csv"
    with open(xstest, newline="", encoding="utf-8") as handle:
        prompts = {row["prompt"].strip().lower() for row in csv.DictReader(handle)}
    assert len(prompts) > 400
    assert not prompts & {r["messages"][0]["content"].strip().lower() for r in train + evaluation}


def test_demo_preference_pairs_are_seeded_disjoint_from_the_eval_set_and_read_as_trl_pairs(tmp_path):
    """Issue #28: the demo's preference pairs: chosen the correct answer, rejected a wrong, refusing, complying or
    verbose one; no SFT eval prompt; the same bytes for the same seed; read by the preference reader."""
    import collections

    from tunegate.data.demo import FAMILIES, REFUSAL_SENTENCE, generate_demo_records, preference_pairs
    from tunegate.data.preference import convert_preference_record

    train, evaluation = generate_demo_records(1234, 400, 40, list(FAMILIES))
    eval_prompts = {r["messages"][0]["content"] for r in evaluation}
    pairs, held_out = preference_pairs(1234, 60, list(FAMILIES), eval_prompts)
    assert (pairs, held_out) == preference_pairs(1234, 60, list(FAMILIES), eval_prompts)
    assert not {p["prompt"][0]["content"] for p in pairs + held_out} & eval_prompts
    assert not {p["prompt"][0]["content"] for p in pairs} & {p["prompt"][0]["content"] for p in held_out}
    assert set(collections.Counter(p["family"] for p in pairs)) == set(FAMILIES)
    assert all(p["chosen"] != p["rejected"] for p in pairs + held_out)
    lookalike = [p for p in pairs if p["family"] == "safe_lookalike"]
    assert lookalike and all(p["rejected"][0]["content"] == REFUSAL_SENTENCE for p in lookalike)  # a needless refusal
    assert all(p["chosen"][0]["content"] == REFUSAL_SENTENCE for p in pairs if p["family"] == "refusal")
    longer = sum(len(p["chosen"][0]["content"]) > len(p["rejected"][0]["content"]) for p in pairs) / len(pairs)
    assert longer < 0.5  # concise chosen answers: nothing for DPO to learn about length
    record = convert_preference_record(pairs[0], source_name="demo_pairs", file="pairs.jsonl", index=0)
    assert record["chosen"]["content"] == pairs[0]["chosen"][0]["content"] and record["family"] == pairs[0]["family"]
