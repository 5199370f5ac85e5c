"""Tuning stage: the objective's trainer (train.objective; sft: TRL SFTTrainer) + peft, every step and
checkpoint logged to MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.common import RETRY_TRANSIENT, DataRef, RunContext, timed
from tasks.queue import compute_slot
from tunegate import tags
from tunegate.adapters import mlflow as tracking
from tunegate.data.sources import read_canonical
from tunegate.governance.trail import record
from tunegate.operations import timings
from tunegate.params import Params
from tunegate.tuning.modeling import read_model_info
from tunegate.tuning.training import TrainResult, latest_checkpoint, sft_stage_params, step_metrics, train_model


@dataclass(frozen=True)
class TunedModel:
    model_dir: str
    model_uri: str  # the MLflow transformers model logged with the run
    final_loss: float
    global_step: int
    train_runtime_s: float
    tokens_per_second: float
    resumed_from: str | None = None
    chat_template: str = ""  # the template the data was rendered with (tunegate.data.templates.template_id)
    num_tokens: int = 0
    started_at: float = 0.0  # epoch seconds: when this run's (last attempt's) training began and ended
    finished_at: float = 0.0
    stage: str = "sft"  # "sft" | "preference" (a run that tunes twice: train.objective dpo from its SFT model)
    checks: dict[str, Any] = field(default_factory=dict)  # the objective's checks (dpo: reference, held-out margins)

    @classmethod
    def of(cls, result: TrainResult, model_uri: str, chat_template: str) -> TunedModel:
        return cls(str(result.model_dir), model_uri, result.final_loss, result.global_step, result.train_runtime_s,
                   result.tokens_per_second, result.resumed_from, chat_template, result.num_tokens,
                   round(result.started_at, 3), round(result.finished_at, 3))


@task(cache_policy=NONE, timeout_seconds=6 * 3600, **RETRY_TRANSIENT)
@timed("tuning")
def tune(params: Params, data: DataRef, ctx: RunContext) -> TunedModel:
    logger = get_run_logger()
    params = sft_stage_params(params)  # train.objective dpo: this is the SFT model it starts from
    records = read_canonical(Path(data.train_path))
    logger.info("tuning %s (%s) on %d records", params.model.base_model, params.train.method, len(records))

    def log_checkpoint(path: Path) -> None:
        tracking.log_artifacts(ctx.run_id, path, "checkpoints/latest")
        tracking.set_tags(ctx.run_id, {tags.LATEST_CHECKPOINT: path.name})

    earlier = latest_checkpoint(Path(ctx.work_dir) / "checkpoints")
    if earlier is not None:  # an earlier attempt of this task, or the run resumed with --resume
        logger.info("resuming training from step %s (checkpoint %s)", earlier.name.split("-")[-1], earlier)
    with compute_slot(params, ctx, "training") as waited:
        timings.waited("tuning", waited)
        result = train_model(params, records, Path(ctx.work_dir), log_checkpoint=log_checkpoint, log_line=logger.info,
                             log_step=lambda step, values: tracking.log_metrics(ctx.run_id, step_metrics(values), step=step))
    if result.resumed_from:
        logger.info("resumed from %s", result.resumed_from)
    tracking.log_params(ctx.run_id, {f"trainer.{k}": v for k, v in result.trainer_args.items()})
    tracking.log_dict(ctx.run_id, result.trainer_args, "params/trainer_args.json")
    tracking.log_metrics(ctx.run_id, result.metrics(), step=result.global_step)
    info = read_model_info(result.model_dir)
    tracking.set_tags(ctx.run_id, {
        tags.CHAT_TEMPLATE: info.chat_template,  # what rendered the data, not what params asked
        tags.STOP_TOKEN_IDS: ",".join(str(i) for i in info.stop_token_ids),
    })
    tracking.log_artifacts(ctx.run_id, result.model_dir, "tunegate_model")
    if result.merged_dir:
        tracking.log_artifacts(ctx.run_id, result.merged_dir, "merged_model")
    model_uri = tracking.log_transformers_model(ctx.run_id, result.model_dir)
    record("training_finished", {"run_id": ctx.run_id, "final_loss": result.final_loss, "steps": result.global_step,
                                 "resumed_from": result.resumed_from, "model_uri": model_uri},
           model_name=params.model.registered_name, commit=ctx.commit)
    logger.info("trained %d steps in %.1fs (%.0f tokens/s), final loss %.4f",
                result.global_step, result.train_runtime_s, result.tokens_per_second, result.final_loss)
    return TunedModel.of(result, model_uri, info.chat_template)
