"""Gate and registration: decide, then register a passing candidate under alias ``candidate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.common import BaselineRef, DataRef, RunContext
from tunegate import audit, tracking
from tunegate.gate import decide_promotion
from tunegate.params import Params


@task(cache_policy=NONE)
def gate(params: Params, comparison: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    logger = get_run_logger()
    decision = decide_promotion(comparison["baseline_metrics"], comparison["candidate_metrics"], params.gate).to_dict()
    tracking.log_dict(ctx.run_id, decision, "gate/decision.json")
    tracking.set_tags(ctx.run_id, {"tunegate.gate": "passed" if decision["passed"] else "failed"})
    audit.append_event(Path(ctx.audit_log), "gate_decision", {"run_id": ctx.run_id, **decision}, commit=ctx.commit)
    for reason in decision["reasons"]:
        logger.info("gate: %s", reason)
    return decision


@task(cache_policy=NONE, retries=2, retry_delay_seconds=3)
def register_candidate(params: Params, ctx: RunContext, data: DataRef, baseline: BaselineRef, decision: dict[str, Any], model_uri: str) -> str:
    """Register the run's model as a new version and point alias ``candidate`` at it."""
    if not decision["passed"]:
        raise RuntimeError("refusing to register a candidate that did not pass the gate")
    name = params.model.registered_name
    ref = tracking.register_version(
        name,
        model_uri,
        tags={
            "tunegate.run_id": ctx.run_id,
            "tunegate.data_md5": data.data_md5,
            "tunegate.commit": ctx.commit,
            "tunegate.gate": "passed",
            "tunegate.baseline_source": baseline.source,
            "tunegate.baseline_version": baseline.version or "",
        },
    )
    tracking.set_alias(name, tracking.CANDIDATE, ref.version)
    tracking.set_tags(ctx.run_id, {"tunegate.registered_version": ref.version})
    audit.append_event(Path(ctx.audit_log), "registered", {"run_id": ctx.run_id, "model": name, "version": ref.version, "alias": tracking.CANDIDATE}, commit=ctx.commit)
    get_run_logger().info("registered %s version %s with alias candidate", name, ref.version)
    return ref.version
