"""A real regression: a candidate trained on corrupted labels is flagged, its interval below zero."""

import random
from pathlib import Path

import pytest

from tunegate.data.demo import generate_demo_records
from tunegate.evaluation.suites import compare, evaluate_suites
from tunegate.params import load_params
from tunegate.tuning.modeling import load_saved_model
from tunegate.tuning.training import train_model

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SETTINGS = [
    "train.max_steps=80", "train.batch_size=32", "eval.ifeval.enabled=false", "eval.safety.enabled=false",
    "eval.bootstrap_resamples=1000",
]


def corrupt(records, seed=0):
    """The same prompts with the answers shuffled among them: wrong labels, same distribution."""
    answers = [r["messages"][-1]["content"] for r in records]
    random.Random(seed).shuffle(answers)
    return [{**r, "messages": r["messages"][:-1] + [{"role": "assistant", "content": a}]} for r, a in zip(records, answers)]


def test_corrupted_labels_are_a_flagged_regression(tmp_path, base_model_path):
    train, evaluation = generate_demo_records(21, 150, 30, ["story_start", "json_color"])
    params = load_params(REPO / "params" / "demo.yaml", SETTINGS)
    good = train_model(params, train, tmp_path / "good")
    bad = train_model(params, corrupt(train), tmp_path / "bad")

    results = {}
    for name, run in (("good", good), ("bad", bad)):
        model, tokenizer = load_saved_model(run.model_dir)
        results[name] = evaluate_suites(model, tokenizer, evaluation, params.eval)
    assert results["good"].mean("exact_match") >= 0.8

    deltas = {(d.metric, d.category): d for d in compare(results["good"], results["bad"], params.eval)}
    exact = deltas[("exact_match", "all")]
    assert exact.regression and exact.high < 0, exact
    assert deltas[("exact_match", "story_start")].regression
    assert deltas[("response_loss", "all")].regression  # higher loss on the true answers
    # Seeded: the same comparison gives the same interval.
    again = {(d.metric, d.category): d for d in compare(results["good"], results["bad"], params.eval)}
    assert again[("exact_match", "all")] == exact
