"""Evaluation stage: baseline (champion or base model) and candidate on the same frozen suites."""

from __future__ import annotations

import json

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from tasks.common import RETRY_TRANSIENT, BaselineRef, DataRef, RunContext, timed
from tasks.preference import ParentRef
from tasks.queue import compute_slot
from tasks.train import TunedModel
from tunegate import tags
from tunegate.adapters import mlflow as tracking
from tunegate.evaluation import cache as eval_cache
from tunegate.evaluation.cache import EvaluationOutcome
from tunegate.evaluation.comparison import Comparison, Evaluated, ParentComparison, Reference, compare_all, compare_parent, delta_metrics
from tunegate.evaluation.report import baseline_label, plots, render_html, render_markdown
from tunegate.evaluation.suites import load_items_md5
from tunegate.governance.trail import record
from tunegate.governance.gate import GateDecision, verdict_cell
from tunegate.operations import timings
from tunegate.params import Params
from tunegate.paths import tunegate_home


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
    tracking.set_tags(ctx.run_id, {tags.BASELINE_SOURCE: ref.source, tags.BASELINE_VERSION: ref.version or ""})
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
    tracking.set_tags(ctx.run_id, {tags.WAITING_VERSION: waiting.version})
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
    (:mod:`tunegate.evaluation.cache`; ``eval.reuse_baseline: false`` turns it off); anything wrong with the
    stored one and it is evaluated here. Either way the run logs the same metrics and
    ``evaluation/<role>.json``, tagged with the evaluation's key for later runs.
    """
    logger = get_run_logger()
    # The candidate, and a preference stage's parent trained in this run (its SFT model), were trained here.
    trained_by = ctx.run_id if role == "candidate" or (role == "parent" and version is None) else (
        tracking.get_version(params.model.registered_name, version).run_id if version else None)
    key, reason = eval_cache.key_or_reason(params, data.eval_md5, model_dir, trained_by)
    if reason:
        logger.warning("%s: %s", role, reason)
    earlier = None
    if key is not None and role != "candidate" and not (role == "parent" and version is None):
        earlier, reason, problems = eval_cache.look_up(tracking, params, key, exclude_run=ctx.run_id)
        for problem in problems:
            logger.warning("%s: cannot reuse %s", role, problem)
    if earlier is not None:
        outcome = EvaluationOutcome(earlier.evaluation, key, earlier.run_id, earlier.computed_in)
        logger.info("%s: evaluation reused from run %s (same model, eval data, suites, code; key %s)", role, earlier.run_id, key.digest[:16])
    else:
        if role != "candidate":
            logger.info("%s: evaluating (%s)", role, reason)
        with compute_slot(params, ctx, f"{role} evaluation") as waited:  # the machine's slots bound evaluation too
            timings.waited(f"evaluation_{role}", waited)
            result = eval_cache.compute(params, data.eval_path, model_dir, progress=lambda suite: logger.info("%s: %s", role, suite))
        outcome = EvaluationOutcome(result, key, None, ctx.run_id, reason)
    flat = eval_cache.metrics(role, outcome.evaluation)
    tracking.log_metrics(ctx.run_id, flat)
    tracking.log_dict(ctx.run_id, eval_cache.artifact(outcome.evaluation, key, outcome.computed_in), f"evaluation/{role}.json")
    tracking.set_tags(ctx.run_id, eval_cache.tags(role, key, outcome.reused_from))  # after the artifact it names
    logger.info("%s: exact match %.3f, response loss %.3f", role, flat.get(f"{role}_exact_match", 0.0), flat.get(f"{role}_response_loss", 0.0))
    return outcome


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("compare")
def compare_models(
    params: Params, ctx: RunContext, data: DataRef, baseline: BaselineRef,
    baseline_eval: Evaluated, candidate_eval: Evaluated, base_eval: Evaluated | None = None,
    waiting: BaselineRef | None = None, waiting_eval: Evaluated | None = None, parent: ParentComparison | None = None,
) -> Comparison:
    """:func:`tunegate.evaluation.comparison.compare_all`, logged: deltas with bootstrap intervals against
    the baseline, the base model and the waiting candidate (the report is written after the gate:
    :func:`write_report`). The evaluations are what :func:`evaluate` returned (or plain ``ModelEvaluation`` s)."""
    ref = Reference(baseline.source, baseline.version)
    comparison = compare_all(params, ref, baseline_eval, candidate_eval, base_eval,
                             waiting.version if waiting is not None else None, waiting_eval, parent)
    tracking.set_tags(ctx.run_id, {f"{tags.EVAL_MD5_PREFIX}{k}": v for k, v in load_items_md5(params.eval).items()})
    tracking.log_metrics(ctx.run_id, delta_metrics(comparison))
    if comparison.judge is not None:  # every verdict, and who judged how (lineage, card)
        tracking.log_dict(ctx.run_id, comparison.judge, "judge/verdicts.json")
        judged = comparison.judge
        tracking.set_tags(ctx.run_id, {f"{tags.JUDGE_PREFIX}{k}": str(v) for k, v in judged["judge"].items()}
                          | {f"{tags.JUDGE_PREFIX}prompt_sha256": judged["prompt_sha256"],
                             f"{tags.JUDGE_PREFIX}decoding": json.dumps(judged["decoding"], sort_keys=True)})
    regressions = comparison.regressions
    record("evaluation", {"run_id": ctx.run_id, "baseline": ref.to_dict(), "regressions": regressions},
           model_name=params.model.registered_name, commit=ctx.commit)
    get_run_logger().info("compared: %d significant loss(es) flagged", len(regressions))
    return comparison


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("compare_parent")
def compare_with_parent(params: Params, ctx: RunContext, parent: ParentRef, parent_eval: Evaluated, candidate_eval: Evaluated,
                        candidate: TunedModel) -> ParentComparison:
    """The preference-tuned candidate against its parent (:func:`tunegate.evaluation.comparison.compare_parent`):
    every suite, the judge in both orders, and the held-out pairs' implicit-reward accuracy; logged."""
    compared = compare_parent(params, dict(parent.to_dict()), parent_eval, candidate_eval, candidate.checks.get("held_out"))
    if compared.judge is not None:
        tracking.log_dict(ctx.run_id, compared.judge, "judge/verdicts_vs_parent.json")
    figures = compared.preference
    if figures.get("accuracy") is not None:
        get_run_logger().info("held-out pairs: the candidate's implicit reward prefers the chosen answer in %.3f of %d "
                              "(interval [%.3f, %.3f]); the parent gives the chosen answer the higher log-probability in %.3f, "
                              "the candidate in %.3f", figures["accuracy"], figures["pairs"], figures["low"], figures["high"],
                              figures["parent_prefers_chosen"], figures["candidate_prefers_chosen"])
    return compared


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("report")
def write_report(params: Params, ctx: RunContext, data: DataRef, comparison: Comparison, decision: GateDecision,
                 preference=None) -> str:
    """The evaluation report (markdown + HTML with plots), after the gate: its figures are the comparison's
    and its verdicts the gate's own (:func:`tunegate.governance.gate.verdict_cell`). Written under
    ``$TUNEGATE_HOME/reports/<run>``, logged to MLflow under ``report/`` and attached to the Prefect run."""
    deltas = list(comparison.deltas)
    waiting = comparison.waiting
    context = {
        "run_id": ctx.run_id, "model_name": params.model.registered_name, "eval_md5": data.eval_md5 or "",
        "baseline": comparison.baseline.to_dict(), "confidence": params.eval.confidence,
        "baseline_evaluation": comparison.baseline_evaluation,
        "over_base": comparison.over_base.to_dict() if comparison.over_base else None,
        "waiting": {**waiting.to_dict(), "deltas": [d.to_dict() for d in waiting.deltas if d.category == "all"]} if waiting else None,
        "gate": decision.to_dict(),
        "judge": comparison.judge,
        "judge_summary": comparison.candidate_metrics.get("judge"),
        "preference": preference.summary if preference is not None else None,  # tasks.preference.PreferenceOutcome
    }
    # The loss curve: the steps training logged (the trainer's closing mean is train_mean_loss).
    history = [(m.step, m.value) for m in tracking.client().get_metric_history(ctx.run_id, "train_loss")]
    markdown = render_markdown(context, deltas, comparison.worst, truncated_prompts=comparison.truncated_prompts, verdict_cell=verdict_cell)
    page = render_html(markdown, plots(deltas, sorted(history)), f"tunegate evaluation {ctx.run_id[:8]}")
    out_dir = tunegate_home() / "reports" / ctx.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.md").write_text(markdown, encoding="utf-8")
    (out_dir / "evaluation.html").write_text(page, encoding="utf-8")
    tracking.log_artifacts(ctx.run_id, out_dir, "report")
    create_markdown_artifact(key="evaluation-report", markdown=markdown, description=f"candidate vs {baseline_label(context['baseline'])}")
    get_run_logger().info("evaluation report: %s", out_dir / "evaluation.html")
    return str(out_dir / "evaluation.html")
