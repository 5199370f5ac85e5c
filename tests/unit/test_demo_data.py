import json

import pytest

from tunegate.demo_data import FAMILIES, REFUSAL_SENTENCE, dumps_jsonl, generate_demo_records


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
