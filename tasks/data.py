"""Data stage: reproduce the dataset with DVC, record its md5, validate it."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from tasks.common import DataRef, RunContext
from tunegate import audit, dvc_adapter, tracking
from tunegate.params import Params, resolve_path
from tunegate.paths import repo_root, tunegate_home
from tunegate.validation import DataError, load_records, validate_records


@task(cache_policy=NONE)
def prepare_data(params: Params, ctx: RunContext) -> DataRef:
    """``dvc repro`` the data stage (a no-op when nothing changed), then log md5 and inputs."""
    logger = get_run_logger()
    root = repo_root()
    train_path, eval_path = resolve_path(params.data.train_path), resolve_path(params.data.eval_path)
    if params.data.dvc_stage:
        logger.info("dvc repro %s", params.data.dvc_stage)
        dvc_adapter.reproduce(root, params.data.dvc_stage, tunegate_home())
        outs = dvc_adapter.stage_outputs(root / "dvc.lock", params.data.dvc_stage)
        data_md5 = outs[0].md5 if len(outs) == 1 else "+".join(o.md5 for o in outs)
    else:
        data_md5 = dvc_adapter.file_md5(train_path)
    train = load_records(train_path)
    evaluation = load_records(eval_path)
    tracking.set_tags(ctx.run_id, {"tunegate.data_md5": data_md5})
    tracking.log_dataset(ctx.run_id, train, "train", str(train_path), data_md5, "training")
    tracking.log_dataset(ctx.run_id, evaluation, "eval", str(eval_path), dvc_adapter.file_md5(eval_path), "evaluation")
    tracking.set_tags(ctx.run_id, {"tunegate.train_md5": dvc_adapter.file_md5(train_path), "tunegate.eval_md5": dvc_adapter.file_md5(eval_path)})
    audit.append_event(Path(ctx.audit_log), "data_versioned", {"run_id": ctx.run_id, "data_md5": data_md5, "train": str(train_path), "eval": str(eval_path)}, commit=ctx.commit)
    logger.info("data md5 %s: %d train, %d eval records", data_md5, len(train), len(evaluation))
    return DataRef(str(train_path), str(eval_path), data_md5, len(train), len(evaluation))


@task(cache_policy=NONE)
def validate_data(params: Params, data: DataRef, ctx: RunContext) -> dict:
    """Run the expectation suite on both splits; a failed rule stops the flow before tuning."""
    logger = get_run_logger()
    reports = {}
    for split, path in (("train", data.train_path), ("eval", data.eval_path)):
        minimum = params.validation.min_records if split == "train" else 1
        reports[split] = validate_records(load_records(Path(path)), minimum, suite_name=f"canonical_chat_{split}")
    markdown = "\n".join(r.to_markdown(f"Data validation: {s}") for s, r in reports.items())
    tracking.log_text(ctx.run_id, markdown, "validation/report.md")
    tracking.log_dict(ctx.run_id, {s: r.to_dict() for s, r in reports.items()}, "validation/report.json")
    create_markdown_artifact(key="validation-report", markdown=markdown, description="Great Expectations results")
    passed = all(r.passed for r in reports.values())
    tracking.set_tags(ctx.run_id, {"tunegate.validation": "passed" if passed else "failed"})
    audit.append_event(Path(ctx.audit_log), "validation", {"run_id": ctx.run_id, "passed": passed}, commit=ctx.commit)
    if not passed:
        failures = [f"{split}: {rule.describe()}" for split, r in reports.items() for rule in r.failures()]
        raise DataError("data validation failed:\n  " + "\n  ".join(failures))
    logger.info("validation passed: %s", ", ".join(f"{s} {r.n_records} records" for s, r in reports.items()))
    return {s: r.passed for s, r in reports.items()}
