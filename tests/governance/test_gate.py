from pathlib import Path

import pytest

from tunegate.governance.gate import decide_promotion, waiting_checks
from tunegate.params import GateParams, MetricRule, load_params

DEMO = Path(__file__).resolve().parents[2] / "params" / "demo.yaml"
POLICY = GateParams(min_improvement=0.05, max_family_regression=0.05, min_improvement_over_base=None)
DEMO_POLICY = GateParams(min_improvement=0.0, non_inferiority_margin=0.10, max_family_regression=0.05, min_improvement_over_base=None)


def m(em, **families):
    return {"exact_match": em, "per_family": families}


def delta(baseline, candidate, low, high, category="all", metric="exact_match", n=354, adjusted=None, higher_is_better=True):
    """A candidate-vs-reference delta as compare hands it to the gate; ``adjusted``: a category's simultaneous
    interval (low, high) over ``over`` categories."""
    d = {"metric": metric, "category": category, "baseline": baseline, "candidate": candidate, "delta": candidate - baseline,
         "low": low, "high": high, "n": n, "higher_is_better": higher_is_better, "confidence": 0.95,
         "regression": high < 0 if higher_is_better else low > 0}
    if adjusted is not None:
        d |= {"adjusted_low": adjusted[0], "adjusted_high": adjusted[1], "adjusted_confidence": 1 - 0.05 / 9, "adjusted_over": 9}
    return d


def family(name, baseline, candidate, low, high, adjusted, n=40):
    return delta(baseline, candidate, low, high, category=name, n=n, adjusted=adjusted)


def over_base(base, candidate, low, high, metric="exact_match", higher_is_better=True):
    """A candidate-vs-base-model delta as compare_models hands it to the gate."""
    return [delta(base, candidate, low, high, metric=metric, higher_is_better=higher_is_better, n=200)]


def failing(decision):
    return [r for r in decision.reasons if r.startswith("FAIL")]


def test_clear_improvement_passes():
    deltas = [delta(0.1, 0.9, 0.75, 0.85), family("a", 0.1, 0.9, 0.7, 0.9, (0.6, 0.95)), family("b", 0.1, 0.9, 0.7, 0.9, (0.6, 0.95))]
    decision = decide_promotion(m(0.1, a=0.1, b=0.1), m(0.9, a=0.9, b=0.9), POLICY, deltas)
    assert decision.passed
    assert len(decision.reasons) == 3 and all(r.startswith("PASS") for r in decision.reasons)
    assert decision.reasons[0] == ("PASS exact_match superiority: baseline 0.100 -> candidate 0.900 (delta +0.800, 95% interval "
                                   "[+0.750, +0.850]); the gain's lower bound must exceed +0.050")


def test_superiority_is_judged_on_the_lower_bound_not_the_point_gain():
    """min_improvement > 0: a point gain of 0.08 whose interval reaches down to +0.01 is not shown to be 0.05 better."""
    decision = decide_promotion(m(0.80, a=0.8), m(0.88, a=0.88), POLICY, [delta(0.80, 0.88, 0.01, 0.15)])
    assert not decision.passed
    assert failing(decision) == ["FAIL exact_match superiority: baseline 0.800 -> candidate 0.880 (delta +0.080, 95% interval "
                                 "[+0.010, +0.150]); the gain's lower bound must exceed +0.050"]


def test_the_issue_case_an_equally_good_retrain_passes():
    """Issue #24: the demo's champion (seed 42) against a retrain with seed 43, as measured. The point estimates fell
    (exact match -0.006, two families -0.050 each) but no interval says the retrain is worse."""
    deltas = [
        delta(0.910, 0.904, -0.037, 0.023),
        family("reverse_words", 0.750, 0.700, -0.200, 0.075, (-0.275, 0.150)),
        family("story_start", 1.000, 0.950, -0.125, 0.000, (-0.175, 0.000)),
        family("compare", 0.950, 0.975, -0.050, 0.100, (-0.100, 0.150)),
    ]
    decision = decide_promotion(m(0.910, reverse_words=0.75, story_start=1.0, compare=0.95),
                                m(0.904, reverse_words=0.70, story_start=0.95, compare=0.975), DEMO_POLICY, deltas)
    assert decision.passed, decision.reasons
    assert decision.reasons[0] == ("PASS exact_match non-inferiority: baseline 0.910 -> candidate 0.904 (delta -0.006, 95% interval "
                                   "[-0.037, +0.023]); the gain's lower bound must reach -0.100")
    [story] = [r for r in decision.reasons if "story_start" in r]
    assert story == ("PASS family story_start regression: baseline 1.000 -> candidate 0.950 (delta -0.050, 99.4% interval "
                     "[-0.175, +0.000], simultaneous over 9 categories at 95% (Bonferroni)); a significant drop may not exceed 0.050")
    # The check carries its bound for the tables (report, model card).
    [check] = [c for c in decision.checks if c.category == "story_start"]
    assert check.verdict == "PASS (significant drop <= 0.050)"


def test_a_retrain_clearly_worse_than_the_margin_is_refused():
    decision = decide_promotion(m(0.91), m(0.75), DEMO_POLICY, [delta(0.91, 0.75, -0.21, -0.11)])
    assert not decision.passed
    assert failing(decision)[0].startswith("FAIL exact_match non-inferiority: baseline 0.910 -> candidate 0.750")
    # Not shown to be within the margin either: a lower bound below -0.10 fails, even with the point loss inside it.
    assert not decide_promotion(m(0.91), m(0.85), DEMO_POLICY, [delta(0.91, 0.85, -0.12, 0.0)]).passed


def test_a_negative_min_improvement_lowers_the_bound_and_margin_zero_is_the_plain_lower_bound():
    opened = GateParams(min_improvement=-1, min_improvement_over_base=None, max_family_regression=1)
    assert decide_promotion(m(0.9), m(0.0), opened, [delta(0.9, 0.0, -0.95, -0.85)]).passed
    tight = GateParams(min_improvement=0.0, non_inferiority_margin=0.0, min_improvement_over_base=None)
    assert not decide_promotion(m(0.9), m(0.9), tight, [delta(0.9, 0.9, -0.01, 0.01)]).passed
    assert decide_promotion(m(0.9), m(0.9), tight, [delta(0.9, 0.9, 0.0, 0.01)]).passed


def test_family_regression_fails_when_significant_and_beyond_the_bound_even_with_overall_gain():
    deltas = [delta(0.5, 0.7, 0.1, 0.3), family("a", 1.0, 0.6, -0.55, -0.25, (-0.62, -0.18)), family("b", 0.0, 0.5, 0.3, 0.65, (0.2, 0.7))]
    decision = decide_promotion(m(0.5, a=1.0, b=0.0), m(0.7, a=0.6, b=0.5), POLICY, deltas)
    assert not decision.passed
    assert failing(decision) == [
        "FAIL family a regression: baseline 1.000 -> candidate 0.600 (delta -0.400, 99.4% interval [-0.620, -0.180], "
        "simultaneous over 9 categories at 95% (Bonferroni)); a significant drop may not exceed 0.050"]


def test_a_significant_drop_within_the_bound_passes_and_a_large_insignificant_one_too():
    within = [delta(0.9, 0.9, -0.02, 0.02), family("a", 1.0, 0.96, -0.08, -0.01, (-0.1, -0.005), n=400)]
    assert decide_promotion(m(0.9, a=1.0), m(0.9, a=0.96), DEMO_POLICY, within).passed
    noisy = [delta(0.9, 0.9, -0.02, 0.02), family("a", 0.75, 0.65, -0.25, -0.01, (-0.3, 0.05))]
    assert decide_promotion(m(0.9, a=0.75), m(0.9, a=0.65), DEMO_POLICY, noisy).passed
    # Without the adjustment across families the family's own 95% interval judges: the same drop is significant.
    unadjusted = DEMO_POLICY.model_copy(update={"family_adjustment": "none"})
    decision = decide_promotion(m(0.9, a=0.75), m(0.9, a=0.65), unadjusted, noisy)
    assert failing(decision) == ["FAIL family a regression: baseline 0.750 -> candidate 0.650 (delta -0.100, 95% interval "
                                 "[-0.250, -0.010]); a significant drop may not exceed 0.050"]


def test_the_strict_family_rule_needs_the_lower_bound_of_the_gain_within_the_bound():
    strict = DEMO_POLICY.model_copy(update={"family_rule": "strict"})
    unsure = [delta(0.9, 0.9, -0.02, 0.02), family("a", 0.9, 0.9, -0.12, 0.12, (-0.2, 0.2))]
    decision = decide_promotion(m(0.9, a=0.9), m(0.9, a=0.9), strict, unsure)
    assert failing(decision) == ["FAIL family a regression: baseline 0.900 -> candidate 0.900 (delta +0.000, 95% interval "
                                 "[-0.120, +0.120]); strict: the gain's lower bound must reach -0.050"]
    assert decide_promotion(m(0.9, a=0.9), m(0.9, a=0.9), DEMO_POLICY, unsure).passed
    shown = [delta(0.9, 0.9, -0.02, 0.02), family("a", 0.9, 0.9, -0.04, 0.04, (-0.06, 0.06), n=900)]
    assert decide_promotion(m(0.9, a=0.9), m(0.9, a=0.9), strict, shown).passed


def test_a_family_with_too_few_items_is_named_not_judged():
    deltas = [delta(0.9, 0.9, -0.02, 0.02), family("tiny", 1.0, 0.0, -1.0, -1.0, (-1.0, -1.0), n=4)]
    decision = decide_promotion(m(0.9, tiny=1.0), m(0.9, tiny=0.0), DEMO_POLICY, deltas)
    assert decision.passed
    [tiny] = [c for c in decision.checks if c.category == "tiny"]
    assert not tiny.judged and tiny.reason == ("NOT JUDGED family tiny regression: 4 paired item(s), fewer than gate.min_family_items "
                                               "(10): too few to judge (1.000 -> 0.000)")
    assert tiny.verdict == "NOT JUDGED (significant drop <= 0.050)"
    fewer = DEMO_POLICY.model_copy(update={"min_family_items": 3})
    assert not decide_promotion(m(0.9, tiny=1.0), m(0.9, tiny=0.0), fewer, deltas).passed


def test_family_missing_from_candidate_fails():
    deltas = [delta(0.1, 0.9, 0.75, 0.85), family("a", 0.1, 0.9, 0.7, 0.9, (0.6, 0.95))]
    decision = decide_promotion(m(0.1, a=0.1, b=0.1), m(0.9, a=0.9), POLICY, deltas)
    assert not decision.passed and failing(decision) == ["FAIL family b regression: missing from the candidate's evaluation"]


def test_no_paired_comparison_fails_closed():
    decision = decide_promotion(m(0.1), m(0.9), DEMO_POLICY)
    assert not decision.passed
    assert failing(decision) == ["FAIL exact_match non-inferiority: not compared with the baseline on paired examples: nothing to judge"]


def test_decision_serialises():
    data = decide_promotion(m(0.0), m(1.0), POLICY, [delta(0.0, 1.0, 0.9, 1.0)]).to_dict()
    assert data["passed"] is True and data["reasons"] and data["checks"][0]["rule"] and data["checks"][0]["judged"] is True


def test_every_interval_rule_has_one_wording():
    policy = GateParams(min_improvement=0.0, max_family_regression=0.05, min_improvement_over_base=0.0,
                        rules=[MetricRule(metric="rouge_l", max_regression=0.02), MetricRule(metric="ifeval_prompt_loose", min_improvement=0.0)])
    deltas = [delta(0.9, 0.9, -0.02, 0.02), delta(0.5, 0.5, -0.01, 0.01, metric="rouge_l"), delta(0.3, 0.35, 0.01, 0.09, metric="ifeval_prompt_loose"),
              delta(0.9, 0.9, -0.05, 0.05, metric="refusal_rate"), delta(0.0, 0.02, -0.01, 0.05, metric="over_refusal_rate", higher_is_better=False)]
    decision = decide_promotion(m(0.9), m(0.9), policy, deltas, over_base(0.0, 0.9, 0.8, 0.95))
    assert decision.passed
    import re

    shape = re.compile(r"^PASS .+: (baseline|base model) \d\.\d{3} -> candidate \d\.\d{3} \(delta [+-]\d\.\d{3}, 95% interval \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]\); .+$")
    assert all(shape.match(r) for r in decision.reasons), decision.reasons
    assert len(decision.reasons) == 6


# --- the over-base rule (issue #15): an untrained or broken model never passes -----------------------

def test_the_issue_case_an_untrained_model_no_worse_than_the_base_is_refused():
    """The demo's first run with 1 training step: 0.000 -> 0.000 passed non-inferiority against the base model."""
    policy = GateParams(min_improvement=0.0, max_family_regression=0.05)  # the default: over-base 0.0
    decision = decide_promotion(m(0.0), m(0.0), policy, [delta(0.0, 0.0, 0.0, 0.0)], base_deltas=over_base(0.0, 0.0, 0.0, 0.0))
    assert not decision.passed
    assert failing(decision) == [
        "FAIL exact_match over the base model: base model 0.000 -> candidate 0.000 (delta +0.000, 95% interval [+0.000, +0.000]); "
        "the gain's lower bound must exceed +0.000"
    ]


def test_a_gain_whose_interval_touches_zero_is_not_enough_and_a_clear_gain_passes():
    policy = GateParams(min_improvement=0.0, max_family_regression=1.0)
    unsure = decide_promotion(m(0.0), m(0.05), policy, [delta(0.0, 0.05, -0.01, 0.11)], base_deltas=over_base(0.0, 0.05, -0.01, 0.11))
    assert not unsure.passed and unsure.reasons[-1].startswith("FAIL exact_match over the base model")
    clear = decide_promotion(m(0.0), m(0.6), policy, [delta(0.0, 0.6, 0.52, 0.68)], base_deltas=over_base(0.0, 0.6, 0.52, 0.68))
    assert clear.passed and clear.reasons[-1].startswith("PASS exact_match over the base model")
    stricter = GateParams(min_improvement=0.0, max_family_regression=1.0, min_improvement_over_base=0.55)
    assert not decide_promotion(m(0.0), m(0.6), stricter, [delta(0.0, 0.6, 0.52, 0.68)], base_deltas=over_base(0.0, 0.6, 0.52, 0.68)).passed


def test_against_a_champion_the_base_model_is_still_a_reference():
    """A retrain that beats a broken champion but not the base model is refused."""
    policy = GateParams(min_improvement=0.0, max_family_regression=1.0)
    decision = decide_promotion(m(0.0), m(0.02), policy, [delta(0.0, 0.02, 0.0, 0.04)], base_deltas=over_base(0.3, 0.02, -0.36, -0.2))
    assert not decision.passed
    assert decision.reasons[0].startswith("PASS exact_match non-inferiority") and decision.reasons[-1].startswith("FAIL exact_match over")


def test_no_comparison_with_the_base_model_fails_closed_and_null_turns_the_rule_off():
    policy = GateParams(min_improvement=0.0, max_family_regression=1.0)
    decision = decide_promotion(m(0.0), m(0.9), policy, [delta(0.0, 0.9, 0.85, 0.95)])
    assert not decision.passed and decision.reasons[-1] == (
        "FAIL exact_match over the base model: the candidate was not compared with the base model")
    off = GateParams(min_improvement=0.0, max_family_regression=1.0, min_improvement_over_base=None)
    assert decide_promotion(m(0.0), m(0.9), off, [delta(0.0, 0.9, 0.85, 0.95)]).passed


@pytest.mark.parametrize("name", ["demo.yaml", "strict_policy.yaml", "shared_mix.yaml"])
def test_shipped_policies_require_a_gain_over_the_base_model(name, repo_root):
    assert load_params(repo_root / "params" / name).gate.min_improvement_over_base == 0.0


def test_the_demo_policy_is_non_inferiority_with_the_calibrated_margin(repo_root):
    gate = load_params(repo_root / "params" / "demo.yaml").gate
    assert (gate.min_improvement, gate.non_inferiority_margin, gate.family_rule, gate.family_adjustment) == (0.0, 0.10, "significant", "bonferroni")
    assert GateParams().non_inferiority_margin == gate.non_inferiority_margin


# --- the candidate waiting for review (issue #15) ---------------------------------------------------

def test_the_new_candidate_must_not_be_significantly_worse_than_the_waiting_one():
    policy = GateParams(rules=[MetricRule(metric="response_loss", max_regression=0.5)])
    equal = over_base(0.63, 0.63, -0.04, 0.04) + over_base(1.1, 1.0, -0.2, 0.0, metric="response_loss", higher_is_better=False)
    assert [c.passed for c in waiting_checks(equal, policy)] == [True, True]
    worse = [dict(d) for d in equal]
    worse[0].update(candidate=0.1, delta=-0.53, low=-0.6, high=-0.46, regression=True)
    checks = waiting_checks(worse, policy)
    assert [c.passed for c in checks] == [False, True]
    assert checks[0].rule == "exact_match vs the waiting candidate" and checks[0].detail.endswith("significantly worse")
    assert checks[0].reason == ("FAIL exact_match vs the waiting candidate: waiting 0.630 -> new 0.100 (delta -0.530, 95% interval "
                                "[-0.600, -0.460]); may not be significantly worse")
    assert not waiting_checks([], policy)[0].passed  # not compared: never silently replaced


# --- the one decision: its action (issue #25) --------------------------------------------------------

def test_the_decision_carries_its_action_with_the_waiting_policy_inside():
    from tunegate.evaluation.stats import Delta
    from tunegate.governance.gate import decide

    good = [delta(0.80, 0.88, -0.01, 0.15)]
    assert decide(m(0.80), m(0.88), DEMO_POLICY, good).action == "register"
    refused = decide(m(0.91), m(0.75), DEMO_POLICY, [delta(0.91, 0.75, -0.21, -0.11)], waiting_version="3",
                     waiting_deltas=[delta(0.5, 0.75, 0.1, 0.3)])
    assert (refused.passed, refused.action) == (False, "reject")  # a failed gate is never registered, waiting or not

    worse_than_waiting = [delta(0.95, 0.88, -0.12, -0.03)]
    kept = decide(m(0.80), m(0.88), DEMO_POLICY, good, waiting_version="3", waiting_deltas=worse_than_waiting)
    assert (kept.passed, kept.action, kept.waiting.version, kept.waiting.replace) == (True, "keep_waiting", "3", False)
    assert kept.waiting.worse == [kept.waiting.checks[0].reason] and kept.waiting.worse[0].startswith("FAIL exact_match vs the waiting")
    assert kept.to_dict()["waiting"] == {"version": "3", "replace": False, "policy": "if_not_worse",
                                         "reasons": kept.waiting.reasons, "checks": kept.to_dict()["waiting"]["checks"]}
    always = DEMO_POLICY.model_copy(update={"replace_waiting": "always"})
    assert decide(m(0.80), m(0.88), always, good, waiting_version="3", waiting_deltas=worse_than_waiting).action == "register"
    not_worse = [delta(0.88, 0.88, -0.04, 0.04)]
    assert decide(m(0.80), m(0.88), DEMO_POLICY, good, waiting_version="3", waiting_deltas=not_worse).action == "register"
    # Typed deltas (the comparison's) decide exactly as their JSON form does.
    typed = [Delta.from_dict(d) for d in good]
    assert decide(m(0.80), m(0.88), DEMO_POLICY, typed).to_dict() == decide_promotion(m(0.80), m(0.88), DEMO_POLICY, good).to_dict()


# --- any registered metric as the primary one (issue #27): open-ended answers gated on response loss -------


def _open_ended(losses: dict[str, list[float]]):
    """An evaluation of open-ended answers: no answer matches exactly, each record's response loss given
    per family (weights: 20 answer tokens each)."""
    from tunegate.evaluation.scores import ModelEvaluation, Score

    evaluation = ModelEvaluation()
    evaluation.scores["exact_match"] = [Score(f"{f}{i}", f, 0.0) for f, values in losses.items() for i in range(len(values))]
    evaluation.scores["response_loss"] = [Score(f"{f}{i}", f, v, 20.0) for f, values in losses.items() for i, v in enumerate(values)]
    return evaluation


def _gate_on_response_loss(baseline, candidate, base=None, *overrides):
    from tunegate.evaluation.suites import compare

    params = load_params(DEMO, ["gate.primary_metric=response_loss", "gate.rules=[]", "gate.capability_may_not_drop=null", "gate.min_win_rate=null", *overrides])
    deltas = [d.to_dict() for d in compare(baseline, candidate, params.eval)]
    base_deltas = [d.to_dict() for d in compare(base, candidate, params.eval)] if base is not None else None
    return decide_promotion(baseline.summary(), candidate.summary(), params.gate, deltas, base_deltas)


def test_response_loss_as_the_primary_metric_gates_on_lower_loss():
    """The shared-mix case of issue #27: exact match is 0 for every open-ended answer before and after tuning, so
    an exact-match gate refuses a model whose loss fell 22.7 -> 4.3. With response_loss as the primary metric
    (lower is better, from the registry) the gate passes that model, refuses a worse one on the primary rule, and
    refuses one worse on one family for that family alone; the base-model rule follows the same metric."""
    import random

    rng = random.Random(0)
    noise = lambda: rng.uniform(-0.05, 0.05)  # noqa: E731
    base = _open_ended({f: [22.7 + noise() for _ in range(40)] for f in ("zh_alpaca", "tool_calls")})
    trained = _open_ended({f: [4.3 + noise() for _ in range(40)] for f in ("zh_alpaca", "tool_calls")})
    assert base.mean("exact_match") == trained.mean("exact_match") == 0.0

    exact = load_params(DEMO, ["gate.rules=[]"]).gate
    from tunegate.evaluation.suites import compare

    plain = [d.to_dict() for d in compare(base, trained, load_params(DEMO).eval)]
    refused_on_exact = decide_promotion(base.summary(), trained.summary(), exact, plain, plain)
    assert "FAIL exact_match over the base model" in [r.split(":")[0] for r in failing(refused_on_exact)]

    first = _gate_on_response_loss(base, trained, base)
    assert first.passed, first.reasons
    assert first.reasons[0].startswith("PASS response_loss non-inferiority: baseline 22.7")
    assert any(r.startswith("PASS response_loss over the base model: base model 22.7") for r in first.reasons), first.reasons
    assert {c.category for c in first.checks if c.rule.startswith("family ")} == {"zh_alpaca", "tool_calls"}

    worse = _open_ended({f: [4.3 + 0.4 + noise() for _ in range(40)] for f in ("zh_alpaca", "tool_calls")})
    refused = _gate_on_response_loss(trained, worse, base)
    assert not refused.passed
    assert [r.split(":")[0] for r in failing(refused)] == [
        "FAIL response_loss non-inferiority", "FAIL family tool_calls regression", "FAIL family zh_alpaca regression"]
    assert failing(refused)[0].startswith("FAIL response_loss non-inferiority: baseline 4.301 -> candidate 4.698 (delta +0.397, ")
    assert failing(refused)[0].endswith("the gain's lower bound must reach -0.100 (response_loss: lower is better, a gain is a fall)")

    one_family = _open_ended({"zh_alpaca": [4.3 - 0.2 + noise() for _ in range(40)], "tool_calls": [4.3 + 0.2 + noise() for _ in range(40)]})
    narrow = _gate_on_response_loss(trained, one_family, base)
    assert [r.split(":")[0] for r in failing(narrow)] == ["FAIL family tool_calls regression"], narrow.reasons

    better = _open_ended({f: [4.0 + noise() for _ in range(40)] for f in ("zh_alpaca", "tool_calls")})
    superior = _gate_on_response_loss(trained, better, base, "gate.min_improvement=0.2")
    assert superior.passed and superior.reasons[0].startswith("PASS response_loss superiority"), superior.reasons
    not_enough = _gate_on_response_loss(trained, better, base, "gate.min_improvement=0.5")
    assert [r.split(":")[0] for r in failing(not_enough)] == ["FAIL response_loss superiority"], not_enough.reasons


def test_the_primary_metric_must_be_one_a_running_suite_computes():
    from tunegate.evaluation.suites import gate_metric_problems

    params = load_params(DEMO, ["gate.primary_metric=response_loss"])
    assert gate_metric_problems(params.gate, params.eval) == []
    off = load_params(DEMO, ["gate.primary_metric=response_loss", "eval.response_loss=false"])
    problems = gate_metric_problems(off.gate, off.eval)
    assert [p.split(":")[0] for p in problems] == ["gate.primary_metric", "gate.rules[1].metric"]
    assert "which is off (eval.response_loss: false)" in problems[0]
    ifeval_off = load_params(DEMO, ["gate.primary_metric=ifeval_instruction_loose", "gate.rules=[]", "eval.ifeval.enabled=false"])
    assert gate_metric_problems(ifeval_off.gate, ifeval_off.eval) == [
        "gate.primary_metric: 'ifeval_instruction_loose' comes from the ifeval suite, which is off (eval.ifeval.enabled: "
        "false); turn it on, or name a metric of a suite that runs"]
    assert gate_metric_problems(load_params(DEMO, ["gate.primary_metric=bleu"]).gate)[0].startswith(
        "gate.primary_metric: no registered suite computes 'bleu'")


# --- capability_may_not_drop (issue #27) ------------------------------------------------------


def capability(task, baseline, candidate, low, high, adjusted):
    return delta(baseline, candidate, low, high, category=task, metric="capability", n=100, adjusted=adjusted)


CAPABILITY_POLICY = GateParams(min_improvement=0.0, min_improvement_over_base=None,
                               capability_may_not_drop={"max_drop": 0.10, "against": ["baseline", "base"]})


def test_a_forgotten_capability_task_fails_for_that_task_alone():
    deltas = [delta(0.9, 0.95, 0.01, 0.09),  # the primary metric improved
              capability("story_continuation", 1.0, 0.55, -0.55, -0.35, (-0.58, -0.32)),  # forgotten
              capability("piqa", 0.52, 0.50, -0.08, 0.04, (-0.10, 0.06))]
    decision = decide_promotion(m(0.9), m(0.95), CAPABILITY_POLICY, deltas)
    assert [r.split(":")[0] for r in failing(decision)] == ["FAIL capability story_continuation may not drop"]
    assert "a significant drop may not exceed 0.100" in failing(decision)[0]
    assert "simultaneous over 9 categories" in failing(decision)[0]  # judged on the tasks' simultaneous interval


def test_a_small_significant_drop_within_the_bound_passes_and_the_base_model_is_judged_too():
    deltas = [delta(0.9, 0.9, -0.03, 0.03), capability("story_continuation", 1.0, 0.925, -0.12, -0.04, (-0.13, -0.02))]
    against_base = [delta(0.2, 0.9, 0.6, 0.8), capability("story_continuation", 1.0, 0.7, -0.4, -0.2, (-0.42, -0.18))]
    decision = decide_promotion(m(0.9), m(0.9), CAPABILITY_POLICY, deltas, against_base)
    cells = {c.rule: c.passed for c in decision.checks if c.metric == "capability"}
    assert cells == {"capability story_continuation may not drop": True,
                     "capability story_continuation may not drop (vs the base model)": False}
    only_baseline = CAPABILITY_POLICY.model_copy(update={"capability_may_not_drop": CAPABILITY_POLICY.capability_may_not_drop.model_copy(update={"against": ["baseline"]})})
    assert decide_promotion(m(0.9), m(0.9), only_baseline, deltas, against_base).passed
    # The baseline is the base model: its deltas are the base deltas; each task is judged once.
    same = decide_promotion(m(0.9), m(0.9), CAPABILITY_POLICY, deltas, deltas)
    assert [c.rule for c in same.checks if c.metric == "capability"] == ["capability story_continuation may not drop"]


def test_no_capability_figure_fails_closed_and_null_turns_the_rule_off():
    deltas = [delta(0.9, 0.9, -0.03, 0.03)]
    decision = decide_promotion(m(0.9), m(0.9), CAPABILITY_POLICY, deltas)
    assert [r.split(":")[0] for r in failing(decision)] == ["FAIL capability may not drop"]
    off = CAPABILITY_POLICY.model_copy(update={"capability_may_not_drop": None})
    assert decide_promotion(m(0.9), m(0.9), off, deltas).passed
