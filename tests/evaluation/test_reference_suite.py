"""The reference-task suite on the path the flow runs (``run_reference``), outputs injected in place of
generation: exact match trims only whitespace, per-family and overall means."""

from types import SimpleNamespace

import pytest

import tunegate.evaluation.generation as generation
from tunegate.evaluation.scores import ModelEvaluation
from tunegate.evaluation.suite_reference import run_reference
from tunegate.params import EvalParams


def rec(i, family, prompt, answer):
    return {"id": str(i), "family": family, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def _scored(monkeypatch, tokenizer, records, outputs):
    answers = dict(zip(generation.render_prompts(tokenizer, records), outputs))
    monkeypatch.setattr(generation, "generate", lambda model, tok, todo, *args, **kwargs: [answers[p] for p in todo])
    result = ModelEvaluation()
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    run_reference(model, tokenizer, records, EvalParams(), result)
    return result


@pytest.fixture(scope="module")
def tokenizer(base_model_path):
    from tunegate.data.templates import load_tokenizer

    return load_tokenizer(base_model_path, "alpaca")


def test_exact_match_trims_only_whitespace(monkeypatch, tokenizer):
    records = [rec(1, "a", "say yes", "yes"), rec(2, "a", "say it", "yes")]
    result = _scored(monkeypatch, tokenizer, records, [" yes\n", "Yes"])
    assert [s.value for s in result.scores["exact_match"]] == [1.0, 0.0]
    assert [s.value for s in result.scores["normalized_match"]] == [1.0, 1.0]  # case and punctuation: the normalised metric


def test_per_family_and_overall(monkeypatch, tokenizer):
    records = [rec(1, "a", "p1", "x"), rec(2, "a", "p2", "y"), rec(3, "b", "p3", "z")]
    summary = _scored(monkeypatch, tokenizer, records, ["x", "nope", "z"]).summary()
    assert summary["per_family"] == {"a": 0.5, "b": 1.0}
    assert summary["exact_match"] == pytest.approx(2 / 3) and summary["n"] == 3
