"""Supervised fine-tuning with TRL's SFTTrainer, on tunegate's own tokenisation.

``tunegate.data.tokenize`` turns each canonical record into ``input_ids`` and ``labels`` (loss on every
assistant turn and its end-of-turn token, or the last one with ``train.loss_on: last_assistant_turn``),
which SFTTrainer takes as an already-processed dataset; packing and flattened batches are its own, packed
rows (``tunegate.tuning.packing``) tunegate's collator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunegate.tuning.objectives.base import Record, TrainerParts

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase
    from trl import SFTConfig, SFTTrainer


class SFT:
    name = "sft"
    preference = False

    def dataset(self, params: Any, tokenizer: PreTrainedTokenizerBase, records: list[Record]) -> Dataset:
        from datasets import Dataset

        from tunegate.data.tokenize import tokenize_records

        t = params.train
        examples = tokenize_records(tokenizer, records, t.max_length, last_turn_only=t.loss_on == "last_assistant_turn")
        return Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]})

    def config(self, params: Any, shared: dict[str, Any]) -> SFTConfig:
        from trl import SFTConfig

        t = params.train
        return SFTConfig(
            **shared,
            # Padding-free without packing: the dataset is already cut to train.max_length (TRL asks for None).
            max_length=None if t.padding_free is True and not t.packing else t.max_length,
            packing=t.packing,
            # train.padding_free is resolved by tunegate.tuning.packing before this: True where the model keeps
            # flattened examples apart. Then packing is best-fit with position ids restarting per example.
            packing_strategy="bfd" if t.padding_free is True else "wrapped",
            padding_free=t.padding_free is True and not t.packing,
        )

    def trainer(self, parts: TrainerParts) -> SFTTrainer:
        from trl import SFTTrainer

        extra: dict[str, Any] = {}
        trainer_class = SFTTrainer
        if parts.batching == "rows":
            from tunegate.tuning.packing import PackedRowsCollator

            tokenizer = parts.tokenizer
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            extra["data_collator"] = PackedRowsCollator(pad_token_id=int(pad or 0))
            trainer_class = _rows_trainer()
        return trainer_class(
            model=parts.model,
            args=parts.args,
            train_dataset=parts.train_dataset,
            processing_class=parts.tokenizer,
            peft_config=parts.peft_config,
            callbacks=parts.callbacks,
            **extra,
        )


def _rows_trainer():
    """SFTTrainer for packed rows: TRL counts a batch without an attention mask as one row's width of
    tokens (its flattened layout), so the trainer takes the collator's ``num_real_tokens`` out of the
    forward's inputs and counts those instead (``num_tokens`` and tokens/s stay comparable to padded)."""
    from trl import SFTTrainer

    class RowsSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            real = inputs.pop("num_real_tokens", None)
            before = self._total_train_tokens
            result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            if real is not None and self.model.training:
                self._total_train_tokens = before + int(self.accelerator.gather_for_metrics(real).sum().item())
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return result

    return RowsSFTTrainer
