"""Tuning stage: TRL SFTTrainer + peft, every step logged to MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.common import DataRef, RunContext
from tunegate import audit, tracking
from tunegate.params import Params
from tunegate.training import train_model
from tunegate.sources import read_canonical


@dataclass(frozen=True)
class TunedModel:
    model_dir: str
    final_loss: float
    global_step: int
    train_runtime_s: float


@task(cache_policy=NONE, timeout_seconds=6 * 3600)
def tune(params: Params, data: DataRef, ctx: RunContext) -> TunedModel:
    logger = get_run_logger()
    records = read_canonical(Path(data.train_path))
    logger.info("tuning %s (%s) on %d records", params.model.base_model, params.train.method, len(records))

    def log_step(step: int, values: dict[str, float]) -> None:
        renamed = {("train_" + k if not k.startswith("train") else k): v for k, v in values.items()}
        tracking.log_metrics(ctx.run_id, renamed, step=step)

    result = train_model(params, records, Path(ctx.work_dir), log_step=log_step)
    tracking.log_metrics(
        ctx.run_id,
        {
            "train_final_loss": result.final_loss,
            "train_runtime_s": result.train_runtime_s,
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
        },
        step=result.global_step,
    )
    tracking.log_artifacts(ctx.run_id, result.model_dir, "model")
    audit.append_event(Path(ctx.audit_log), "training_finished", {"run_id": ctx.run_id, "final_loss": result.final_loss, "steps": result.global_step}, commit=ctx.commit)
    logger.info("trained %d steps in %.1fs, final loss %.4f", result.global_step, result.train_runtime_s, result.final_loss)
    return TunedModel(str(result.model_dir), result.final_loss, result.global_step, result.train_runtime_s)
