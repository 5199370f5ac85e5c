import pytest

from tunegate.metrics import aggregate, exact_match, score


def rec(i, family, prompt, answer):
    return {"id": str(i), "family": family, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def test_exact_match_trims_only_whitespace():
    assert exact_match(" yes\n", "yes")
    assert not exact_match("Yes", "yes")


def test_per_family_and_overall():
    records = [rec(1, "a", "p", "x"), rec(2, "a", "p", "y"), rec(3, "b", "p", "z")]
    result = aggregate(score(records, ["x", "nope", "z"]), response_loss=1.5)
    assert result.per_family == {"a": 0.5, "b": 1.0}
    assert result.exact_match == pytest.approx(2 / 3)
    assert result.metrics()["response_loss"] == 1.5


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        score([rec(1, "a", "p", "x")], [])
