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
