"""A real regression: a candidate trained on corrupted labels is flagged, its interval below zero."""

import random
from pathlib import Path

import pytest

from tunegate.data.demo import generate_demo_records
from tunegate.evaluation.suites import compare, evaluate_suites
from tunegate.governance.gate import decide_promotion
from tunegate.params import load_params
from tunegate.tuning.modeling import load_base_model, load_saved_model, load_tokenizer
from tunegate.tuning.training import train_model

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SETTINGS = [
    "train.max_steps=80", "train.batch_size=32", "eval.ifeval.enabled=false", "eval.safety.enabled=false",
    "eval.bootstrap_resamples=1000", "eval.capability.enabled=false", "eval.judge.enabled=false",
    "gate.capability_may_not_drop=null", "gate.min_win_rate=null",
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

    # Gated on response loss (issue #27: any registered metric as the primary one, its direction the
    # registry's): the model trained on wrong labels is refused against the good one as champion, for the
    # primary rule; the good one passes against the base model, over which its loss fell.
    results["base"] = evaluate_suites(load_base_model(params.base_model_path()),
                                      load_tokenizer(params.base_model_path(), params.model.chat_template), evaluation, params.eval)
    policy = load_params(REPO / "params" / "demo.yaml", [*SETTINGS, "gate.primary_metric=response_loss", "gate.rules=[]"])

    def gate(baseline: str, candidate: str):
        deltas = [d.to_dict() for d in compare(results[baseline], results[candidate], policy.eval)]
        base = [d.to_dict() for d in compare(results["base"], results[candidate], policy.eval)]
        return decide_promotion(results[baseline].summary(), results[candidate].summary(), policy.gate, deltas, base)

    refused = gate("good", "bad")
    failed = [r.split(":")[0] for r in refused.reasons if r.startswith("FAIL")]
    assert not refused.passed and failed[0] == "FAIL response_loss non-inferiority", refused.reasons
    assert results["bad"].mean("response_loss") > results["good"].mean("response_loss")
    first = gate("base", "good")
    assert first.passed, first.reasons
    assert first.reasons[0].startswith("PASS response_loss non-inferiority: baseline ")
    assert any(r.startswith("PASS response_loss over the base model") for r in first.reasons)
