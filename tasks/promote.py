"""Gate and registration: decide, then register a passing candidate under alias ``candidate``."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.input import RunInput
from prefect.cache_policies import NONE

from tasks.common import RETRY_TRANSIENT, BaselineRef, DataRef, RunContext, timed
from tunegate import tags
from tunegate.adapters import mlflow as tracking
from tunegate.governance import promotion
from tunegate.governance.trail import record
from tunegate.evaluation.comparison import Comparison
from tunegate.governance.gate import GateDecision, decide
from tunegate.governance.summary import RunSummary
from tunegate.params import Params


@task(cache_policy=NONE, **RETRY_TRANSIENT)
def check_champion(params: Params, ctx: RunContext, accept_unaudited: bool = False) -> None:
    """Before anything is prepared or trained: a champion alias moved outside tunegate is no baseline
    (:func:`tunegate.governance.promotion.check_champion_audited`) unless accepted, which is audited."""
    drift = promotion.check_champion_audited(params.model.registered_name, ctx.run_id, accept_unaudited, ctx.commit)
    if drift is not None:
        get_run_logger().warning("%s; accepted as the baseline (--accept-unaudited-champion)", drift.message())


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("gate")
def gate(params: Params, comparison: Comparison, ctx: RunContext) -> GateDecision:
    """The one decision (:func:`tunegate.governance.gate.decide`): the rules, and against a candidate waiting
    for review the policy that says whether the new one replaces it. Logged, tagged and audited."""
    logger = get_run_logger()
    waiting = comparison.waiting
    parent = comparison.parent  # a preference-tuned candidate: also against the model it started from
    decision = decide(comparison.baseline_metrics, comparison.candidate_metrics, params.gate, comparison.deltas,
                      comparison.base_deltas, waiting.version if waiting else None, waiting.deltas if waiting else None,
                      parent.deltas if parent else None, params.preference.gate if parent and params.preference else None,
                      parent.parent["label"] if parent else "the parent")
    as_dict = decision.to_dict()
    # A preference run gates twice when its DPO model is refused (then the SFT parent): no reason of the first
    # decision may be left beside the second's.
    stale = [k for k in tracking.get_run(ctx.run_id).data.tags if k.startswith(tags.GATE_CHECK_PREFIX)
             and int(k.removeprefix(tags.GATE_CHECK_PREFIX) or 0) >= len(decision.reasons)]
    for key in stale:
        tracking.client().delete_tag(ctx.run_id, key)
    tracking.log_dict(ctx.run_id, as_dict, "gate/decision.json")
    tracking.set_tags(
        ctx.run_id,
        {tags.GATE: "passed" if decision.passed else "failed"}
        | {f"{tags.GATE_CHECK_PREFIX}{i:02d}": reason for i, reason in enumerate(decision.reasons)},
    )
    record("gate_decision", {"run_id": ctx.run_id, **as_dict}, model_name=params.model.registered_name, commit=ctx.commit)
    for reason in decision.reasons:
        logger.info("gate: %s", reason)
    if decision.waiting is not None:
        for reason in decision.waiting.reasons:
            logger.info("vs waiting version %s: %s", decision.waiting.version, reason)
    return decision


@task(cache_policy=NONE, **RETRY_TRANSIENT)
def keep_waiting(params: Params, ctx: RunContext, decision: GateDecision) -> None:
    """The new candidate passed the gate but is significantly worse than the one waiting for review: it is
    not registered; the trail and the run say which version is better and by how much."""
    waiting = decision.waiting
    if decision.action != "keep_waiting" or waiting is None:
        raise RuntimeError(f"keep_waiting called for a decision whose action is {decision.action}")
    worse = waiting.worse
    record("candidate_kept", {"run_id": ctx.run_id, "model": params.model.registered_name, "version": waiting.version,
                              "reason": f"not registered: version {waiting.version}, waiting, is better", "checks": worse},
           model_name=params.model.registered_name, commit=ctx.commit)
    tracking.set_tags(ctx.run_id, {tags.KEPT_WAITING_VERSION: waiting.version})
    get_run_logger().warning("not registered: version %s, waiting, is better (%s)", waiting.version, "; ".join(worse))


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("register")
def register_candidate(params: Params, ctx: RunContext, data: DataRef, baseline: BaselineRef, decision: GateDecision, model_uri: str,
                       extra_tags: dict[str, str] | None = None) -> str:
    """Register the run's model as a new version and point alias ``candidate`` at it. ``extra_tags``: a run that
    tuned twice says which of its models this is (``tunegate.model_artifact``, ``tunegate.registered_stage``,
    the parent)."""
    if decision.action != "register":
        raise RuntimeError(f"refusing to register a candidate the gate did not let through (action {decision.action})")
    name = params.model.registered_name
    # Idempotent under retries: a version this run registered before a transient failure is reused.
    existing = tracking.versions_of_run(name, ctx.run_id)
    ref = existing[0] if existing else tracking.register_version(
        name,
        model_uri,
        tags={
            tags.RUN_ID: ctx.run_id,
            tags.INITIATOR: tracking.get_run(ctx.run_id).data.tags.get(tags.INITIATOR, ""),
            tags.DATA_MD5: data.data_md5,
            tags.COMMIT: ctx.commit,
            tags.GATE: "passed",
            tags.BASELINE_SOURCE: baseline.source,
            tags.BASELINE_VERSION: baseline.version or "",
            **(extra_tags or {}),
        },
    )
    waiting = decision.waiting
    promotion.register_candidate(name, ref.version, ctx.run_id, commit=ctx.commit,
                                 replaced={"version": waiting.version, "policy": waiting.policy, "checks": waiting.reasons} if waiting else None)
    tracking.set_tags(ctx.run_id, {tags.REGISTERED_VERSION: ref.version})
    get_run_logger().info("registered %s version %s with alias candidate", name, ref.version)
    return ref.version


class ReviewInput(RunInput):
    """The Prefect form a reviewer fills in when the flow pauses for approval."""

    approve: bool
    reviewer: str
    reason: str


def approval_form(summary: RunSummary) -> type[RunInput]:
    """The form, with the gate summary as its description (shown in the Prefect UI)."""
    lines = [f"Candidate version {summary['registered_version']} of {summary['model_name']}", ""]
    lines += [f"- {r}" for r in summary["gate"]["reasons"]]
    return ReviewInput.with_initial_data(description="\n".join(lines), approve=False, reviewer="", reason="")


@task(cache_policy=NONE)
def apply_review(params: Params, ctx: RunContext, version: str, answer: ReviewInput, summary: RunSummary) -> RunSummary:
    """Apply a Prefect-form review through the same promotion logic as `tunegate approve/reject`.

    The form cannot prove who filled it in: against an MLflow server that authenticates users the
    worker's identity acts, so a reviewer name other than it is refused (approve with the CLI there).
    """

    name = params.model.registered_name
    try:
        if answer.approve:
            outcome = promotion.approve(name, version, answer.reviewer, answer.reason, params.gate.approvals)
        else:
            outcome = promotion.reject(name, version, answer.reviewer, answer.reason, params.gate.approvals)
    except promotion.PromotionError as error:
        get_run_logger().error("review refused: %s", error)
        return {**summary, "review": {"action": "refused", "message": str(error)}}
    get_run_logger().info("review: %s", outcome.message)
    return {**summary, "review": {"action": outcome.action, "message": outcome.message, "champion": outcome.champion}}
