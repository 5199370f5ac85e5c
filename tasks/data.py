"""Data stage: reproduce with DVC, convert every source to canonical records, record md5s, validate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from tasks.common import RETRY_TRANSIENT, DataRef, RunContext, timed
from tunegate import tags
from tunegate.adapters import dvc as dvc_adapter
from tunegate.adapters import mlflow as tracking
from tunegate.data.dataset import build_dataset, validate_canonical, without
from tunegate.data.digest import file_md5
from tunegate.data.sources import read_canonical, write_jsonl, write_split
from tunegate.data.validation import DataError, error_message, save_report
from tunegate.governance.trail import record
from tunegate.operations import validation_ahead
from tunegate.params import Params
from tunegate.paths import repo_root, tunegate_home


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("data")
def prepare_data(params: Params, ctx: RunContext) -> DataRef:
    """``dvc repro`` the data stage (a no-op when nothing changed), convert the sources, log md5s."""
    logger = get_run_logger()
    stage_md5 = None
    if params.data.dvc_stage:
        logger.info("dvc repro %s", params.data.dvc_stage)
        stage_md5 = dvc_adapter.reproduce_md5(repo_root(), params.data.dvc_stage, tunegate_home())
    dataset = build_dataset(params)
    train_path, eval_path, canonical_md5, eval_md5 = write_split(Path(ctx.work_dir) / "data", dataset.train, dataset.eval)
    data_md5 = stage_md5 or canonical_md5
    source_md5s = dataset.source_md5s()
    tracking.set_tags(ctx.run_id, {tags.DATA_MD5: data_md5, tags.CANONICAL_TRAIN_MD5: canonical_md5,
                                   tags.CANONICAL_EVAL_MD5: eval_md5,
                                   **{f"{tags.SOURCE_MD5_PREFIX}{name}": md5 for name, md5 in source_md5s.items()}})
    tracking.log_dict(ctx.run_id, {"data_md5": data_md5, "sources": dataset.source_summary()}, "data/sources.json")
    for source in dataset.train_sources + dataset.eval_sources:
        context = "evaluation" if source in dataset.eval_sources else "training"
        tracking.log_dataset(ctx.run_id, source.records, source.name, source.path, source.md5, context)
    tracking.log_dataset(ctx.run_id, dataset.train, "canonical_train", str(train_path), data_md5, "training")
    record("data_versioned", {"run_id": ctx.run_id, "data_md5": data_md5, "canonical_train_md5": canonical_md5, "sources": source_md5s},
           model_name=params.model.registered_name, commit=ctx.commit)
    logger.info("data md5 %s: %d train, %d eval records from %d source(s)", data_md5, len(dataset.train), len(dataset.eval), len(source_md5s))
    return DataRef(
        str(train_path), str(eval_path), data_md5, len(dataset.train), len(dataset.eval),
        canonical_md5=canonical_md5, eval_md5=eval_md5, sources=source_md5s,
    )


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("validation")
def validate_data(params: Params, data: DataRef, ctx: RunContext) -> DataRef:
    """Run the expectation suites; an error rule stops the flow before tuning, 'drop' rules filter."""
    logger = get_run_logger()
    train, evaluation = read_canonical(Path(data.train_path)), read_canonical(Path(data.eval_path))
    out_dir = Path(ctx.work_dir) / "validation"
    ahead = validation_ahead.take(params, data.canonical_md5, data.eval_md5, out_dir)
    if ahead is not None:  # the same suites on byte-identical canonical files, run beside start-up
        train_report, eval_report = ahead.train, ahead.eval
        logger.info("validation computed ahead beside start-up, on the same canonical files (md5 %s, %s)", data.canonical_md5, data.eval_md5)
    else:
        train_report, eval_report = validate_canonical(params, train, evaluation, out_dir / "data_docs")
    reports = [r for r in (train_report, eval_report) if r is not None]
    markdown_path, _ = save_report(reports, out_dir)
    tracking.log_artifacts(ctx.run_id, out_dir, "validation")
    create_markdown_artifact(key="validation-report", markdown=markdown_path.read_text(), description="Great Expectations results")
    passed = all(r.passed for r in reports)
    tracking.set_tags(ctx.run_id, {tags.VALIDATION: "passed" if passed else "failed"})
    tracking.log_metrics(ctx.run_id, {"data_refusal_share": train_report.refusal_share, "data_dropped_records": sum(len(r.dropped_ids) for r in reports)})
    record(
        "validation",
        {"run_id": ctx.run_id, "passed": passed, "failed_rules": [r.rule for rep in reports for r in rep.failures()]},
        model_name=params.model.registered_name, commit=ctx.commit,
    )
    if not passed:
        raise DataError(error_message(reports))
    for split, warning in [(rep.split, w) for rep in reports for w in rep.warnings()]:
        logger.warning("validation (%s): %s", split, warning.describe())
    eval_dropped = eval_report.dropped_ids if eval_report else []
    eval_md5 = data.eval_md5
    if train_report.dropped_ids or eval_dropped:
        train, evaluation = without(train, train_report.dropped_ids), without(evaluation, eval_dropped)
        write_jsonl(Path(data.train_path), train)
        write_jsonl(Path(data.eval_path), evaluation)
        eval_md5 = file_md5(Path(data.eval_path))
        logger.info("dropped %d train and %d eval records by policy", len(train_report.dropped_ids), len(eval_dropped))
    logger.info("validation passed: %d train, %d eval records", len(train), len(evaluation))
    return replace(data, n_train=len(train), n_eval=len(evaluation), eval_md5=eval_md5)
