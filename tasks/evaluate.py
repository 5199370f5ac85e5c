"""Evaluation stage: baseline (champion or base model) and candidate on the same frozen suites."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from tasks.common import RETRY_TRANSIENT, BaselineRef, DataRef, RunContext, timed
from tasks.queue import compute_slot
from tunegate import eval_cache, timings, tracking
from tunegate.promotion import record
from tunegate.eval_cache import EvaluationOutcome
from tunegate.eval_suites import ModelEvaluation, compare, load_items_md5, worst_regressions
from tunegate.params import Params
from tunegate.paths import tunegate_home
from tunegate.report import plots, render_html, render_markdown
from tunegate.stats import Delta
from tunegate.summary import baseline_label


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("baseline")
def resolve_baseline(params: Params, ctx: RunContext) -> BaselineRef:
    """The version under alias ``champion``, or the base model when there is none."""
    logger = get_run_logger()
    champion = tracking.alias_version(params.model.registered_name, tracking.CHAMPION)
    if champion is None:
        ref = BaselineRef("base_model", None, None)
        logger.info("baseline: base model %s (no champion yet)", params.model.base_model)
    else:
        local = tracking.download_version(champion, Path(ctx.work_dir) / "baseline")
        ref = BaselineRef("champion", champion.version, str(local))
        logger.info("baseline: champion version %s", champion.version)
    tracking.set_tags(ctx.run_id, {"tunegate.baseline_source": ref.source, "tunegate.baseline_version": ref.version or ""})
    return ref


@task(cache_policy=NONE, **RETRY_TRANSIENT)
def resolve_waiting(params: Params, ctx: RunContext, baseline: BaselineRef) -> BaselineRef | None:
    """The version under alias ``candidate`` (waiting for review), downloaded, or None: the new candidate
    is compared with it too, and replaces it only by policy (``gate.replace_waiting``)."""
    waiting = tracking.alias_version(params.model.registered_name, tracking.CANDIDATE)
    if waiting is None or waiting.version == baseline.version or waiting.run_id == ctx.run_id:
        return None
    local = tracking.download_version(waiting, Path(ctx.work_dir) / "waiting")
    get_run_logger().info("waiting for review: version %s; the new candidate is compared with it too", waiting.version)
    tracking.set_tags(ctx.run_id, {"tunegate.waiting_version": waiting.version})
    return BaselineRef("waiting", waiting.version, str(local))


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("evaluation_{role}")
def evaluate(
    params: Params, data: DataRef, ctx: RunContext, role: str, model_dir: str | None, version: str | None = None,
) -> EvaluationOutcome:
    """Score one model (``model_dir`` None: the base model) on every enabled suite.

    ``role`` "candidate": the model this run trained; "baseline": the base model, or the registered
    ``version`` downloaded to ``model_dir``; "base": the base model beside a champion baseline (the
    gate's over-base rule). A baseline or base that an earlier finished run evaluated with
    the same model, eval data, suites and evaluation code is read back from that run instead
    (:mod:`tunegate.eval_cache`; ``eval.reuse_baseline: false`` turns it off); anything wrong with the
    stored one and it is evaluated here. Either way the run logs the same metrics and
    ``evaluation/<role>.json``, tagged with the evaluation's key for later runs.
    """
    logger = get_run_logger()
    key, earlier, reason = None, None, ""
    try:
        if role == "candidate":
            trained_by = ctx.run_id
        else:
            trained_by = tracking.get_version(params.model.registered_name, version).run_id if version else None
        key = eval_cache.make_key(params, data.eval_md5, model_dir, trained_by)
    except Exception as error:  # no key: evaluate, and leave nothing for later runs to reuse
        reason = f"no evaluation key ({type(error).__name__}: {error})"
        logger.warning("%s: %s", role, reason)
    if key is not None and role != "candidate":
        if not params.eval.reuse_baseline:
            reason = "reuse turned off (eval.reuse_baseline: false)"
        else:
            try:
                earlier, problems = eval_cache.find_earlier(params.project.name, key, exclude_run=ctx.run_id)
            except Exception as error:
                problems = [f"searching the runs failed: {type(error).__name__}: {error}"]
            for problem in problems:
                logger.warning("%s: cannot reuse %s", role, problem)
            reason = "earlier evaluations unusable: " + "; ".join(problems) if problems else "no earlier evaluation with this key"
    if earlier is not None:
        outcome = EvaluationOutcome(earlier.evaluation, key, earlier.run_id, earlier.computed_in)
        logger.info(
            "%s: evaluation reused from run %s (same model, eval data, suites, code; key %s)",
            role, earlier.run_id, key.digest[:16],
        )
    else:
        if role != "candidate":
            logger.info("%s: evaluating (%s)", role, reason)
        with compute_slot(params, ctx, f"{role} evaluation") as waited:  # the machine's slots bound evaluation too
            timings.waited(f"evaluation_{role}", waited)
            result = eval_cache.compute(params, data.eval_path, model_dir, progress=lambda suite: logger.info("%s: %s", role, suite))
        outcome = EvaluationOutcome(result, key, None, ctx.run_id, reason)
    result = outcome.evaluation
    summary = result.summary()
    flat = {f"{role}_{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
    flat.update({f"{role}_exact_match.{family}": value for family, value in summary["per_family"].items()})
    tracking.log_metrics(ctx.run_id, flat)
    tracking.log_dict(ctx.run_id, eval_cache.artifact(result, key, outcome.computed_in), f"evaluation/{role}.json")
    tracking.set_tags(ctx.run_id, eval_cache.tags(role, key, outcome.reused_from))  # after the artifact it names
    logger.info(
        "%s: exact match %.3f, response loss %.3f", role, summary.get("exact_match", 0.0), summary.get("response_loss", 0.0)
    )
    return outcome


def _evaluation(value: EvaluationOutcome | ModelEvaluation) -> ModelEvaluation:
    return value.evaluation if isinstance(value, EvaluationOutcome) else value


def _provenance(value: EvaluationOutcome | ModelEvaluation) -> dict[str, Any]:
    if isinstance(value, EvaluationOutcome):
        return value.provenance()
    return {"reused": False, "key": None, "reason": "evaluated in this run"}


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("compare")
def compare_models(
    params: Params, ctx: RunContext, data: DataRef, baseline: BaselineRef,
    baseline_eval: EvaluationOutcome | ModelEvaluation, candidate_eval: EvaluationOutcome | ModelEvaluation,
    base_eval: EvaluationOutcome | ModelEvaluation | None = None,
    waiting: BaselineRef | None = None, waiting_eval: EvaluationOutcome | ModelEvaluation | None = None,
) -> dict[str, Any]:
    """Deltas with bootstrap intervals (the report is written after the gate: :func:`write_report`).

    The evaluations are what :func:`evaluate` returned (or plain :class:`ModelEvaluation` s); where the
    baseline's came from goes to the report and, as ``baseline_evaluation``, to the run summary.
    ``base_eval``: the base model's, when the baseline is a champion; the candidate is compared with it
    too (``base_deltas``, for the gate's over-base rule). With the base model as baseline, the
    baseline's deltas are the over-base ones."""
    logger = get_run_logger()
    provenance = _provenance(baseline_eval)
    base_provenance = _provenance(base_eval) if base_eval is not None else provenance
    baseline_eval, candidate_eval = _evaluation(baseline_eval), _evaluation(candidate_eval)
    deltas = compare(baseline_eval, candidate_eval, params.eval)
    if base_eval is not None:
        base_deltas = compare(_evaluation(base_eval), candidate_eval, params.eval)
    elif baseline.source == "base_model":
        base_deltas = deltas
    else:
        base_deltas = []
    over_base = next((d for d in base_deltas if d.metric == params.gate.primary_metric and d.category == "all"), None)
    waiting_deltas = compare(_evaluation(waiting_eval), candidate_eval, params.eval) if waiting is not None and waiting_eval is not None else []
    vs_waiting = {"version": waiting.version, "deltas": [d.to_dict() for d in waiting_deltas],
                  "evaluation": _provenance(waiting_eval)} if waiting_deltas else None
    worst = worst_regressions(baseline_eval, candidate_eval)
    eval_md5s = load_items_md5(params.eval)
    tracking.set_tags(ctx.run_id, {f"tunegate.eval_md5.{k}": v for k, v in eval_md5s.items()})
    tracking.log_metrics(
        ctx.run_id,
        {f"delta_{d.metric}{'' if d.category == 'all' else '.' + d.category}": d.delta for d in deltas}
        | {f"delta_{d.metric}_low": d.low for d in deltas if d.category == "all"}
        | {f"delta_{d.metric}_high": d.high for d in deltas if d.category == "all"}
        | ({f"over_base_{over_base.metric}": over_base.delta, f"over_base_{over_base.metric}_low": over_base.low,
            f"over_base_{over_base.metric}_high": over_base.high} if over_base else {}),
    )
    regressions = [d.to_dict() for d in deltas if d.regression]
    record(
        "evaluation",
        {"run_id": ctx.run_id, "baseline": {"source": baseline.source, "version": baseline.version},
         "regressions": [(r["metric"], r["category"]) for r in regressions]},
        model_name=params.model.registered_name, commit=ctx.commit,
    )
    logger.info("compared: %d significant loss(es) flagged", len(regressions))
    return {
        "baseline": {"source": baseline.source, "version": baseline.version},
        "baseline_metrics": baseline_eval.summary(),
        "baseline_evaluation": provenance,
        "candidate_metrics": candidate_eval.summary(),
        "deltas": [d.to_dict() for d in deltas],
        "base_deltas": [d.to_dict() for d in base_deltas],
        "base_evaluation": base_provenance,
        "over_base": over_base.to_dict() if over_base else None,  # the primary metric's delta over the base model: the gate's and the summary's
        "waiting": vs_waiting,
        "worst": worst,
        "truncated_prompts": {"baseline": baseline_eval.truncated_prompts, "candidate": candidate_eval.truncated_prompts},
    }


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("report")
def write_report(params: Params, ctx: RunContext, data: DataRef, comparison: dict[str, Any], decision: dict[str, Any]) -> str:
    """The evaluation report (markdown + HTML with plots), after the gate: its figures are the comparison's
    and its verdicts the gate's own (:func:`tunegate.gate.verdict_cell`). Written under
    ``$TUNEGATE_HOME/reports/<run>``, logged to MLflow under ``report/`` and attached to the Prefect run."""
    deltas = [Delta.from_dict(d) for d in comparison["deltas"]]
    waiting = comparison.get("waiting")
    context = {
        "run_id": ctx.run_id, "model_name": params.model.registered_name, "eval_md5": data.eval_md5 or "",
        "baseline": comparison["baseline"], "confidence": params.eval.confidence,
        "baseline_evaluation": comparison["baseline_evaluation"],
        "over_base": comparison.get("over_base"),
        "waiting": {**waiting, "deltas": [d for d in waiting["deltas"] if d["category"] == "all"]} if waiting else None,
        "gate": decision,
    }
    # The loss curve: the steps training logged (the trainer's closing mean is train_mean_loss).
    history = [(m.step, m.value) for m in tracking.client().get_metric_history(ctx.run_id, "train_loss")]
    markdown = render_markdown(context, deltas, comparison["worst"], truncated_prompts=comparison["truncated_prompts"])
    page = render_html(markdown, plots(deltas, sorted(history)), f"tunegate evaluation {ctx.run_id[:8]}")
    out_dir = tunegate_home() / "reports" / ctx.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.md").write_text(markdown, encoding="utf-8")
    (out_dir / "evaluation.html").write_text(page, encoding="utf-8")
    tracking.log_artifacts(ctx.run_id, out_dir, "report")
    create_markdown_artifact(key="evaluation-report", markdown=markdown, description=f"candidate vs {baseline_label(context['baseline'])}")
    get_run_logger().info("evaluation report: %s", out_dir / "evaluation.html")
    return str(out_dir / "evaluation.html")
