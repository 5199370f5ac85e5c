"""The promotion gate: a pure decision from baseline and candidate metrics and the policy."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunegate.params import GateParams


@dataclass(frozen=True)
class GateCheck:
    rule: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [f"{'PASS' if c.passed else 'FAIL'} {c.rule}: {c.detail}" for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "checks": [asdict(c) for c in self.checks]}


def decide_promotion(baseline: dict[str, Any], candidate: dict[str, Any], policy: GateParams) -> GateDecision:
    """Candidate must beat the baseline on the primary metric by ``min_improvement`` and
    lose no more than ``max_family_regression`` on any task family."""
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
        )
    ]
    base_families = baseline.get("per_family", {})
    cand_families = candidate.get("per_family", {})
    for family in sorted(set(base_families) | set(cand_families)):
        if family not in cand_families:
            checks.append(GateCheck(f"family {family}", False, "missing from the candidate's evaluation"))
            continue
        before = float(base_families.get(family, 0.0))
        after = float(cand_families[family])
        drop = before - after
        checks.append(
            GateCheck(
                rule=f"family {family} regression",
                passed=drop <= policy.max_family_regression,
                detail=f"{before:.3f} -> {after:.3f} (allowed drop {policy.max_family_regression:.3f})",
            )
        )
    return GateDecision(passed=all(c.passed for c in checks), checks=checks)
