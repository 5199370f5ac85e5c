"""The candidate against every reference of a run: the baseline, the base model (the gate's over-base
rule) and the candidate waiting for review, as one JSON-able comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunegate.evaluation.cache import EvaluationOutcome
from tunegate.evaluation.stats import Delta
from tunegate.evaluation.suites import ModelEvaluation, compare, worst_regressions
from tunegate.params import Params

Evaluated = EvaluationOutcome | ModelEvaluation  # what the evaluate task returned, or a plain evaluation


def evaluation_of(value: Evaluated) -> ModelEvaluation:
    return value.evaluation if isinstance(value, EvaluationOutcome) else value


def provenance_of(value: Evaluated) -> dict[str, Any]:
    if isinstance(value, EvaluationOutcome):
        return value.provenance()
    return {"reused": False, "key": None, "reason": "evaluated in this run"}


@dataclass(frozen=True)
class Reference:
    """A model the candidate is compared with: the baseline (``source`` "champion" | "base_model") or the
    candidate waiting for review (``source`` "waiting")."""

    source: str
    version: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "version": self.version}


@dataclass(frozen=True)
class WaitingComparison:
    """The new candidate against the one waiting for review."""

    version: str
    deltas: tuple[Delta, ...]
    evaluation: dict[str, Any]  # where its evaluation came from (provenance)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "deltas": [d.to_dict() for d in self.deltas], "evaluation": self.evaluation}


@dataclass(frozen=True)
class Comparison:
    """The candidate against every reference of a run: what the gate judges and every view shows.
    ``deltas``: against the baseline; ``base_deltas``: against the base model (the baseline's own when the
    baseline is the base model); ``over_base``: the primary metric's delta over the base model."""

    baseline: Reference
    baseline_metrics: dict[str, Any]
    candidate_metrics: dict[str, Any]
    deltas: tuple[Delta, ...]
    baseline_evaluation: dict[str, Any] = field(default_factory=dict)
    base_deltas: tuple[Delta, ...] = ()
    base_evaluation: dict[str, Any] = field(default_factory=dict)
    over_base: Delta | None = None
    waiting: WaitingComparison | None = None
    worst: list[dict[str, Any]] = field(default_factory=list)
    truncated_prompts: dict[str, int] = field(default_factory=dict)

    def delta(self, metric: str, category: str = "all") -> Delta | None:
        return next((d for d in self.deltas if d.metric == metric and d.category == category), None)

    @property
    def regressions(self) -> list[tuple[str, str]]:
        """(metric, category) of every significant loss against the baseline."""
        return [(d.metric, d.category) for d in self.deltas if d.regression]

    def to_dict(self) -> dict[str, Any]:
        """The JSON view (``comparison.json``-style: the summary's and the report's keys)."""
        return {
            "baseline": self.baseline.to_dict(),
            "baseline_metrics": self.baseline_metrics,
            "baseline_evaluation": self.baseline_evaluation,
            "candidate_metrics": self.candidate_metrics,
            "deltas": [d.to_dict() for d in self.deltas],
            "base_deltas": [d.to_dict() for d in self.base_deltas],
            "base_evaluation": self.base_evaluation,
            "over_base": self.over_base.to_dict() if self.over_base else None,
            "waiting": self.waiting.to_dict() if self.waiting else None,
            "worst": self.worst,
            "truncated_prompts": self.truncated_prompts,
        }


def compare_all(
    params: Params, baseline: Reference, baseline_eval: Evaluated, candidate_eval: Evaluated,
    base_eval: Evaluated | None = None, waiting_version: str | None = None, waiting_eval: Evaluated | None = None,
) -> Comparison:
    """Deltas with bootstrap intervals against the baseline, the base model and the waiting candidate.
    ``base_eval``: the base model's, when the baseline is a champion; with the base model as baseline, the
    baseline's deltas are the over-base ones. Where each evaluation came from goes with it
    (``baseline_evaluation``, ``base_evaluation``, ``waiting.evaluation``)."""
    provenance = provenance_of(baseline_eval)
    base_provenance = provenance_of(base_eval) if base_eval is not None else provenance
    baseline_ev, candidate_ev = evaluation_of(baseline_eval), evaluation_of(candidate_eval)
    deltas = compare(baseline_ev, candidate_ev, params.eval)
    if base_eval is not None:
        base_deltas = compare(evaluation_of(base_eval), candidate_ev, params.eval)
    elif baseline.source == "base_model":
        base_deltas = deltas
    else:
        base_deltas = []
    over_base = next((d for d in base_deltas if d.metric == params.gate.primary_metric and d.category == "all"), None)
    waiting_deltas = compare(evaluation_of(waiting_eval), candidate_ev, params.eval) if waiting_version and waiting_eval is not None else []
    return Comparison(
        baseline=baseline,
        baseline_metrics=baseline_ev.summary(),
        baseline_evaluation=provenance,
        candidate_metrics=candidate_ev.summary(),
        deltas=tuple(deltas),
        base_deltas=tuple(base_deltas),
        base_evaluation=base_provenance,
        over_base=over_base,
        waiting=WaitingComparison(waiting_version, tuple(waiting_deltas), provenance_of(waiting_eval)) if waiting_deltas else None,
        worst=worst_regressions(baseline_ev, candidate_ev),
        truncated_prompts={"baseline": baseline_ev.truncated_prompts, "candidate": candidate_ev.truncated_prompts},
    )


def delta_metrics(comparison: Comparison) -> dict[str, float]:
    """The comparison's MLflow metrics: ``delta_<metric>[.<category>]``, the primary intervals' bounds
    (``delta_<metric>_low`` / ``_high``) and ``over_base_<metric>[_low|_high]``."""
    deltas, over_base = comparison.deltas, comparison.over_base
    overall = [d for d in deltas if d.category == "all"]
    return (
        {f"delta_{d.metric}{'' if d.category == 'all' else '.' + d.category}": d.delta for d in deltas}
        | {f"delta_{d.metric}_low": d.low for d in overall}
        | {f"delta_{d.metric}_high": d.high for d in overall}
        | ({f"over_base_{over_base.metric}": over_base.delta, f"over_base_{over_base.metric}_low": over_base.low,
            f"over_base_{over_base.metric}_high": over_base.high} if over_base else {})
    )
