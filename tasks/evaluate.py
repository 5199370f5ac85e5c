"""Evaluation stage: baseline (champion or base model) and candidate on the same frozen suites."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from tasks.common import RETRY_TRANSIENT, BaselineRef, DataRef, RunContext
from tunegate import tracking
from tunegate.promotion import record
from tunegate.eval_suites import ModelEvaluation, compare, evaluate_suites, load_items_md5, worst_regressions
from tunegate.modeling import load_base_model, load_saved_model, load_tokenizer
from tunegate.params import Params
from tunegate.paths import tunegate_home
from tunegate.report import plots, render_html, render_markdown
from tunegate.summary import baseline_label
from tunegate.seeding import seed_everything
from tunegate.sources import read_canonical


@task(cache_policy=NONE, **RETRY_TRANSIENT)
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
def evaluate(params: Params, data: DataRef, ctx: RunContext, role: str, model_dir: str | None) -> ModelEvaluation:
    """Score one model (``model_dir`` None: the base model) on every enabled suite."""
    logger = get_run_logger()
    seed_everything(params.project.seed)
    if model_dir is None:
        model = load_base_model(params.base_model_path())
        tokenizer = load_tokenizer(params.base_model_path(), params.model.chat_template)
    else:
        model, tokenizer = load_saved_model(Path(model_dir))
    records = read_canonical(Path(data.eval_path))
    result = evaluate_suites(
        model, tokenizer, records, params.eval, progress=lambda suite: logger.info("%s: %s", role, suite)
    )
    summary = result.summary()
    flat = {f"{role}_{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
    flat.update({f"{role}_exact_match.{family}": value for family, value in summary["per_family"].items()})
    tracking.log_metrics(ctx.run_id, flat)
    tracking.log_dict(ctx.run_id, {"metrics": summary, "examples": result.examples}, f"evaluation/{role}.json")
    logger.info(
        "%s: exact match %.3f, response loss %.3f", role, summary.get("exact_match", 0.0), summary.get("response_loss", 0.0)
    )
    return result


@task(cache_policy=NONE, **RETRY_TRANSIENT)
def compare_models(
    params: Params, ctx: RunContext, data: DataRef, baseline: BaselineRef,
    baseline_eval: ModelEvaluation, candidate_eval: ModelEvaluation,
) -> dict[str, Any]:
    """Deltas with bootstrap intervals, and the report (markdown + HTML with plots) everywhere it belongs."""
    logger = get_run_logger()
    deltas = compare(baseline_eval, candidate_eval, params.eval)
    worst = worst_regressions(baseline_eval, candidate_eval)
    eval_md5s = load_items_md5(params.eval)
    tracking.set_tags(ctx.run_id, {f"tunegate.eval_md5.{k}": v for k, v in eval_md5s.items()})
    tracking.log_metrics(
        ctx.run_id,
        {f"delta_{d.metric}{'' if d.category == 'all' else '.' + d.category}": d.delta for d in deltas}
        | {f"delta_{d.metric}_low": d.low for d in deltas if d.category == "all"}
        | {f"delta_{d.metric}_high": d.high for d in deltas if d.category == "all"},
    )
    history = [(m.step, m.value) for m in tracking.client().get_metric_history(ctx.run_id, "train_loss")]
    context = {
        "run_id": ctx.run_id, "model_name": params.model.registered_name, "eval_md5": data.eval_md5 or "",
        "baseline": {"source": baseline.source, "version": baseline.version}, "confidence": params.eval.confidence,
    }
    truncated = {"baseline": baseline_eval.truncated_prompts, "candidate": candidate_eval.truncated_prompts}
    markdown = render_markdown(context, deltas, worst, truncated_prompts=truncated)
    page = render_html(markdown, plots(deltas, sorted(history)), f"tunegate evaluation {ctx.run_id[:8]}")
    out_dir = tunegate_home() / "reports" / ctx.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.md").write_text(markdown, encoding="utf-8")
    (out_dir / "evaluation.html").write_text(page, encoding="utf-8")
    tracking.log_artifacts(ctx.run_id, out_dir, "report")
    create_markdown_artifact(key="evaluation-report", markdown=markdown, description=f"candidate vs {baseline_label(context['baseline'])}")
    regressions = [d.to_dict() for d in deltas if d.regression]
    record(
        "evaluation",
        {"run_id": ctx.run_id, "baseline": context["baseline"], "regressions": [(r["metric"], r["category"]) for r in regressions]},
        model_name=params.model.registered_name, commit=ctx.commit,
    )
    logger.info("evaluation report: %s (%d regression(s) flagged)", out_dir / "evaluation.html", len(regressions))
    return {
        "baseline_metrics": baseline_eval.summary(),
        "candidate_metrics": candidate_eval.summary(),
        "deltas": [d.to_dict() for d in deltas],
        "report": str(out_dir / "evaluation.html"),
    }
