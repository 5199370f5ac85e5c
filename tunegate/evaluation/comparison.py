"""The candidate against every reference of a run: the baseline, the base model (the gate's over-base
rule) and the candidate waiting for review, as one JSON-able comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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
class ParentComparison:
    """A preference-tuned candidate against its parent (the model it started from, its frozen DPO reference) on
    every suite, the judge and the held-out pairs (``preference``: the implicit-reward accuracy, the share of
    held-out pairs where the candidate's implicit reward prefers the chosen answer, with its interval about
    parity, and each model's own share of pairs it gives the chosen answer the higher log-probability)."""

    parent: dict[str, Any]
    deltas: tuple[Delta, ...]
    evaluation: dict[str, Any]
    judge: dict[str, Any] | None = None
    preference: dict[str, Any] = field(default_factory=dict)

    def delta(self, metric: str, category: str = "all") -> Delta | None:
        return next((d for d in self.deltas if d.metric == metric and d.category == category), None)

    def to_dict(self) -> dict[str, Any]:
        return {"parent": self.parent, "deltas": [d.to_dict() for d in self.deltas], "evaluation": self.evaluation,
                "judge": self.judge, "preference": self.preference}


PREFERENCE_ACCURACY = "preference_accuracy"


def preference_figures(params: Params, held_out: dict[str, Any]) -> tuple[dict[str, Any], list[Delta]]:
    """The held-out pairs' figures (:func:`tunegate.tuning.objectives.dpo.held_out_margins`): the implicit-reward
    accuracy (candidate margin above the parent's: 1, equal: 0.5, below: 0) with its paired bootstrap interval
    about parity, overall and per family, and the reference-free shares of each model."""
    from tunegate.evaluation.scores import Score

    policy, reference = held_out["policy_margin"], held_out["reference_margin"]
    keys, families = held_out["keys"], held_out["families"]

    def won(a: float, b: float) -> float:
        return 1.0 if a > b else 0.5 if a == b else 0.0

    scores = [Score(k, f, won(p, r)) for k, f, p, r in zip(keys, families, policy, reference)]
    parity = [Score(k, f, 0.5) for k, f in zip(keys, families)]
    deltas = compare(ModelEvaluation(scores={PREFERENCE_ACCURACY: parity}), ModelEvaluation(scores={PREFERENCE_ACCURACY: scores}),
                     params.eval) if scores else []
    overall = next((d for d in deltas if d.category == "all"), None)
    n = len(scores)
    figures = {
        "pairs": n,
        "accuracy": overall.candidate if overall else None,
        "low": overall.baseline + overall.low if overall else None,
        "high": overall.baseline + overall.high if overall else None,
        "candidate_prefers_chosen": sum(won(p, 0.0) for p in policy) / n if n else None,
        "parent_prefers_chosen": sum(won(r, 0.0) for r in reference) / n if n else None,
        "mean_margin_gain": sum(p - r for p, r in zip(policy, reference)) / n if n else None,
        "beta": held_out.get("beta"),
    }
    return figures, deltas


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
    judge: dict[str, Any] | None = None  # the pairwise judge against the baseline (JudgeOutcome.to_dict()), if it ran
    parent: ParentComparison | None = None  # a preference-tuned candidate against the model it started from

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
            "judge": self.judge,
            "parent": self.parent.to_dict() if self.parent else None,
        }


def compare_parent(params: Params, parent: dict[str, Any], parent_eval: Evaluated, candidate_eval: Evaluated,
                   held_out: dict[str, Any] | None) -> ParentComparison:
    """The preference-tuned candidate against its parent on every suite, the judge (both orders) and the held-out
    pairs (:func:`preference_figures`)."""
    parent_ev, candidate_ev = evaluation_of(parent_eval), evaluation_of(candidate_eval)
    deltas = compare(parent_ev, candidate_ev, params.eval)
    judged = None
    if params.eval.judge.enabled:
        judged, judge_deltas = pairwise_judge(params, parent_ev, candidate_ev)
        deltas += judge_deltas
        judged = {**judged, "summary": judge_summary(judged, judge_deltas)}
    figures: dict[str, Any] = {}
    if held_out:
        figures, accuracy = preference_figures(params, held_out)
        deltas += accuracy
    return ParentComparison(parent, tuple(deltas), provenance_of(parent_eval), judged, figures)


def compare_all(
    params: Params, baseline: Reference, baseline_eval: Evaluated, candidate_eval: Evaluated,
    base_eval: Evaluated | None = None, waiting_version: str | None = None, waiting_eval: Evaluated | None = None,
    parent: ParentComparison | None = None,
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
    waiting_deltas = compare(evaluation_of(waiting_eval), candidate_ev, params.eval) if waiting_version and waiting_eval is not None else []
    candidate_metrics, judged = candidate_ev.summary(), None
    if params.eval.judge.enabled:
        judged, judge_deltas = pairwise_judge(params, baseline_ev, candidate_ev)
        deltas += judge_deltas
        if baseline.source == "base_model":
            base_deltas = deltas
        if waiting_version and waiting_eval is not None:
            waiting_deltas += pairwise_judge(params, evaluation_of(waiting_eval), candidate_ev)[1]
        if base_eval is not None and params.gate.primary_metric == "judge_win_rate":  # the over-base rule judges it too
            base_deltas += pairwise_judge(params, evaluation_of(base_eval), candidate_ev)[1]
        candidate_metrics["judge"] = judge_summary(judged, judge_deltas)
        if candidate_metrics["judge"]["win_rate"] is not None:
            candidate_metrics["judge_win_rate"] = candidate_metrics["judge"]["win_rate"]
    over_base = next((d for d in base_deltas if d.metric == params.gate.primary_metric and d.category == "all"), None)
    return Comparison(
        baseline=baseline,
        baseline_metrics=baseline_ev.summary(),
        baseline_evaluation=provenance,
        candidate_metrics=candidate_metrics,
        deltas=tuple(deltas),
        base_deltas=tuple(base_deltas),
        base_evaluation=base_provenance,
        over_base=over_base,
        waiting=WaitingComparison(waiting_version, tuple(waiting_deltas), provenance_of(waiting_eval)) if waiting_deltas else None,
        worst=worst_regressions(baseline_ev, candidate_ev),
        truncated_prompts={"baseline": baseline_ev.truncated_prompts, "candidate": candidate_ev.truncated_prompts},
        judge=judged,
        parent=parent,
    )


def pairwise_judge(params: Params, reference: ModelEvaluation, candidate: ModelEvaluation) -> tuple[dict[str, Any], list[Delta]]:
    """The judge on the two models' answers (``examples["judge"]``), both orders: its outcome (every pair, the
    judge's identity, prompt hash, decoding) and the ``judge_win_rate`` deltas against parity, overall and per
    category (none when the suite failed: the gate then fails closed)."""
    from tunegate.evaluation.cache import tree_sha256
    from tunegate.evaluation.judge import make_judge, judge_answers, win_rate_scores

    judge = make_judge(params.eval.judge.judge, str(params.base_model_path()))
    try:
        outcome = judge_answers(params.eval.judge, reference.examples.get("judge", []), candidate.examples.get("judge", []), judge)
    finally:
        judge.close()
    if outcome.judge.get("kind") == "in_process":
        outcome.judge["files_sha256"] = tree_sha256(Path(outcome.judge["path"]), remember=True)
    if outcome.failed:
        return outcome.to_dict(), []
    parity, scores = win_rate_scores(outcome)
    return outcome.to_dict(), compare(ModelEvaluation(scores={"judge_win_rate": parity}),
                                      ModelEvaluation(scores={"judge_win_rate": scores}), params.eval)


def judge_summary(judged: dict[str, Any], deltas: list[Delta]) -> dict[str, Any]:
    """The judge's figures as every view shows them: the win rate and its interval (parity + the delta's), the
    counts, the answers' length difference, who judged and how; ``failed`` when the suite failed."""
    overall = next((d for d in deltas if d.category == "all"), None)
    return {
        "win_rate": overall.candidate if overall else None,
        "low": overall.baseline + overall.low if overall else None,
        "high": overall.baseline + overall.high if overall else None,
        "n": overall.n if overall else 0,
        "counts": judged["counts"],
        "length_difference_chars": judged["length_difference_chars"],
        "judge": judged["judge"],
        "prompt_sha256": judged["prompt_sha256"],
        "decoding": judged["decoding"],
        "requests": judged["requests"],
        "failed": judged["failed"],
    }


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
        | _judge_metrics(comparison.candidate_metrics.get("judge"))
        | _parent_metrics(comparison.parent)
    )


def _parent_metrics(parent: ParentComparison | None) -> dict[str, float]:
    """Against the parent: ``parent_delta_<metric>[.<category>]``, the judge's win rate and the held-out pairs'
    figures (``preference_accuracy`` with ``_low``/``_high``, each model's own share)."""
    if parent is None:
        return {}
    out = {f"parent_delta_{d.metric}{'' if d.category == 'all' else '.' + d.category}": d.delta for d in parent.deltas
           if d.metric not in ("judge_win_rate", PREFERENCE_ACCURACY)}
    judged = (parent.judge or {}).get("summary") or {}
    if judged.get("win_rate") is not None:
        out |= {"parent_judge_win_rate": judged["win_rate"], "parent_judge_win_rate_low": judged["low"],
                "parent_judge_win_rate_high": judged["high"]}
    figures = parent.preference
    if figures.get("accuracy") is not None:
        out |= {PREFERENCE_ACCURACY: figures["accuracy"], f"{PREFERENCE_ACCURACY}_low": figures["low"],
                f"{PREFERENCE_ACCURACY}_high": figures["high"],
                "preference_candidate_prefers_chosen": figures["candidate_prefers_chosen"],
                "preference_parent_prefers_chosen": figures["parent_prefers_chosen"]}
    return out


def _judge_metrics(judged: dict[str, Any] | None) -> dict[str, float]:
    """``judge_win_rate`` with its interval's bounds, the counts and the length difference (MLflow)."""
    if not judged or judged.get("win_rate") is None:
        return {}
    out = {"judge_win_rate": judged["win_rate"], "judge_win_rate_low": judged["low"], "judge_win_rate_high": judged["high"]}
    out |= {f"judge_pairs_{k}": float(v) for k, v in judged["counts"].items()}
    if judged.get("length_difference_chars") is not None:
        out["judge_length_difference_chars"] = judged["length_difference_chars"]
    return out
