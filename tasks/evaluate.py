"""Evaluation stage: baseline (champion or base model) and candidate on the same held-out set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.common import BaselineRef, DataRef, RunContext
from tunegate import tracking
from tunegate.evaluation import evaluate_model
from tunegate.modeling import load_base_model, load_saved_model, load_tokenizer
from tunegate.params import Params
from tunegate.seeding import seed_everything
from tunegate.sources import read_canonical


@task(cache_policy=NONE, retries=2, retry_delay_seconds=3)
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


@task(cache_policy=NONE)
def evaluate(params: Params, data: DataRef, ctx: RunContext, role: str, model_dir: str | None) -> dict[str, Any]:
    """Score one model (``model_dir`` None: the base model) and log ``<role>.*`` metrics."""
    logger = get_run_logger()
    seed_everything(params.project.seed)
    if model_dir is None:
        model = load_base_model(params.base_model_path())
        tokenizer = load_tokenizer(params.base_model_path(), params.model.chat_template)
    else:
        model, tokenizer = load_saved_model(Path(model_dir))
    records = read_canonical(Path(data.eval_path))
    result = evaluate_model(model, tokenizer, records, params.eval.max_new_tokens, params.eval.batch_size)
    metrics = result.metrics()
    flat = {f"{role}_exact_match": result.exact_match, f"{role}_response_loss": result.response_loss}
    flat.update({f"{role}_exact_match.{family}": value for family, value in result.per_family.items()})
    tracking.log_metrics(ctx.run_id, flat)
    tracking.log_dict(
        ctx.run_id,
        {"metrics": metrics, "outputs": [s.__dict__ for s in result.examples]},
        f"evaluation/{role}.json",
    )
    logger.info("%s: exact match %.3f, response loss %.3f", role, result.exact_match, result.response_loss)
    return metrics
