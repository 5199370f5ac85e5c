"""Direct preference optimisation with TRL's DPOTrainer, on tunegate's own tokenisation, from a tuned model.

The policy starts as the model ``preference.start_from`` names (the SFT model this run trained, or a
registered version) and the reference is that same model, frozen:

- an adapter (LoRA/DoRA/QLoRA): the starting adapter is loaded trainable and TRL copies it into a frozen
  ``ref`` adapter (``DPOTrainer`` given a ``PeftModel`` and no ``peft_config``), so the reference is the SFT
  policy, not the base model with the adapter switched off;
- full weights: a second copy of the starting model, frozen, is the ``ref_model``.

Each pair is rendered as two conversations (prompt + chosen, prompt + rejected) by
:func:`tunegate.data.tokenize.tokenize_records` with the loss on the last assistant turn, exactly as SFT
renders a record: the answer's tokens up to and including the template's end-of-turn token are the
completion, everything before it the prompt. The prompt keeps its last ``preference.train.max_prompt_length``
tokens, the whole pair at most ``preference.train.max_length``; TRL's dataset preparation is skipped for a
dataset already in ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunegate.tuning.objectives.base import Record, TrainerParts

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase
    from trl import DPOConfig, DPOTrainer

REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of the starting adapter


class PairError(ValueError):
    """A preference pair that cannot be trained on (e.g. its prompt fills the context)."""


def tokenize_pairs(tokenizer, records: list[Record], max_length: int, max_prompt_length: int) -> list[dict[str, list[int]]]:
    """``{"prompt_ids", "chosen_ids", "rejected_ids"}`` per canonical pair record (tunegate.data.preference).

    The two sides share the prompt's tokens (the longest common prefix of the two renders before either
    answer's first trainable token); each answer runs to its last trainable token (the end-of-turn token).
    """
    from tunegate.data.tokenize import IGNORE, tokenize_records

    chats = []
    for record in records:
        extra = {"tools": record["tools"]} if record.get("tools") else {}
        for side in ("chosen", "rejected"):
            chats.append({**extra, "id": record["id"], "source": record.get("source"),
                          "messages": [*record["prompt"], {**record[side], "role": "assistant"}]})
    examples = tokenize_records(tokenizer, chats, 1 << 30, last_turn_only=True)
    out = []
    for n, record in enumerate(records):
        sides = []
        for example in examples[2 * n: 2 * n + 2]:
            trained = [i for i, label in enumerate(example.labels) if label != IGNORE]
            sides.append((example.input_ids, trained[0], trained[-1] + 1))
        (chosen, c0, c1), (rejected, r0, r1) = sides
        shared = 0
        while shared < min(c0, r0) and chosen[shared] == rejected[shared]:
            shared += 1
        prompt = chosen[:shared][-max_prompt_length:]
        room = max_length - len(prompt)
        if room < 1:
            source = record.get("source") or {}
            raise PairError(f"{source.get('file', '?')} record {source.get('index', '?')} (id {record['id']}): the prompt "
                            f"leaves no room for an answer within preference.train.max_length {max_length}")
        out.append({"prompt_ids": prompt, "chosen_ids": chosen[shared:c1][:room], "rejected_ids": rejected[shared:r1][:room]})
    return out


class DPO:
    name = "dpo"
    preference = True  # trains on preference pairs, from a tuned model (preference.start_from)

    def dataset(self, params: Any, tokenizer: PreTrainedTokenizerBase, records: list[Record]) -> Dataset:
        from datasets import Dataset

        unpaired = [r for r in records if "chosen" not in r or "rejected" not in r]
        if unpaired:
            source = unpaired[0].get("source") or {}
            raise PairError(f"{source.get('file', '?')} record {source.get('index', '?')}: train.objective dpo needs "
                            "chosen/rejected pairs; unpaired records (label true/false) are KTO data")
        t = params.preference.train
        rows = tokenize_pairs(tokenizer, records, t.max_length, t.max_prompt_length)
        return Dataset.from_dict({key: [row[key] for row in rows] for key in ("prompt_ids", "chosen_ids", "rejected_ids")})

    def config(self, params: Any, shared: dict[str, Any]) -> DPOConfig:
        from trl import DPOConfig

        t = params.preference.train
        return DPOConfig(
            **shared,
            beta=t.beta,
            loss_type=[t.loss_type, "sft"] if t.sft_weight else [t.loss_type],
            loss_weights=[1.0, t.sft_weight] if t.sft_weight else None,
            label_smoothing=t.label_smoothing,
            max_length=t.max_length,
            truncation_mode="keep_start",
            precompute_ref_log_probs=False,
            disable_dropout=True,
        )

    def trainer(self, parts: TrainerParts) -> DPOTrainer:
        return _trainer_class()(
            model=parts.model,
            ref_model=parts.ref_model,
            args=parts.args,
            train_dataset=parts.train_dataset,
            processing_class=parts.tokenizer,
            callbacks=parts.callbacks,
        )

    def before_training(self, trainer) -> dict[str, Any]:
        """The reference check (:func:`check_reference`), run once before the first step of a fresh start."""
        return {"reference_check": check_reference(trainer)}


def _trainer_class():
    """DPOTrainer that takes tunegate's tokenised pairs as they are (no second render through TRL's own
    tokenisation) and logs the number of tokens it trained on, like SFT's trainer."""
    from trl import DPOTrainer

    class TunegateDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return TunegateDPOTrainer


def drop_reference_adapter(model) -> None:
    """Remove TRL's frozen ``ref`` adapter before saving, so the saved model is one adapter like SFT's."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)


class ReferenceMismatch(RuntimeError):
    """The frozen reference does not score like the starting model: DPO would pull towards another model."""


REFERENCE_TOLERANCE = 1e-4  # summed log-probability, nats: fp32 forward of the same weights twice agrees far closer


def pair_log_probs(trainer, pairs: int = 8, reference: bool = False, rows: list[dict] | None = None):
    """Summed log-probabilities of the chosen and rejected answers of ``rows`` (tokenised pairs; default the first
    ``pairs`` training pairs), under the policy (``reference`` False) or the trainer's frozen reference, by TRL's
    own forward (the fused head)."""
    import torch

    if rows is None:
        rows = [trainer.train_dataset[i] for i in range(min(pairs, len(trainer.train_dataset)))]
    batch = trainer.data_collator(rows)
    inputs = {k: v.to(trainer.accelerator.device) if hasattr(v, "to") else v for k, v in batch.items()}
    if reference:
        chosen, rejected = trainer.compute_ref_log_probs(trainer.model, inputs)
        return chosen.detach().float().cpu(), rejected.detach().float().cpu()
    model_kwargs = {k: v for k, v in inputs.items() if k not in {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}}
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    was_training = trainer.model.training
    trainer.model.eval()
    try:
        with torch.no_grad():
            per_token = trainer.model(**model_kwargs, use_cache=False, labels=labels, fused_lm_head=True).log_probs
    finally:
        trainer.model.train(was_training)
    width = inputs["completion_mask"][..., 1:].size(1)
    chosen, rejected = per_token[:, -width:].sum(dim=1).chunk(2, dim=0)
    return chosen.float().cpu(), rejected.float().cpu()


def check_reference(trainer, pairs: int = 8) -> dict[str, Any]:
    """Before the first optimizer step the policy is the starting model, so the frozen reference must give the
    same log-probabilities on the same pairs (every margin exactly 0). Raise :class:`ReferenceMismatch` when it
    does not (e.g. a reference that is the base model: an adapter switched off instead of copied)."""
    policy = pair_log_probs(trainer, pairs)
    ref = pair_log_probs(trainer, pairs, reference=True)
    diff = max(float((policy[0] - ref[0]).abs().max()), float((policy[1] - ref[1]).abs().max()))
    check = {"pairs": int(policy[0].numel()), "max_abs_logp_difference": diff, "tolerance": REFERENCE_TOLERANCE,
             "reference": "frozen copy of the starting adapter" if trainer.ref_model is None else "frozen copy of the starting model"}
    if not diff <= REFERENCE_TOLERANCE:
        raise ReferenceMismatch(f"the DPO reference does not score like the starting model before training (log-prob "
                                f"difference {diff:.4g} on {check['pairs']} pairs, tolerance {REFERENCE_TOLERANCE}): the "
                                "reference must be the starting model, frozen; nothing was trained")
    return check


def held_out_margins(trainer, tokenizer, params: Any, records: list[Record], batch_size: int = 16) -> dict[str, Any]:
    """Each held-out pair's log-probability margin (chosen - rejected) under the trained policy and under the
    frozen reference (the parent): the candidate's implicit reward prefers the chosen answer where its margin
    exceeds the reference's (TRL's ``rewards/accuracies`` per pair)."""
    t = params.preference.train
    rows = tokenize_pairs(tokenizer, records, t.max_length, t.max_prompt_length)
    policy, reference = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        for out, ref in ((policy, False), (reference, True)):
            chosen, rejected = pair_log_probs(trainer, reference=ref, rows=chunk)
            out += [float(c - r) for c, r in zip(chosen, rejected)]
    return {"keys": [r["id"] for r in records], "families": [str(r.get("family") or "all") for r in records],
            "policy_margin": policy, "reference_margin": reference, "beta": t.beta}
