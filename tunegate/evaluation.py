"""Evaluating a model on held-out chat records: greedy generation and response loss."""

from __future__ import annotations

from typing import Any

from tunegate.metrics import EvalMetrics, aggregate, score


def render_prompts(tokenizer, records: list[dict[str, Any]]) -> list[str]:
    """The prompt of each record (all turns before the final answer, its tools) through the chat template."""
    from tunegate.tokenize import render_prompt_of

    return [render_prompt_of(tokenizer, r) for r in records]


def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, progress=None,
    max_prompt_tokens: int | None = None,
) -> list[str]:
    """Greedy generation, batched with left padding and the KV cache; returns the decoded continuations.

    Generation stops on any stop token: the tokenizer's EOS, the template's end-of-turn token
    and the model's own ``generation_config`` EOS list (:func:`tunegate.templates.stop_token_ids`).
    Outputs equal one-prompt-at-a-time generation (``bench/eval.py`` checks it). Prompts longer
    than ``max_prompt_tokens`` keep their end (the generation prompt).
    """
    import torch

    from transformers import GenerationConfig

    from tunegate.templates import stop_token_ids

    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    model.eval()
    # Greedy, bounded only by max_new_tokens; the model's own max_length would collide.
    model.generation_config.max_length = None
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_token_ids(tokenizer, model.generation_config),
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


def response_losses(model, tokenizer, records: list[dict[str, Any]], batch_size: int) -> tuple[list[float], list[int]]:
    """Cross-entropy on the final assistant turn's tokens (EOS included): the mean per record, and each
    record's number of answer tokens (its weight in the token-weighted mean, :func:`response_loss`)."""
    import torch

    from tunegate.templates import end_of_turn
    from tunegate.tokenize import render_with_prompt, turn_end, unbounded_length

    rendered = [render_with_prompt(tokenizer, r) for r in records]
    prompts = [prompt for _, prompt in rendered]
    eot = end_of_turn(tokenizer)
    # The answer up to and including its end-of-turn token: what training labels, nothing after it.
    fulls = [
        full[: turn_end(full, len(prompt), r["messages"][-1]["content"], eot)]
        for r, (full, prompt) in zip(records, rendered)
    ]
    per_record: list[float] = []
    tokens: list[int] = []
    tokenizer.padding_side = "right"
    model.eval()
    # Longer than the model's context: keep the end (the answer), as generation keeps the prompt's end.
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    for start in range(0, len(records), batch_size):
        batch_full = fulls[start : start + batch_size]
        batch_prompt = prompts[start : start + batch_size]
        with unbounded_length(tokenizer):
            full_ids = tokenizer(batch_full, add_special_tokens=False)["input_ids"]
            prompt_lens = [len(ids) for ids in tokenizer(batch_prompt, add_special_tokens=False)["input_ids"]]
        cut = [max(0, len(ids) - context) if context else 0 for ids in full_ids]
        rows = [ids[c:] for ids, c in zip(full_ids, cut)]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        enc = {
            "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        }
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        for row, (prompt_len, c) in enumerate(zip(prompt_lens, cut)):
            labels[row, : max(prompt_len - c, 0)] = -100
        with torch.no_grad():
            logits = model(**enc).logits[:, :-1, :]
        targets = labels[:, 1:]
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
        ).view(targets.shape)
        counts = (targets != -100).sum(dim=1)
        sums = token_loss.sum(dim=1)
        per_record.extend((sums / counts.clamp(min=1)).tolist())
        tokens.extend(counts.tolist())
    return per_record, tokens


def response_loss(model, tokenizer, records: list[dict[str, Any]], batch_size: int) -> float:
    """Mean cross-entropy over the final assistant turn's tokens (EOS included), token-weighted."""
    from tunegate.stats import weighted_mean

    return weighted_mean(*response_losses(model, tokenizer, records, batch_size))


def evaluate_model(model, tokenizer, records: list[dict[str, Any]], max_new_tokens: int, batch_size: int, progress=None) -> EvalMetrics:
    outputs = generate(model, tokenizer, render_prompts(tokenizer, records), max_new_tokens, batch_size, progress)
    loss = response_loss(model, tokenizer, records, batch_size)
    return aggregate(score(records, outputs), loss)
