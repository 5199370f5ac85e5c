"""The candidate against every reference of a run: the baseline, the base model (the gate's over-base
rule) and the candidate waiting for review, as one JSON-able comparison."""

from __future__ import annotations

from typing import Any

from tunegate.evaluation.cache import EvaluationOutcome
from tunegate.evaluation.suites import ModelEvaluation, compare, worst_regressions
from tunegate.params import Params

Evaluated = EvaluationOutcome | ModelEvaluation  # what the evaluate task returned, or a plain evaluation


def evaluation_of(value: Evaluated) -> ModelEvaluation:
    return value.evaluation if isinstance(value, EvaluationOutcome) else value


def provenance_of(value: Evaluated) -> dict[str, Any]:
    if isinstance(value, EvaluationOutcome):
        return value.provenance()
    return {"reused": False, "key": None, "reason": "evaluated in this run"}


def compare_all(
    params: Params, baseline: dict[str, Any], baseline_eval: Evaluated, candidate_eval: Evaluated,
    base_eval: Evaluated | None = None, waiting_version: str | None = None, waiting_eval: Evaluated | None = None,
) -> dict[str, Any]:
    """Deltas with bootstrap intervals against the baseline (``{"source", "version"}``), the base model and
    the waiting candidate. ``base_eval``: the base model's, when the baseline is a champion; with the base
    model as baseline, the baseline's deltas are the over-base ones. Where each evaluation came from goes
    with it (``baseline_evaluation``, ``base_evaluation``, ``waiting.evaluation``)."""
    provenance = provenance_of(baseline_eval)
    base_provenance = provenance_of(base_eval) if base_eval is not None else provenance
    baseline_ev, candidate_ev = evaluation_of(baseline_eval), evaluation_of(candidate_eval)
    deltas = compare(baseline_ev, candidate_ev, params.eval)
    if base_eval is not None:
        base_deltas = compare(evaluation_of(base_eval), candidate_ev, params.eval)
    elif baseline["source"] == "base_model":
        base_deltas = deltas
    else:
        base_deltas = []
    over_base = next((d for d in base_deltas if d.metric == params.gate.primary_metric and d.category == "all"), None)
    waiting_deltas = compare(evaluation_of(waiting_eval), candidate_ev, params.eval) if waiting_version and waiting_eval is not None else []
    return {
        "baseline": dict(baseline),
        "baseline_metrics": baseline_ev.summary(),
        "baseline_evaluation": provenance,
        "candidate_metrics": candidate_ev.summary(),
        "deltas": [d.to_dict() for d in deltas],
        "base_deltas": [d.to_dict() for d in base_deltas],
        "base_evaluation": base_provenance,
        "over_base": over_base.to_dict() if over_base else None,  # the primary metric's delta over the base model: the gate's and the summary's
        "waiting": {"version": waiting_version, "deltas": [d.to_dict() for d in waiting_deltas],
                    "evaluation": provenance_of(waiting_eval)} if waiting_deltas else None,
        "worst": worst_regressions(baseline_ev, candidate_ev),
        "truncated_prompts": {"baseline": baseline_ev.truncated_prompts, "candidate": candidate_ev.truncated_prompts},
    }


def delta_metrics(comparison: dict[str, Any]) -> dict[str, float]:
    """The comparison's MLflow metrics: ``delta_<metric>[.<category>]``, the primary intervals' bounds
    (``delta_<metric>_low`` / ``_high``) and ``over_base_<metric>[_low|_high]``."""
    deltas, over_base = comparison["deltas"], comparison.get("over_base")
    overall = [d for d in deltas if d["category"] == "all"]
    return (
        {f"delta_{d['metric']}{'' if d['category'] == 'all' else '.' + d['category']}": d["delta"] for d in deltas}
        | {f"delta_{d['metric']}_low": d["low"] for d in overall}
        | {f"delta_{d['metric']}_high": d["high"] for d in overall}
        | ({f"over_base_{over_base['metric']}": over_base["delta"], f"over_base_{over_base['metric']}_low": over_base["low"],
            f"over_base_{over_base['metric']}_high": over_base["high"]} if over_base else {})
    )
