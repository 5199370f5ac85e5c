"""Skip when unchanged: an unattended run whose inputs equal the champion's (or a waiting candidate's) stops early."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from tasks.common import RETRY_TRANSIENT, DataRef, RunContext, timed
from tasks.preference import PreferenceRef
from tunegate import tags
from tunegate.adapters import mlflow as tracking
from tunegate.governance.trail import record
from tunegate.governance.summary import RunSummary, render_markdown
from tunegate.operations import timings
from tunegate.operations.freshness import FreshnessCheck, Reference, RunInputs, check, preference_sources
from tunegate.params import Params


def _reference(role: str, ref: tracking.VersionRef | None) -> Reference | None:
    if ref is None:
        return None
    inputs = RunInputs.from_tags(tracking.get_run(ref.run_id).data.tags) if ref.run_id else None
    return Reference(role, ref.version, ref.run_id, inputs)


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("freshness")
def check_unchanged(params: Params, ctx: RunContext, data: DataRef, force: bool = False,
                    pairs: PreferenceRef | None = None) -> FreshnessCheck:
    """Compare this run's data md5s (and its preference pairs'), params and code with the champion's and a
    waiting candidate's runs."""
    name = params.model.registered_name
    sources = dict(data.sources)
    if pairs is not None:
        sources.update(preference_sources(pairs.train_md5, pairs.sources))
    current = RunInputs(data.data_md5, params.fingerprint(), ctx.code, sources)
    references = [
        ref for ref in (
            _reference("champion", tracking.alias_version(name, tracking.CHAMPION)),
            _reference("candidate", tracking.alias_version(name, tracking.CANDIDATE)),
        ) if ref is not None
    ]
    result = check(current, references, unattended=ctx.trigger != "manual", force=force)
    tracking.set_tags(ctx.run_id, {tags.FRESHNESS: result.reason[:4000]})
    get_run_logger().info("%s", result.reason)
    return result


@task(cache_policy=NONE, **RETRY_TRANSIENT)
def skip_run(params: Params, ctx: RunContext, data: DataRef, freshness: FreshnessCheck) -> RunSummary:
    """End the run as "nothing to do": MLflow run closed with the outcome, an audit entry, a Prefect artifact."""
    if not freshness.skip or freshness.matched is None:
        raise RuntimeError(f"skip_run called for a run with something to do: {freshness.reason}")
    matched = freshness.to_dict()["matched"]
    summary: RunSummary = {
        "outcome": "nothing_to_do",
        "reason": freshness.reason,
        "run_id": ctx.run_id,
        "prefect_flow_run_id": str(flow_run.get_id() or ""),
        "model_name": params.model.registered_name,
        "trigger": ctx.trigger,
        "commit": ctx.commit,
        "code": ctx.code,
        "data_md5": data.data_md5,
        "sources": dict(data.sources),
        "params_sha256": params.fingerprint(),
        "matched": matched,
        "registered_version": None,
        "gate": None,
        "timings": timings.snapshot(),
    }
    tracking.log_metrics(ctx.run_id, timings.as_metrics(summary["timings"]))
    markdown = render_markdown(summary)
    tracking.set_tags(ctx.run_id, {tags.OUTCOME: "nothing_to_do", tags.MATCHED_VERSION: freshness.matched.version})
    tracking.log_dict(ctx.run_id, summary, "summary/summary.json")
    tracking.log_text(ctx.run_id, markdown, "summary/summary.md")
    create_markdown_artifact(key="run-summary", markdown=markdown, description="tunegate: nothing to do")
    tracking.end_run(ctx.run_id, "FINISHED")
    record(
        "nothing_to_do",
        {"run_id": ctx.run_id, "flow_run_id": summary["prefect_flow_run_id"], "trigger": ctx.trigger,
         "data_md5": data.data_md5, "matched": matched, "reason": freshness.reason},
        model_name=params.model.registered_name, commit=ctx.commit,
    )
    return summary
