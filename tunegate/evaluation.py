"""Evaluating a model on held-out chat records: greedy generation and response loss."""

from __future__ import annotations

from typing import Any

from tunegate.metrics import EvalMetrics, aggregate, score


def render_prompts(tokenizer, records: list[dict[str, Any]]) -> list[str]:
    """The prompt of each record (all turns before the final answer) through the chat template."""
    return [
        tokenizer.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=False)
        for r in records
    ]


def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, progress=None,
    max_prompt_tokens: int | None = None,
) -> list[str]:
    """Greedy generation, batched with left padding and the KV cache; returns the decoded continuations.

    Outputs equal one-prompt-at-a-time generation (``bench/eval.py`` checks it). Prompts longer
    than ``max_prompt_tokens`` keep their end (the generation prompt).
    """
    import torch

    from transformers import GenerationConfig

    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    model.eval()
    # Greedy, bounded only by max_new_tokens; the model's own max_length would collide.
    model.generation_config.max_length = None
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        enc = tokenizer(
            batch, add_special_tokens=False, padding=True, return_tensors="pt",
            truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens,
        )
        with torch.no_grad():
            generated = model.generate(**enc, generation_config=config)
        new_tokens = generated[:, enc["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        if progress:
            progress(len(batch))
    return [o.strip() for o in outputs]


def response_losses(model, tokenizer, records: list[dict[str, Any]], batch_size: int) -> tuple[list[float], float]:
    """Cross-entropy on the final assistant turn's tokens (EOS included): per record, and token-weighted overall."""
    import torch

    prompts = render_prompts(tokenizer, records)
    fulls = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records]
    per_record: list[float] = []
    total_loss, total_tokens = 0.0, 0
    tokenizer.padding_side = "right"
    model.eval()
    for start in range(0, len(records), batch_size):
        batch_full = fulls[start : start + batch_size]
        batch_prompt = prompts[start : start + batch_size]
        enc = tokenizer(batch_full, add_special_tokens=False, padding=True, return_tensors="pt")
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        for row, prompt in enumerate(batch_prompt):
            prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            labels[row, :prompt_len] = -100
        with torch.no_grad():
            logits = model(**enc).logits[:, :-1, :]
        targets = labels[:, 1:]
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
        ).view(targets.shape)
        counts = (targets != -100).sum(dim=1)
        sums = token_loss.sum(dim=1)
        per_record.extend((sums / counts.clamp(min=1)).tolist())
        total_loss += float(sums.sum())
        total_tokens += int(counts.sum())
    return per_record, total_loss / max(total_tokens, 1)


def response_loss(model, tokenizer, records: list[dict[str, Any]], batch_size: int) -> float:
    """Mean cross-entropy over the final assistant turn's tokens (EOS included), token-weighted."""
    return response_losses(model, tokenizer, records, batch_size)[1]


def evaluate_model(model, tokenizer, records: list[dict[str, Any]], max_new_tokens: int, batch_size: int, progress=None) -> EvalMetrics:
    outputs = generate(model, tokenizer, render_prompts(tokenizer, records), max_new_tokens, batch_size, progress)
    loss = response_loss(model, tokenizer, records, batch_size)
    return aggregate(score(records, outputs), loss)
