"""Tasks that open, annotate and close the MLflow run of a flow run."""

from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from tasks.common import RETRY_TRANSIENT, BaselineRef, DataRef, RunContext, timed
from tasks.train import TunedModel
from tunegate import tags
from tunegate.evaluation.comparison import Comparison
from tunegate.governance.gate import GateDecision
from tunegate.adapters import mlflow as tracking
from tunegate.adapters.git import code_fingerprint, git_commit
from tunegate.governance import audit
from tunegate.governance.trail import record
from tunegate.governance.identity import actor_identity
from tunegate.governance.promotion import detach_candidate
from tunegate.governance.summary import RunSummary, build_summary, complete_summary, render_markdown
from tunegate.operations import failures, timings
from tunegate.operations.launcher import Launch, flow_run_params
from tunegate.operations.status import process_tags
from tunegate.params import Params, dump_params
from tunegate.paths import repo_root, tunegate_home


@task(cache_policy=NONE)
@timed("params")
def load_run_params(params_file: str, overrides: list[str], launch: Launch | None = None) -> Params:
    """The params ``tunegate run`` loaded, validated and preflighted (``launch``); for a scheduled or served
    run (no ``launch``) loaded and preflighted here, once, so a mistake fails before an MLflow run opens
    (raises :class:`tunegate.operations.preflight.PreflightError`). Starts the run's stage timings."""
    from tunegate.operations.launcher import flow_params

    prepared = flow_params(params_file, overrides, launch)  # before @timed adds this task's seconds
    get_run_logger().info("%s", prepared.thread_budget)
    return prepared.params


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("start_run")
def start_run(params: Params, params_file: str, resume_run_id: str | None = None, trigger: str = "manual") -> RunContext:
    """Open the MLflow run (or reopen ``resume_run_id``), log every resolved param and the code version."""
    logger = get_run_logger()
    commit, dirty = git_commit(repo_root())
    code = code_fingerprint(repo_root(), commit)
    flow_run_id = str(flow_run.get_id() or "")
    initiator = actor_identity()
    run_tags = {
        "mlflow.source.git.commit": commit,
        tags.GIT_DIRTY: str(dirty).lower(),
        tags.CODE_FINGERPRINT: code,
        tags.PARAMS_SHA256: params.fingerprint(),
        tags.TRIGGER: trigger,
        tags.PARAMS_FILE: params_file,
        tags.PREFECT_FLOW_RUN_ID: flow_run_id,
        tags.MODEL_NAME: params.model.registered_name,
        tags.INITIATOR: initiator.name,
        tags.INITIATOR_AUTHENTICATED: str(initiator.authenticated).lower(),
        # Where the run's process lives: `tunegate status` marks the run crashed when it is gone.
        **process_tags(),
    }
    if resume_run_id:
        run_id = tracking.reopen_run(resume_run_id, params.flat(), run_tags)
        logger.info("resuming MLflow run %s", run_id)
    else:
        run_id = tracking.start_run(params.project.name, run_name=flow_run.get_name() or "retrain", tags=run_tags)
    tracking.log_params(run_id, params.flat())
    tracking.log_text(run_id, dump_params(params), "params/resolved_params.yaml")
    for earlier in failures.reconcile():
        logger.warning("recorded an earlier failure the tracking server missed: flow run %s (%s)", earlier["flow_run_id"], earlier["reason"][:200])
    work_dir = tunegate_home() / "runs" / run_id
    work_dir.mkdir(parents=True, exist_ok=True)
    record(
        "run_resumed" if resume_run_id else "run_started",
        {"run_id": run_id, "flow_run_id": flow_run_id, "params_file": params_file, "trigger": trigger},
        model_name=params.model.registered_name, commit=commit,
    )
    logger.info("MLflow run %s (commit %s%s), started by %s", run_id, commit[:12], ", dirty tree" if dirty else "", trigger)
    return RunContext(run_id=run_id, commit=commit, work_dir=str(work_dir), code=code, trigger=trigger, initiator=initiator.name)


@task(cache_policy=NONE, **RETRY_TRANSIENT)
def finish_run(
    params: Params, ctx: RunContext, data: DataRef, baseline: BaselineRef, comparison: Comparison, tuned: TunedModel,
    decision: GateDecision, registered_version: str | None, report: str | None = None, preference=None,
) -> RunSummary:
    """Build the run summary, attach it to MLflow and Prefect, close the run successfully. ``report``: the
    evaluation report's path (:func:`tasks.evaluate.write_report`)."""
    summary = build_summary(
        run_id=ctx.run_id,
        flow_run_id=str(flow_run.get_id() or ""),
        model_name=params.model.registered_name,
        tracking_uri=tracking.tracking_uri(),
        commit=ctx.commit,
        data=asdict(data),
        baseline=asdict(baseline),
        baseline_metrics=comparison.baseline_metrics,
        candidate_metrics=comparison.candidate_metrics,
        train={k: v for k, v in asdict(tuned).items() if k != "checks"},
        gate=decision.to_dict(),
        registered_version=registered_version,
        baseline_evaluation=comparison.baseline_evaluation,
    )
    summary = complete_summary(summary, comparison, decision, report=report, trigger=ctx.trigger, timings=timings.snapshot(),
                               required_low_above=params.gate.min_improvement_over_base)
    from tunegate.governance.minimums import check_minimums

    # governance.minimums on the figures this summary shows (the registered model's comparison), computed once here
    summary["minimums"] = check_minimums(params.governance.minimums, [d.to_dict() for d in comparison.deltas])
    if preference is not None:  # tasks.preference.PreferenceOutcome: which of the run's two models this is about
        summary["preference"] = preference.summary
        summary["candidate"]["stage"] = preference.stage
        summary["candidate"]["role"] = "candidate" if preference.stage == "preference" else "parent"  # its MLflow metric prefix
    tracking.log_metrics(ctx.run_id, timings.as_metrics(summary["timings"]))
    markdown = render_markdown(summary)
    tracking.log_dict(ctx.run_id, summary, "summary/summary.json")
    tracking.log_text(ctx.run_id, markdown, "summary/summary.md")
    create_markdown_artifact(key="run-summary", markdown=markdown, description="tunegate run summary")
    if registered_version:
        from tunegate.governance.lineage import publish_model_card

        publish_model_card(params.model.registered_name, registered_version)
    tracking.set_tags(ctx.run_id, {tags.OUTCOME: summary["outcome"]})
    tracking.end_run(ctx.run_id, "FINISHED")
    record("run_finished", {"run_id": ctx.run_id, "gate_passed": decision.passed, "registered_version": registered_version},
           model_name=params.model.registered_name, commit=ctx.commit)
    return summary


def record_failure(flow, flow_run_obj, state) -> None:
    """Flow on_failure hook: mark the MLflow run FAILED with the reason and audit it."""
    reason = state.message or "flow run failed"
    try:
        error = state.result(raise_on_failure=False)
        if isinstance(error, BaseException):
            reason = f"{type(error).__name__}: {error}"
    except Exception:  # the state may hold no retrievable result
        pass
    flow_run_id = str(flow_run_obj.id)
    experiment = model_name = None
    try:
        loaded = flow_run_params(flow_run_obj.parameters)  # the launch value's params, else the file's
        experiment, model_name = loaded.project.name, loaded.model.registered_name
        audit.set_params_url(loaded.audit.database_url)
    except Exception:
        pass
    run_ids: list[str] = []
    recorded = False
    if experiment:
        try:
            runs = failures.runs_of(experiment, flow_run_id)
            for run in runs:
                _detach_candidate(model_name, run.data.tags.get(tags.REGISTERED_VERSION))
            run_ids = failures.mark_failed(runs, reason)
            recorded = True
        except Exception:  # the tracking server itself may be what failed: the next run records it
            failures.remember(experiment, flow_run_id, reason)
    record(
        "run_failed",
        {"flow_run_id": flow_run_id, "mlflow_run_ids": run_ids, "reason": reason[:4000], "recorded_in_mlflow": recorded},
        model_name=model_name,
    )


def _detach_candidate(model_name: str | None, version: str | None) -> None:
    """A version registered by a run that then failed loses alias ``candidate`` (approve refuses it anyway)."""
    if not model_name or not version:
        return
    detach_candidate(model_name, version, "its training run failed after registering")
