from tunegate.gate import decide_promotion
from tunegate.params import GateParams

POLICY = GateParams(min_improvement=0.05, max_family_regression=0.05)


def m(em, **families):
    return {"exact_match": em, "per_family": families}


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
