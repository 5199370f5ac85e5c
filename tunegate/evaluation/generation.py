"""Generation and response loss: what every suite runs on a model.

Greedy, batched generation with a per-evaluation cache (:func:`generate_cached`), so suites that ask
for the same prompt with the same budget (the demo's harmful family in reference and safety) generate
it once.
"""

from __future__ import annotations

from typing import Any

from tunegate.evaluation.scores import ModelEvaluation

def render_prompts(tokenizer, records: list[dict[str, Any]]) -> list[str]:
    """The prompt of each record (all turns before the final answer, its tools) through the chat template."""
    from tunegate.data.tokenize import render_prompt_of

    return [render_prompt_of(tokenizer, r) for r in records]


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Each text's number of tokens (counted without truncation or warning)."""
    from tunegate.data.tokenize import unbounded_length

    if not texts:
        return []
    with unbounded_length(tokenizer):
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def by_length(tokenizer, texts: list[str]) -> list[int]:
    """Indices of ``texts`` from shortest to longest in tokens (stable): batches of similar length."""
    lengths = token_lengths(tokenizer, texts)
    return sorted(range(len(texts)), key=lengths.__getitem__)


def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, progress=None,
    max_prompt_tokens: int | None = None,
) -> list[str]:
    """Greedy generation, batched with left padding and the KV cache; returns the decoded continuations.

    Generation stops on any stop token: the tokenizer's EOS, the template's end-of-turn token
    and the model's own ``generation_config`` EOS list (:func:`tunegate.data.templates.stop_token_ids`).
    Outputs equal one-prompt-at-a-time generation (``bench/eval.py`` checks it). Prompts longer
    than ``max_prompt_tokens`` keep their end (the generation prompt).
    """
    import torch

    from transformers import GenerationConfig

    from tunegate.data.templates import stop_token_ids

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
    # Batches of similar length: less left padding, same greedy outputs (bench/eval.py checks it).
    order = by_length(tokenizer, prompts)
    outputs: list[str] = [""] * len(prompts)
    for start in range(0, len(prompts), batch_size):
        chunk = order[start : start + batch_size]
        batch = [prompts[i] for i in chunk]
        enc = tokenizer(
            batch, add_special_tokens=False, padding=True, return_tensors="pt",
            truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens,
        )
        with torch.no_grad():
            generated = model.generate(**enc, generation_config=config)
        new_tokens = generated[:, enc["input_ids"].shape[1] :]
        for i, text in zip(chunk, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            outputs[i] = text
        if progress:
            progress(len(batch))
    return [o.strip() for o in outputs]


def response_losses(model, tokenizer, records: list[dict[str, Any]], batch_size: int) -> tuple[list[float], list[int]]:
    """Cross-entropy on the final assistant turn's tokens (EOS included): the mean per record, and each
    record's number of answer tokens (its weight in the token-weighted mean, :func:`response_loss`)."""
    import torch

    from tunegate.data.templates import end_of_turn
    from tunegate.data.tokenize import render_with_prompt, turn_end, unbounded_length

    rendered = [render_with_prompt(tokenizer, r) for r in records]
    prompts = [prompt for _, prompt in rendered]
    eot = end_of_turn(tokenizer)
    # The answer up to and including its end-of-turn token: what training labels, nothing after it.
    fulls = [
        full[: turn_end(full, len(prompt), r["messages"][-1]["content"], eot)]
        for r, (full, prompt) in zip(records, rendered)
    ]
    # Batches of similar length (less padding); each record's figures go back to its place.
    order = by_length(tokenizer, fulls)
    per_record: list[float] = [0.0] * len(records)
    tokens: list[int] = [0] * len(records)
    tokenizer.padding_side = "right"
    model.eval()
    # Longer than the model's context: keep the end (the answer), as generation keeps the prompt's end.
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    for start in range(0, len(records), batch_size):
        chunk = order[start : start + batch_size]
        batch_full = [fulls[i] for i in chunk]
        batch_prompt = [prompts[i] for i in chunk]
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
            logits = model(**enc, use_cache=False).logits[:, :-1, :]
        targets = labels[:, 1:]
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
        ).view(targets.shape)
        counts = (targets != -100).sum(dim=1)
        sums = token_loss.sum(dim=1)
        for i, loss, count in zip(chunk, (sums / counts.clamp(min=1)).tolist(), counts.tolist()):
            per_record[i], tokens[i] = loss, count
    return per_record, tokens


def render_user_prompts(tokenizer, prompts: list[str]) -> list[str]:
    """Each prompt as one user turn through the chat template, with the generation prompt."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False) for p in prompts]


Generated = dict[tuple[str, int], str]  # (rendered prompt, max_new_tokens) -> greedy output of one model


def count_longer(tokenizer, prompts: list[str], limit: int) -> int:
    """How many rendered prompts have more than ``limit`` tokens (counted without truncation or warning)."""
    return sum(length > limit for length in token_lengths(tokenizer, prompts))


def generate_cached(
    model, tokenizer, rendered: list[str], max_new_tokens: int, batch_size: int,
    cache: Generated | None = None, result: ModelEvaluation | None = None,
) -> list[str]:
    """Greedy outputs for rendered prompts; ``cache`` (one per model evaluation) answers prompts another
    suite already generated with the same budget, e.g. the demo's harmful family in reference and safety.
    Prompts too long for the context keep their end; ``result.truncated_prompts`` counts them."""
    cache = {} if cache is None else cache
    todo = list(dict.fromkeys(p for p in rendered if (p, max_new_tokens) not in cache))
    if todo:
        context = getattr(model.config, "max_position_embeddings", None) or 2048
        limit = max(context - max_new_tokens, 8)
        if result is not None:
            result.truncated_prompts += count_longer(tokenizer, todo, limit)
        outputs = generate(model, tokenizer, todo, max_new_tokens, batch_size, max_prompt_tokens=limit)
        cache.update({(prompt, max_new_tokens): output for prompt, output in zip(todo, outputs)})
    return [cache[(prompt, max_new_tokens)] for prompt in rendered]

