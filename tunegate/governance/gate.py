"""The promotion gate: a pure decision from baseline and candidate metrics and the policy."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunegate.params import GateParams


@dataclass(frozen=True)
class GateCheck:
    """One rule's outcome. ``metric``/``category``: the evaluation figure it judged (None: none), so that
    every view shows this outcome beside that figure; ``threshold``: the rule's bound, in short."""

    rule: str
    passed: bool
    detail: str
    metric: str | None = None
    category: str = "all"
    threshold: str = ""

    @property
    def reason(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.rule}: {self.detail}"

    @property
    def verdict(self) -> str:
        """``PASS (threshold)`` / ``FAIL (threshold)``: the outcome as a table cell shows it."""
        return f"{'PASS' if self.passed else 'FAIL'} ({self.threshold})" if self.threshold else ("PASS" if self.passed else "FAIL")


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "checks": [asdict(c) for c in self.checks]}


def decide_promotion(
    baseline: dict[str, Any], candidate: dict[str, Any], policy: GateParams, deltas: list[dict[str, Any]] | None = None,
    base_deltas: list[dict[str, Any]] | None = None,
) -> GateDecision:
    """One check per rule: the primary metric's margin, each family's allowed drop, each metric
    rule on the evaluation's intervals, the hard safety rules, and the primary metric's gain over the
    base model (``base_deltas``: candidate vs base model; the baseline's own ``deltas`` when the baseline
    is the base model). All must pass."""
    metric = policy.primary_metric
    base_value, cand_value = float(baseline[metric]), float(candidate[metric])
    delta = cand_value - base_value
    checks = [
        GateCheck(
            rule=f"{metric} improvement",
            passed=delta >= policy.min_improvement,
            detail=(
                f"baseline {base_value:.3f} -> candidate {cand_value:.3f} "
                f"(delta {delta:+.3f}, required >= {policy.min_improvement:+.3f})"
            ),
            metric=metric, threshold=f"delta >= {policy.min_improvement:+.3f}",
        )
    ]
    base_families = baseline.get("per_family", {})
    cand_families = candidate.get("per_family", {})
    for family in sorted(set(base_families) | set(cand_families)):
        if family not in cand_families:
            checks.append(GateCheck(f"family {family}", False, "missing from the candidate's evaluation", metric, family, "evaluated"))
            continue
        before = float(base_families.get(family, 0.0))
        after = float(cand_families[family])
        drop = before - after
        checks.append(
            GateCheck(
                rule=f"family {family} regression",
                passed=drop <= policy.max_family_regression,
                detail=f"{before:.3f} -> {after:.3f} (allowed drop {policy.max_family_regression:.3f})",
                metric=metric, category=family, threshold=f"drop <= {policy.max_family_regression:.3f}",
            )
        )
    checks += interval_checks(deltas or [], policy)
    over_base = over_base_check(base_deltas, policy)
    if over_base is not None:
        checks.append(over_base)
    return GateDecision(passed=all(c.passed for c in checks), checks=checks)


def over_base_check(base_deltas: list[dict[str, Any]] | None, policy: GateParams) -> GateCheck | None:
    """The candidate must beat the base model on the primary metric: the lower bound of the paired
    interval of its gain must lie above ``min_improvement_over_base`` (None: no such rule). A run that
    did not compare with the base model fails it: the rule cannot be judged."""
    threshold = policy.min_improvement_over_base
    if threshold is None:
        return None
    metric = policy.primary_metric
    rule = f"{metric} over the base model"
    bound = f"over the base model: lower bound > {threshold:+.3f}"
    delta = {(d["metric"], d["category"]): d for d in base_deltas or []}.get((metric, "all"))
    if delta is None:
        return GateCheck(rule, False, "the candidate was not compared with the base model", metric, threshold=bound)
    _, gain_low = _gain(delta)
    return GateCheck(
        rule, gain_low > threshold,
        f"base model {delta['baseline']:.3f} -> candidate {delta['candidate']:.3f} (delta {delta['delta']:+.3f}, "
        f"interval [{delta['low']:+.3f}, {delta['high']:+.3f}]; the gain's lower bound must lie above {threshold:+.3f})",
        metric, threshold=bound,
    )


def _gain(delta: dict[str, Any]) -> tuple[float, float]:
    """(point gain, lower bound of the gain), sign-corrected for lower-is-better metrics."""
    if delta.get("higher_is_better", True):
        return delta["delta"], delta["low"]
    return -delta["delta"], -delta["high"]


def interval_checks(deltas: list[dict[str, Any]], policy: GateParams) -> list[GateCheck]:
    by_key = {(d["metric"], d["category"]): d for d in deltas}
    checks = []
    for rule in policy.rules:
        delta = by_key.get((rule.metric, rule.category))
        name = f"{rule.metric}[{rule.category}]"
        if delta is None:
            checks.append(GateCheck(name, False, "metric not evaluated (enable its suite)", rule.metric, rule.category, "evaluated"))
            continue
        gain, gain_low = _gain(delta)
        interval = f"delta {delta['delta']:+.3f}, interval [{delta['low']:+.3f}, {delta['high']:+.3f}]"
        if rule.min_improvement is not None:
            checks.append(GateCheck(f"{name} improvement", gain_low >= rule.min_improvement,
                                    f"{interval}; the gain's lower bound must reach {rule.min_improvement:+.3f}",
                                    rule.metric, rule.category, f"lower bound of the gain >= {rule.min_improvement:+.3f}"))
        else:
            failed = delta["regression"] and -gain > rule.max_regression
            checks.append(GateCheck(f"{name} regression", not failed,
                                    f"{interval}; a significant loss may not exceed {rule.max_regression:.3f}",
                                    rule.metric, rule.category, f"significant loss <= {rule.max_regression:.3f}"))
    hard = policy.hard_rules
    refusal = by_key.get(("refusal_rate", "all"))
    if hard.refusal_may_not_drop and refusal is not None:
        checks.append(GateCheck("hard: refusal of harmful prompts may not drop", not refusal["regression"],
                                f"{refusal['baseline']:.3f} -> {refusal['candidate']:.3f}, interval [{refusal['low']:+.3f}, {refusal['high']:+.3f}]",
                                "refusal_rate", threshold="no significant drop"))
    over = by_key.get(("over_refusal_rate", "all"))
    if over is not None:
        failed = over["regression"] and over["delta"] > hard.max_over_refusal_increase
        checks.append(GateCheck("hard: over-refusal of safe prompts", not failed,
                                f"{over['baseline']:.3f} -> {over['candidate']:.3f}, interval [{over['low']:+.3f}, {over['high']:+.3f}]; "
                                f"a significant rise may not exceed {hard.max_over_refusal_increase:.3f}",
                                "over_refusal_rate", threshold=f"significant rise <= {hard.max_over_refusal_increase:.3f}"))
    return checks


def verdict_cell(checks: list[dict[str, Any]], metric: str, category: str = "all") -> str:
    """The gate's outcome for one figure, as every table shows it: each rule that judged ``metric`` in
    ``category`` (``GateCheck`` as ``to_dict`` stored it), ``PASS (bound)`` / ``FAIL (bound)``; "not gated"
    when no rule did. Never a judgement of its own."""
    cells = [GateCheck(**c).verdict for c in checks if c.get("metric") == metric and c.get("category", "all") == category]
    return "; ".join(cells) or "not gated"


def waiting_checks(waiting_deltas: list[dict[str, Any]], policy: GateParams) -> list[GateCheck]:
    """The new candidate against the one waiting for review, on the same suites: not significantly worse
    (its interval entirely on the wrong side of zero) on the primary metric, on each rule's metric and on
    the hard rules' refusal metrics. The figures are always shown; with ``replace_waiting: always`` they
    do not decide."""
    by_key = {(d["metric"], d["category"]): d for d in waiting_deltas}
    wanted = [(policy.primary_metric, "all"), *((r.metric, r.category) for r in policy.rules)]
    if policy.hard_rules.refusal_may_not_drop:
        wanted.append(("refusal_rate", "all"))
    wanted.append(("over_refusal_rate", "all"))
    checks, seen = [], set()
    for key in wanted:
        if key in seen or key not in by_key:
            continue
        seen.add(key)
        d = by_key[key]
        name = d["metric"] + ("" if d["category"] == "all" else f"[{d['category']}]")
        checks.append(GateCheck(
            f"{name} vs the waiting candidate", not d["regression"],
            f"waiting {d['baseline']:.3f} -> new {d['candidate']:.3f} (delta {d['delta']:+.3f}, interval [{d['low']:+.3f}, {d['high']:+.3f}])"
            + ("; significantly worse" if d["regression"] else ""),
            d["metric"], d["category"], "not significantly worse",
        ))
    if (policy.primary_metric, "all") not in by_key:
        checks.insert(0, GateCheck(f"{policy.primary_metric} vs the waiting candidate", False, "not compared",
                                   policy.primary_metric, threshold="not significantly worse"))
    return checks
