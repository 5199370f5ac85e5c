import pytest

from tunegate.governance.gate import decide_promotion, waiting_checks
from tunegate.params import GateParams, MetricRule, load_params

POLICY = GateParams(min_improvement=0.05, max_family_regression=0.05, min_improvement_over_base=None)


def m(em, **families):
    return {"exact_match": em, "per_family": families}


def over_base(base, candidate, low, high, metric="exact_match", higher_is_better=True):
    """A candidate-vs-base-model delta as compare_models hands it to the gate."""
    return [{"metric": metric, "category": "all", "baseline": base, "candidate": candidate, "delta": candidate - base,
             "low": low, "high": high, "n": 200, "higher_is_better": higher_is_better}]


def test_clear_improvement_passes():
    decision = decide_promotion(m(0.1, a=0.1, b=0.1), m(0.9, a=0.9, b=0.9), POLICY)
    assert decision.passed
    assert len(decision.reasons) == 3 and all(r.startswith("PASS") for r in decision.reasons)


def test_too_small_improvement_fails():
    decision = decide_promotion(m(0.80, a=0.8), m(0.83, a=0.83), POLICY)
    assert not decision.passed
    assert decision.reasons[0].startswith("FAIL exact_match improvement")


def test_family_regression_fails_even_with_overall_gain():
    decision = decide_promotion(m(0.5, a=1.0, b=0.0), m(0.7, a=0.9, b=0.5), POLICY)
    assert not decision.passed
    failing = [r for r in decision.reasons if r.startswith("FAIL")]
    assert failing == ["FAIL family a regression: 1.000 -> 0.900 (allowed drop 0.050)"]


def test_family_missing_from_candidate_fails():
    decision = decide_promotion(m(0.1, a=0.1, b=0.1), m(0.9, a=0.9), POLICY)
    assert not decision.passed


def test_decision_serialises():
    data = decide_promotion(m(0.0, a=0.0), m(1.0, a=1.0), POLICY).to_dict()
    assert data["passed"] is True and data["reasons"] and data["checks"][0]["rule"]


# --- the over-base rule (issue #15): an untrained or broken model never passes -----------------------

def test_the_issue_case_an_untrained_model_no_worse_than_the_base_is_refused():
    """The demo's first run with 1 training step: 0.000 -> 0.000 passed non-inferiority against the base model."""
    policy = GateParams(min_improvement=0.0, max_family_regression=0.05)  # the default: over-base 0.0
    decision = decide_promotion(m(0.0, a=0.0), m(0.0, a=0.0), policy, base_deltas=over_base(0.0, 0.0, 0.0, 0.0))
    assert not decision.passed
    assert [r for r in decision.reasons if r.startswith("FAIL")] == [
        "FAIL exact_match over the base model: base model 0.000 -> candidate 0.000 (delta +0.000, interval [+0.000, +0.000]; "
        "the gain's lower bound must lie above +0.000)"
    ]


def test_a_gain_whose_interval_touches_zero_is_not_enough_and_a_clear_gain_passes():
    policy = GateParams(min_improvement=0.0, max_family_regression=1.0)
    unsure = decide_promotion(m(0.0, a=0.0), m(0.05, a=0.05), policy, base_deltas=over_base(0.0, 0.05, -0.01, 0.11))
    assert not unsure.passed and unsure.reasons[-1].startswith("FAIL exact_match over the base model")
    clear = decide_promotion(m(0.0, a=0.0), m(0.6, a=0.6), policy, base_deltas=over_base(0.0, 0.6, 0.52, 0.68))
    assert clear.passed and clear.reasons[-1].startswith("PASS exact_match over the base model")
    stricter = GateParams(min_improvement=0.0, max_family_regression=1.0, min_improvement_over_base=0.55)
    assert not decide_promotion(m(0.0, a=0.0), m(0.6, a=0.6), stricter, base_deltas=over_base(0.0, 0.6, 0.52, 0.68)).passed


def test_against_a_champion_the_base_model_is_still_a_reference():
    """A retrain that beats a broken champion but not the base model is refused."""
    policy = GateParams(min_improvement=0.0, max_family_regression=1.0)
    decision = decide_promotion(m(0.0, a=0.0), m(0.02, a=0.02), policy, base_deltas=over_base(0.3, 0.02, -0.36, -0.2))
    assert not decision.passed
    assert decision.reasons[0].startswith("PASS exact_match improvement") and decision.reasons[-1].startswith("FAIL exact_match over")


def test_no_comparison_with_the_base_model_fails_closed_and_null_turns_the_rule_off():
    policy = GateParams(min_improvement=0.0, max_family_regression=1.0)
    decision = decide_promotion(m(0.0, a=0.0), m(0.9, a=0.9), policy)
    assert not decision.passed and decision.reasons[-1] == (
        "FAIL exact_match over the base model: the candidate was not compared with the base model")
    off = GateParams(min_improvement=0.0, max_family_regression=1.0, min_improvement_over_base=None)
    assert decide_promotion(m(0.0, a=0.0), m(0.9, a=0.9), off).passed


@pytest.mark.parametrize("name", ["demo.yaml", "strict_policy.yaml", "shared_mix.yaml"])
def test_shipped_policies_require_a_gain_over_the_base_model(name, repo_root):
    assert load_params(repo_root / "params" / name).gate.min_improvement_over_base == 0.0


# --- the candidate waiting for review (issue #15) ---------------------------------------------------

def test_the_new_candidate_must_not_be_significantly_worse_than_the_waiting_one():
    policy = GateParams(rules=[MetricRule(metric="response_loss", max_regression=0.5)])
    equal = over_base(0.63, 0.63, -0.04, 0.04) + over_base(1.1, 1.0, -0.2, 0.0, metric="response_loss", higher_is_better=False)
    for d in equal:
        d["regression"] = False
    assert [c.passed for c in waiting_checks(equal, policy)] == [True, True]
    worse = [dict(d) for d in equal]
    worse[0].update(candidate=0.1, delta=-0.53, low=-0.6, high=-0.46, regression=True)
    checks = waiting_checks(worse, policy)
    assert [c.passed for c in checks] == [False, True]
    assert checks[0].rule == "exact_match vs the waiting candidate" and checks[0].detail.endswith("significantly worse")
    assert not waiting_checks([], policy)[0].passed  # not compared: never silently replaced
