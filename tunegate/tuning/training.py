"""Instruction tuning: one training loop for every objective, peft (LoRA, DoRA, QLoRA) or full fine-tuning.

``train.method`` picks the adapter, ``train.objective`` the objective (:mod:`tunegate.tuning.objectives`:
today ``sft``, TRL's SFTTrainer on tunegate's own tokenisation). An objective builds its dataset, its
trainer config and its trainer; :func:`train_model` does the rest once for all of them: seeding, the
model and adapter, the arguments every trainer shares, resume from the latest checkpoint, tunegate's
callback and quiet progress bar, saving the model with its stop tokens, and the :class:`TrainResult`.
Packing, padding-free batches, length grouping, checkpoints and DDP are TRL's and transformers'.

``python -m tunegate.tuning.training`` runs the same code as a script, e.g. under
``torchrun --nproc_per_node 2`` for DDP.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunegate.params import Params, dump_params
from tunegate.tuning import objectives
from tunegate.tuning.modeling import ModelInfo, load_tokenizer, save_model

StepLogger = Callable[[int, dict[str, float]], None]
CheckpointLogger = Callable[[Path], None]
LineLogger = Callable[[str], None]


class TrainingSetupError(RuntimeError):
    """Params that cannot run on this machine (e.g. QLoRA without CUDA), caught before anything loads."""


@dataclass
class TrainResult:
    model_dir: Path
    final_loss: float
    global_step: int
    train_runtime_s: float
    num_examples: int
    trainable_params: int
    total_params: int
    num_tokens: int = 0
    tokens_per_second: float = 0.0
    resumed_from: str | None = None
    started_at: float = 0.0  # epoch seconds around this process's training (wall clock, for throughput across runs)
    finished_at: float = 0.0
    merged_dir: Path | None = None
    trainer_args: dict[str, Any] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)  # the objective's checks before the first step (dpo: reference)

    def metrics(self, prefix: str = "train") -> dict[str, float]:
        """The closing figures a run logs (MLflow names), at step ``global_step``; ``prefix`` "dpo" for the
        preference stage of a run that tuned twice."""
        return {
            f"{prefix}_final_loss": self.final_loss,
            f"{prefix}_runtime_s": self.train_runtime_s,
            f"{prefix}_tokens": self.num_tokens,
            f"{prefix}_tokens_per_second_overall": self.tokens_per_second,
            f"{'' if prefix == 'train' else prefix + '_'}trainable_params": self.trainable_params,
            f"{'' if prefix == 'train' else prefix + '_'}total_params": self.total_params,
        }


def step_metrics(values: dict[str, float], prefix: str = "train") -> dict[str, float]:
    """A trainer log entry under the names a run logs: ``train_<key>`` (``prefix`` "dpo": ``dpo_<key>``, e.g.
    ``dpo_rewards/margins``, the preference stage's). The trainer's closing summary's ``train_loss`` is the
    mean over the whole run, not a step's loss: it becomes ``<prefix>_mean_loss``, so the loss curve does not
    end with a jump."""
    closing = "train_runtime" in values and "train_loss" in values
    values = {(k[len("train_"):] if k.startswith("train_") else k): v for k, v in values.items()}
    renamed = {f"{prefix}_{k}": v for k, v in values.items()}
    if closing:
        renamed[f"{prefix}_mean_loss"] = renamed.pop(f"{prefix}_loss")
    return renamed


def check_environment(params: Params) -> None:
    """Fail fast, before loading a model, on settings this machine cannot run (the preflight's hardware checks)."""
    from tunegate.tuning.hardware import hardware_problems

    problems = hardware_problems(params)
    if problems:
        raise TrainingSetupError("; ".join(problems))


def peft_config(params: Params):
    from peft import LoraConfig

    t = params.train
    return LoraConfig(
        r=t.lora_r,
        lora_alpha=t.lora_alpha,
        lora_dropout=t.lora_dropout,
        target_modules=t.target_modules,
        modules_to_save=list(t.modules_to_save) or None,
        use_dora=t.method == "dora",
        task_type="CAUSAL_LM",
    )


def load_model_for_training(params: Params):
    """The base model in the dtype (and, for QLoRA, the 4-bit quantisation) the method needs."""
    import torch
    from transformers import AutoModelForCausalLM

    t = params.train
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[t.precision]
    kwargs: dict[str, Any] = {"trust_remote_code": False, "use_safetensors": True, "dtype": dtype}
    if t.attn_implementation:
        kwargs["attn_implementation"] = t.attn_implementation
    if t.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if t.precision == "bf16" else torch.float16,
        )
    from tunegate.paths import model_source

    model = AutoModelForCausalLM.from_pretrained(model_source(params.model.base_model), **kwargs)
    if t.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing)
    return model


def load_starting_model(start_dir: Path, params: Params):
    """(policy, reference or None, tokenizer) from a saved tunegate model directory: an adapter loaded
    trainable over its base (TRL makes the frozen ``ref`` copy), or full weights plus a frozen second copy."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunegate.data.templates import load_tokenizer
    from tunegate.tuning.modeling import read_model_info

    start_dir = Path(start_dir)
    info = read_model_info(start_dir)
    tokenizer = load_tokenizer(start_dir, None)  # the template the starting model was tuned with
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[params.train.precision]
    kwargs: dict[str, Any] = {"trust_remote_code": False, "use_safetensors": True, "dtype": dtype}
    if info.method == "full":
        policy = AutoModelForCausalLM.from_pretrained(str(start_dir), **kwargs)
        reference = AutoModelForCausalLM.from_pretrained(str(start_dir), **kwargs)
        reference.requires_grad_(False).eval()
        return policy, reference, tokenizer
    from peft import PeftModel

    base = load_model_for_training(params.model_copy(update={"model": params.model.model_copy(update={"base_model": info.base_model})}))
    policy = PeftModel.from_pretrained(base, str(start_dir), is_trainable=True)
    return policy, None, tokenizer


def shared_arguments(params: Params, output_dir: Path) -> dict[str, Any]:
    """The trainer arguments every objective takes (``transformers.TrainingArguments`` names): steps,
    optimisation, checkpoints under ``output_dir``, seeds, device and precision."""
    import os

    t = params.train
    extra: dict[str, Any] = {}
    # Always said: TRL's configs default to checkpointing on, which recomputes every forward in the backward
    # (measured: ~1/3 of a demo step on CPU) to save memory a small run does not need.
    extra["activation_checkpointing"] = t.gradient_checkpointing
    from tunegate.tuning.hardware import liger_enabled

    if liger_enabled(params):  # layer kernels only: TRL's own fused LM head already avoids the full logits
        extra["use_liger_kernel"] = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and t.device == "cpu":
        extra["ddp_backend"] = "gloo"  # DDP across CPU processes (torchrun --nproc_per_node N)
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        # By steps here, by time in TunegateCallback (checkpoint_minutes); both keep save_total_limit.
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        report_to="none",
        seed=params.project.seed,
        data_seed=params.project.seed,
        use_cpu=t.device == "cpu",
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        dataloader_num_workers=0,
        **extra,
    )


def sft_stage_params(params: Params) -> Params:
    """The params of a run's SFT stage: ``train`` as it is, with ``train.objective: sft`` where the run's
    objective is a preference one (``preference.start_from: sft`` trains the SFT model first)."""
    if not getattr(objectives.get(params.train.objective), "preference", False):
        return params
    return params.model_copy(update={"train": params.train.model_copy(update={"objective": "sft"})})


PREFERENCE_TRAIN_KEYS = ("epochs", "max_steps", "learning_rate", "batch_size", "gradient_accumulation_steps", "warmup_ratio")


def preference_stage_params(params: Params) -> Params:
    """The params of a run's preference stage: ``train`` with ``preference.train``'s steps, learning rate and
    batch (everything else, method, device, precision, adapter and checkpoints, is ``train``'s)."""
    t = params.preference.train
    update = {key: getattr(t, key) for key in PREFERENCE_TRAIN_KEYS} | {"max_length": t.max_length, "padding_free": False,
                                                                       "packing": False, "group_by_length": False}
    return params.model_copy(update={"train": params.train.model_copy(update=update)})


def sft_config(params: Params, output_dir: Path):
    """The ``sft`` objective's SFTConfig (for scripts that drive SFTTrainer themselves, e.g. bench/train.py)."""
    return objectives.get("sft").config(params, shared_arguments(params, output_dir))


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` directory, or None."""
    candidates = []
    for path in checkpoint_dir.glob("checkpoint-*"):
        suffix = path.name.split("-")[-1]
        if suffix.isdigit() and (path / "trainer_state.json").is_file():
            candidates.append((int(suffix), path))
    return max(candidates)[1] if candidates else None


def step_line(step: int, max_steps: int, values: dict[str, float]) -> str:
    """tunegate's own training line: ``step 40/400: loss 1.234, lr 4.5e-03, 3,950 tokens/s``."""
    parts = [f"loss {values['loss']:.4f}"] if "loss" in values else []
    if "learning_rate" in values:
        parts.append(f"lr {values['learning_rate']:.2e}")
    if "tokens_per_second" in values:
        parts.append(f"{values['tokens_per_second']:,.0f} tokens/s")
    return f"step {step}/{max_steps}: " + ", ".join(parts)


def quiet_progress():
    """transformers' progress bar without its ``on_log``, which writes each log dict
    (``{'loss': '0.183', ...}``) between the bars: the bar shows the loss, tunegate logs its own lines."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

    return QuietProgress()


def _callback(log_step: StepLogger | None, log_checkpoint: CheckpointLogger | None, output_dir: Path,
              checkpoint_minutes: float | None = None, log_line: LineLogger | None = None):
    from transformers import TrainerCallback

    class TunegateCallback(TrainerCallback):
        """Per-step metrics (with tokens/s) to ``log_step``; each saved checkpoint to ``log_checkpoint``;
        a checkpoint when ``checkpoint_minutes`` passed since the last one; a :func:`step_line` to
        ``log_line`` about every tenth of training (and at its last logged step)."""

        def __init__(self):
            self._last = (time.perf_counter(), 0.0)
            self._last_save = time.monotonic()
            self._last_line = -1

        def on_step_end(self, args, state, control, **kwargs):
            if checkpoint_minutes and time.monotonic() - self._last_save >= checkpoint_minutes * 60:
                control.should_save = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not (log_step or log_line):
                return
            values = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if "num_tokens" in values:
                now, tokens = time.perf_counter(), values["num_tokens"]
                last_time, last_tokens = self._last
                if tokens > last_tokens and now > last_time:
                    values["tokens_per_second"] = (tokens - last_tokens) / (now - last_time)
                self._last = (now, tokens)
            if values and log_step:
                log_step(state.global_step, values)
            if log_line and "loss" in values:
                tenth = max(1, state.max_steps // 10)
                if self._last_line < 0 or state.global_step - self._last_line >= tenth or state.global_step + args.logging_steps > state.max_steps:
                    self._last_line = state.global_step
                    log_line(step_line(state.global_step, state.max_steps, values))

        def on_save(self, args, state, control, **kwargs):
            self._last_save = time.monotonic()
            if state.is_world_process_zero and log_checkpoint:
                path = output_dir / f"checkpoint-{state.global_step}"
                if path.is_dir():
                    log_checkpoint(path)

    return TunegateCallback()


def train_model(
    params: Params,
    records: list[dict[str, Any]],
    work_dir: Path,
    log_step: StepLogger | None = None,
    log_checkpoint: CheckpointLogger | None = None,
    log_line: LineLogger | None = None,
    start_from: Path | None = None,
    eval_records: list[dict[str, Any]] | None = None,
) -> TrainResult:
    """Tune the base model on ``records`` with the objective ``train.objective`` names; save under ``work_dir/model``.

    A preference objective (dpo) tunes the saved tunegate model ``start_from`` instead, on pair records, with
    ``preference.train``'s steps (:func:`preference_stage_params`); its reference is that model, frozen.
    When ``work_dir/checkpoints`` holds a checkpoint (an earlier attempt of the same
    run that died), training resumes from it instead of starting over.
    """
    from tunegate.paths import model_source
    from tunegate.tuning.seeding import seed_everything

    objective = objectives.get(params.train.objective)
    preference = bool(getattr(objective, "preference", False))
    check_environment(params)
    seed_everything(params.project.seed)
    reference = None
    base_model = str(model_source(params.model.base_model))
    if preference:
        from tunegate.tuning.modeling import read_model_info

        if start_from is None:
            raise TrainingSetupError(f"train.objective {objective.name} tunes a tuned model: no starting model was given")
        params = preference_stage_params(params)
        base_model = read_model_info(Path(start_from)).base_model
        model, reference, tokenizer = load_starting_model(Path(start_from), params)
        dataset = objective.dataset(params, tokenizer, records)
        layout = "padded"
        if log_line and int(os.environ.get("RANK", "0")) == 0:
            log_line(f"preference pairs: {len(dataset)}, starting from {start_from} (the reference, frozen)")
    else:
        tokenizer = load_tokenizer(model_source(params.model.base_model), params.model.chat_template)
        dataset = objective.dataset(params, tokenizer, records)
        model = load_model_for_training(params)
        from tunegate.tuning.packing import resolve_batching

        params, batching = resolve_batching(params, model)  # train.padding_free and the layout for this model
        layout = batching.layout
        if log_line and int(os.environ.get("RANK", "0")) == 0:
            log_line(batching.line)
    checkpoint_dir = work_dir / "checkpoints"
    resume = latest_checkpoint(checkpoint_dir)
    trainer = objective.trainer(objectives.TrainerParts(
        params=params,
        model=model,
        tokenizer=tokenizer,
        args=objective.config(params, shared_arguments(params, checkpoint_dir)),
        train_dataset=dataset,
        peft_config=peft_config(params) if params.train.method != "full" and not preference else None,
        callbacks=[_callback(log_step, log_checkpoint, checkpoint_dir, params.train.checkpoint_minutes, log_line)],
        batching=layout,
        ref_model=reference,
    ))
    _quiet(trainer)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    checks: dict[str, Any] = {}
    before = getattr(objective, "before_training", None)
    if before is not None and resume is None:  # e.g. dpo: the reference scores like the starting model
        checks = before(trainer)
    started_at = time.time()
    runtime, training_loss = _train_or_resume(trainer, resume)
    finished_at = time.time()
    if preference and eval_records:
        from tunegate.tuning.objectives.dpo import held_out_margins

        checks["held_out"] = held_out_margins(trainer, tokenizer, params, eval_records)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0)
    result = TrainResult(
        model_dir=work_dir / "model",
        final_loss=float(losses[-1]) if losses else training_loss,
        global_step=int(trainer.state.global_step),
        train_runtime_s=runtime,
        num_examples=len(records),
        trainable_params=int(trainable),
        total_params=int(total),
        num_tokens=int(tokens),
        tokens_per_second=float(tokens / runtime) if runtime else 0.0,
        resumed_from=str(resume) if resume else None,
        started_at=started_at,
        finished_at=finished_at,
        trainer_args=json.loads(trainer.args.to_json_string()),
        log_history=list(trainer.state.log_history),
        checks=checks,
    )
    if trainer.is_world_process_zero():
        from tunegate.data.templates import template_id
        from tunegate.tuning.objectives.dpo import drop_reference_adapter

        drop_reference_adapter(trainer.model)  # the saved model is the policy alone, one adapter like SFT's
        info = ModelInfo(
            method=params.train.method,
            base_model=base_model,
            chat_template=template_id(tokenizer.chat_template),
        )
        save_model(trainer.model, tokenizer, result.model_dir, info, dump_params(params))
        if params.train.merge_adapter and params.train.method != "full":
            result.merged_dir = save_merged(result.model_dir, work_dir / "merged")
    return result


def _quiet(trainer) -> None:
    """tunegate's progress on the terminal: no printed log dicts, the bar without them (:func:`quiet_progress`)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.pop_callback(PrinterCallback)  # with the bar switched off (disable_tqdm) it prints the same dicts
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(quiet_progress())


def _train_or_resume(trainer, resume: Path | None) -> tuple[float, float]:
    """Train from the start or from checkpoint ``resume``: (runtime in seconds, the trainer's mean loss)."""
    state = json.loads((resume / "trainer_state.json").read_text()) if resume else {}
    if resume and state.get("global_step", 0) >= state.get("max_steps", 1 << 62):
        # The last checkpoint is the end of training (the crash came after it): take its weights.
        # Resuming a finished state would make transformers run one step too many.
        _load_checkpoint_weights(trainer, resume)
        trainer.state.global_step = int(state["global_step"])
        trainer.state.log_history = list(state.get("log_history", []))
        return sum(float(h.get("train_runtime", 0.0)) for h in trainer.state.log_history), float("nan")
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return float(output.metrics.get("train_runtime", 0.0)), float(output.training_loss)


def _load_checkpoint_weights(trainer, checkpoint: Path) -> None:
    """Load a checkpoint's trainable weights (adapter or full model) into the trainer's model."""
    from safetensors.torch import load_file

    adapter = checkpoint / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(trainer.model, load_file(str(adapter)))
        return
    state = load_file(str(checkpoint / "model.safetensors"))
    trainer.model.load_state_dict(state, strict=False)


def save_merged(adapter_dir: Path, out_dir: Path) -> Path:
    """The adapter merged into a fresh copy of its base weights, saved as a full model."""
    from tunegate.tuning.modeling import load_saved_model, read_model_info

    model, tokenizer = load_saved_model(adapter_dir)
    merged = model.merge_and_unload()
    info = read_model_info(adapter_dir)
    resolved = (adapter_dir / "resolved_params.yaml").read_text(encoding="utf-8")
    save_model(merged, tokenizer, out_dir, ModelInfo("full", info.base_model, info.chat_template), resolved)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """Train from the command line (also under torchrun/accelerate for DDP).

    python -m tunegate.tuning.training --params params/demo.yaml --data train.jsonl --out DIR [--set k=v ...]
    """
    import argparse
    import os

    from tunegate.data.sources import read_canonical
    from tunegate.params import load_params

    parser = argparse.ArgumentParser(description="tunegate training step")
    parser.add_argument("--params", required=True)
    parser.add_argument("--data", required=True, help="canonical JSONL records")
    parser.add_argument("--out", required=True, help="work directory (checkpoints/, model/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    params = load_params(Path(args.params), args.overrides)
    steps_run_here: list[int] = []
    result = train_model(
        params,
        read_canonical(Path(args.data)),
        Path(args.out),
        log_step=lambda step, values: steps_run_here.append(step) if "loss" in values else None,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: v for k, v in asdict(result).items() if k not in ("log_history", "trainer_args")}
        summary["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
        summary["losses"] = [h["loss"] for h in result.log_history if "loss" in h]
        summary["steps_run_here"] = steps_run_here
        print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
