"""Instruction tuning with TRL's SFTTrainer and peft.

Records are canonical chat records (``{"id", "messages": [{role, content}...]}``).
Each becomes a conversational prompt/completion pair: the prompt is every
message before the final assistant turn, the completion is that turn. TRL
renders both with the tokenizer's chat template (which appends EOS to
assistant turns) and computes the loss on the completion only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunegate.modeling import ModelInfo, load_base_model, load_tokenizer, save_model
from tunegate.params import Params, dump_params

StepLogger = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    model_dir: Path
    final_loss: float
    global_step: int
    train_runtime_s: float
    num_examples: int
    trainable_params: int
    total_params: int
    log_history: list[dict[str, Any]] = field(default_factory=list)


def to_prompt_completion(record: dict[str, Any]) -> dict[str, Any]:
    """Split a canonical record into TRL's conversational prompt/completion form."""
    messages = record["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(f"record {record.get('id')!r}: the last message must be the assistant's")
    return {
        "prompt": [{"role": m["role"], "content": m["content"]} for m in messages[:-1]],
        "completion": [{"role": "assistant", "content": messages[-1]["content"]}],
    }


def lora_config(params: Params):
    from peft import LoraConfig

    t = params.train
    return LoraConfig(
        r=t.lora_r,
        lora_alpha=t.lora_alpha,
        lora_dropout=t.lora_dropout,
        target_modules=t.target_modules,
        modules_to_save=list(t.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )


def sft_config(params: Params, output_dir: Path):
    from trl import SFTConfig

    t = params.train
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        logging_steps=t.logging_steps,
        max_length=t.max_length,
        completion_only_loss=True,
        save_strategy="no",
        report_to="none",
        seed=params.project.seed,
        data_seed=params.project.seed,
        use_cpu=t.device == "cpu",
        bf16=False,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )


class _StepLogCallback:
    """Forwards every training log (loss, lr, grad norm) to ``log_step``."""

    def __new__(cls, log_step: StepLogger):
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                numeric = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
                if numeric:
                    log_step(state.global_step, numeric)

        return Callback()


def train_model(
    params: Params,
    records: list[dict[str, Any]],
    work_dir: Path,
    log_step: StepLogger | None = None,
) -> TrainResult:
    """Tune the base model on ``records``; save the result under ``work_dir/model``."""
    from datasets import Dataset
    from trl import SFTTrainer

    from tunegate.seeding import seed_everything

    seed_everything(params.project.seed)
    base_path = params.base_model_path()
    tokenizer = load_tokenizer(base_path, params.model.chat_template)
    model = load_base_model(base_path)
    dataset = Dataset.from_list([to_prompt_completion(r) for r in records])
    peft_config = lora_config(params) if params.train.method == "lora" else None
    trainer = SFTTrainer(
        model=model,
        args=sft_config(params, work_dir / "checkpoints"),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_StepLogCallback(log_step)] if log_step else None,
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    output = trainer.train()
    info = ModelInfo(
        method=params.train.method, base_model=str(base_path), chat_template=params.model.chat_template
    )
    model_dir = save_model(trainer.model, tokenizer, work_dir / "model", info, dump_params(params))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return TrainResult(
        model_dir=model_dir,
        final_loss=float(losses[-1]) if losses else float(output.training_loss),
        global_step=int(trainer.state.global_step),
        train_runtime_s=float(output.metrics.get("train_runtime", 0.0)),
        num_examples=len(records),
        trainable_params=int(trainable),
        total_params=int(total),
        log_history=list(trainer.state.log_history),
    )
