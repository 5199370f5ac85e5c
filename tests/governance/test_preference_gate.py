"""The preference rules against the parent (issue #28), on hand-built deltas: the decision's logic alone."""

from __future__ import annotations

from tunegate.governance.gate import decide, fails_only_against_parent, parent_checks
from tunegate.params import GateParams, PreferenceGate


def delta(metric, base, cand, low, high, regression=False, higher=True, n=100):
    return {"metric": metric, "category": "all", "baseline": base, "candidate": cand, "delta": cand - base, "low": low,
            "high": high, "regression": regression, "higher_is_better": higher, "n": n, "confidence": 0.95}


def test_the_dpo_model_must_beat_its_parent_on_the_judge_and_lose_nothing_significant():
    policy = PreferenceGate()
    better = [delta("judge_win_rate", 0.5, 0.62, 0.05, 0.19), delta("exact_match", 0.9, 0.91, -0.02, 0.04)]
    checks = parent_checks(better, policy, "this run's SFT model")
    assert [c.passed for c in checks] == [True, True]
    assert checks[0].rule == "vs parent: judge win rate" and "lower bound must reach 0.500" in checks[0].detail
    tied = [delta("judge_win_rate", 0.5, 0.51, -0.04, 0.06), delta("exact_match", 0.9, 0.91, -0.02, 0.04)]
    assert not parent_checks(tied, policy)[0].passed  # not beating the parent is not enough
    worse_elsewhere = [delta("judge_win_rate", 0.5, 0.62, 0.05, 0.19),
                       delta("exact_match", 0.9, 0.8, -0.15, -0.05, regression=True)]
    checks = parent_checks(worse_elsewhere, policy)
    assert [c.passed for c in checks] == [True, False] and checks[1].rule == "vs parent: exact_match may not drop"
    unjudged = parent_checks([delta("exact_match", 0.9, 0.9, -0.01, 0.01)], policy)
    assert not unjudged[0].passed and "enable eval.judge" in unjudged[0].detail


def test_preference_accuracy_as_the_metric_to_beat():
    policy = PreferenceGate(beat_parent_on="preference_accuracy")
    swapped = [delta("preference_accuracy", 0.5, 0.2, -0.38, -0.22)]
    [check] = parent_checks(swapped, policy)
    assert not check.passed and check.rule == "vs parent: preference_accuracy gain" and "parity 0.500 -> candidate 0.200" in check.detail
    [check] = parent_checks([delta("preference_accuracy", 0.5, 0.8, 0.22, 0.38)], policy)
    assert check.passed


def test_the_decision_folds_in_the_parent_rules_and_tells_them_apart():
    gate = GateParams(min_improvement_over_base=None)
    deltas = [delta("exact_match", 0.0, 0.9, 0.85, 0.95)]
    passed = decide({"per_family": {}}, {"per_family": {}}, gate, deltas)
    assert passed.passed
    refused = decide({"per_family": {}}, {"per_family": {}}, gate, deltas,
                     parent_deltas=[delta("preference_accuracy", 0.5, 0.2, -0.38, -0.22)],
                     preference=PreferenceGate(beat_parent_on="preference_accuracy"))
    assert not refused.passed and refused.action == "reject" and fails_only_against_parent(refused)
    assert not fails_only_against_parent(passed)


def test_a_tolerance_vs_the_parent_is_the_policys_and_holds_only_up_to_its_bound():
    """preference.gate.max_drop_vs_parent: DPO lowers the likelihood of the reference answers a little (the
    demo's response loss); a policy may tolerate a significant loss up to a bound, and no further."""
    beat = delta("preference_accuracy", 0.5, 0.9, 0.35, 0.45)
    small = delta("response_loss", 0.028, 0.031, 0.001, 0.005, regression=True, higher=False)
    large = delta("response_loss", 0.028, 0.128, 0.08, 0.12, regression=True, higher=False)
    strict = PreferenceGate(beat_parent_on="preference_accuracy")
    assert [c.passed for c in parent_checks([beat, small], strict)] == [True, False]
    tolerant = PreferenceGate(beat_parent_on="preference_accuracy", max_drop_vs_parent={"response_loss": 0.02})
    checks = parent_checks([beat, small], tolerant)
    assert [c.passed for c in checks] == [True, True] and "a significant loss may not exceed 0.020" in checks[1].detail
    assert [c.passed for c in parent_checks([beat, large], tolerant)] == [True, False]  # 0.100 > 0.020: refused
    # The tolerance is the named metric's: exact match stays strict.
    em = delta("exact_match", 0.91, 0.90, -0.02, -0.001, regression=True)
    assert [c.passed for c in parent_checks([beat, em], tolerant)] == [True, False]


def test_the_preference_gates_metric_names_are_checked_before_the_flow():
    from pathlib import Path

    from tunegate.evaluation.suites import preference_gate_problems
    from tunegate.params import load_params

    demo = Path(__file__).resolve().parents[2] / "params" / "demo_preference.yaml"
    assert preference_gate_problems(load_params(demo).preference) == []
    typo = load_params(demo, ["preference.gate.beat_parent_on=judge_winrate",
                              "preference.gate.max_drop_vs_parent={response_los: 0.1}"])
    problems = preference_gate_problems(typo.preference, typo.eval)
    assert [p.split(":")[0] for p in problems] == ["preference.gate.beat_parent_on", "preference.gate.max_drop_vs_parent.response_los"]
    assert "no registered suite computes 'judge_winrate'" in problems[0]
    off = load_params(demo, ["preference.gate.beat_parent_on=judge_win_rate", "eval.judge.enabled=false"])
    [problem] = preference_gate_problems(off.preference, off.eval)
    assert "the judge suite, which is off" in problem or "which is off (eval.judge" in problem, problem
