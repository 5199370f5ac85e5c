"""Gate and registration: decide, then register a passing candidate under alias ``candidate``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.input import RunInput
from prefect.cache_policies import NONE

from tasks.common import RETRY_TRANSIENT, BaselineRef, DataRef, RunContext, timed
from tunegate.adapters import mlflow as tracking
from tunegate.governance import promotion
from tunegate.governance.audit import record
from tunegate.governance.gate import decide_promotion, waiting_checks
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
def gate(params: Params, comparison: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    logger = get_run_logger()
    decision = decide_promotion(
        comparison["baseline_metrics"], comparison["candidate_metrics"], params.gate, comparison["deltas"],
        comparison.get("base_deltas"),
    ).to_dict()
    waiting = comparison.get("waiting")
    if waiting:  # a candidate waits for review: the new one replaces it only if not significantly worse (policy)
        checks = waiting_checks(waiting["deltas"], params.gate)
        decision["waiting"] = {
            "version": waiting["version"],
            "replace": params.gate.replace_waiting == "always" or all(c.passed for c in checks),
            "policy": params.gate.replace_waiting,
            "reasons": [c.reason for c in checks],
            "checks": [asdict(c) for c in checks],
        }
    tracking.log_dict(ctx.run_id, decision, "gate/decision.json")
    tracking.set_tags(
        ctx.run_id,
        {"tunegate.gate": "passed" if decision["passed"] else "failed"}
        | {f"tunegate.gate.check.{i:02d}": reason for i, reason in enumerate(decision["reasons"])},
    )
    record(
        "gate_decision", {"run_id": ctx.run_id, **decision}, model_name=params.model.registered_name, commit=ctx.commit)
    for reason in decision["reasons"]:
        logger.info("gate: %s", reason)
    for reason in (decision.get("waiting") or {}).get("reasons", []):
        logger.info("vs waiting version %s: %s", decision["waiting"]["version"], reason)
    return decision


@task(cache_policy=NONE, **RETRY_TRANSIENT)
def keep_waiting(params: Params, ctx: RunContext, decision: dict[str, Any]) -> None:
    """The new candidate passed the gate but is significantly worse than the one waiting for review: it is
    not registered; the trail and the run say which version is better and by how much."""
    waiting = decision["waiting"]
    worse = [r for r in waiting["reasons"] if r.startswith("FAIL")]
    record("candidate_kept", {"run_id": ctx.run_id, "model": params.model.registered_name, "version": waiting["version"],
                              "reason": f"not registered: version {waiting['version']}, waiting, is better", "checks": worse},
           model_name=params.model.registered_name, commit=ctx.commit)
    tracking.set_tags(ctx.run_id, {"tunegate.kept_waiting_version": waiting["version"]})
    get_run_logger().warning("not registered: version %s, waiting, is better (%s)", waiting["version"], "; ".join(worse))


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("register")
def register_candidate(params: Params, ctx: RunContext, data: DataRef, baseline: BaselineRef, decision: dict[str, Any], model_uri: str) -> str:
    """Register the run's model as a new version and point alias ``candidate`` at it."""
    if not decision["passed"]:
        raise RuntimeError("refusing to register a candidate that did not pass the gate")
    name = params.model.registered_name
    # Idempotent under retries: a version this run registered before a transient failure is reused.
    existing = tracking.versions_of_run(name, ctx.run_id)
    ref = existing[0] if existing else tracking.register_version(
        name,
        model_uri,
        tags={
            "tunegate.run_id": ctx.run_id,
            "tunegate.initiator": tracking.get_run(ctx.run_id).data.tags.get("tunegate.initiator", ""),
            "tunegate.data_md5": data.data_md5,
            "tunegate.commit": ctx.commit,
            "tunegate.gate": "passed",
            "tunegate.baseline_source": baseline.source,
            "tunegate.baseline_version": baseline.version or "",
        },
    )
    waiting = decision.get("waiting")
    promotion.register_candidate(name, ref.version, ctx.run_id, commit=ctx.commit,
                                 replaced={"version": waiting["version"], "policy": waiting["policy"], "checks": waiting["reasons"]} if waiting else None)
    tracking.set_tags(ctx.run_id, {"tunegate.registered_version": ref.version})
    get_run_logger().info("registered %s version %s with alias candidate", name, ref.version)
    return ref.version


class ReviewInput(RunInput):
    """The Prefect form a reviewer fills in when the flow pauses for approval."""

    approve: bool
    reviewer: str
    reason: str


def approval_form(summary: dict[str, Any]):
    """The form, with the gate summary as its description (shown in the Prefect UI)."""
    lines = [f"Candidate version {summary['registered_version']} of {summary['model_name']}", ""]
    lines += [f"- {r}" for r in summary["gate"]["reasons"]]
    return ReviewInput.with_initial_data(description="\n".join(lines), approve=False, reviewer="", reason="")


@task(cache_policy=NONE)
def apply_review(params: Params, ctx: RunContext, version: str, answer: ReviewInput, summary: dict[str, Any]) -> dict[str, Any]:
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
