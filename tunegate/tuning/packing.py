"""Padding-free batches where they are exact: one probe of the loaded model, not a list of families.

A padding-free batch is the batch's examples concatenated into one row, position ids restarting at 0 per
example and no attention mask (TRL's collator with ``padding_free``). transformers builds the
block-diagonal causal mask from the restarting position ids only when there is no attention mask and no
KV cache; TRL's SFTTrainer passes ``use_cache=False`` to every training forward. Whether a model's
attention honours the restarting positions is a property of its family and attention implementation
(measured here: Llama/stories260K, GPT-2 and Qwen2 on ``sdpa`` and ``eager`` within 1e-5; with the cache
on, the second example's logits are off by up to 10.8), so :func:`padding_free_problem` asks the model
itself: three short random sequences, flattened against one at a time.
"""

from __future__ import annotations

from typing import Any

# fp32 logits of a flattened batch equal the separate runs to ~1e-5; half precision to ~1e-2.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 5e-2}


def flattened_logits_gap(model, lengths: tuple[int, ...] = (7, 11, 5), seed: int = 0, use_cache: bool = False) -> float:
    """Largest absolute difference between the logits of ``lengths``-long random sequences run flattened
    into one row (restarting position ids, no mask) and run one at a time."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 0) or 256)
    device = next(model.parameters()).device
    seqs = [torch.randint(0, vocab, (n,), generator=generator).to(device) for n in lengths]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            flat = torch.cat(seqs)[None]
            positions = torch.cat([torch.arange(len(s), device=device) for s in seqs])[None]
            together = model(input_ids=flat, position_ids=positions, use_cache=use_cache).logits[0].float()
            apart = torch.cat([model(input_ids=s[None], use_cache=False).logits[0].float() for s in seqs])
    finally:
        model.train(was_training)
    return float((together - apart).abs().max())


def padding_free_problem(model, precision: str = "fp32") -> str | None:
    """None when this model's attention keeps flattened examples apart; else why not (said once at start)."""
    try:
        gap = flattened_logits_gap(model)
    except Exception as error:  # a family whose forward refuses position ids without a mask
        return f"{type(model).__name__} cannot run a flattened batch ({type(error).__name__}: {error})"
    if gap > TOLERANCE.get(precision, 1e-4):
        attention = getattr(model.config, "_attn_implementation", None) or "default"
        return (f"{type(model).__name__} on {attention} attention lets flattened examples see each other "
                f"(logits off by {gap:.3g} against one at a time)")
    return None


def resolve_batching(params: Any, model) -> tuple[Any, str]:
    """``params`` with ``train.padding_free`` decided for this model, and the line that says how batches
    are built.

    Exactness is not enough: on ``sdpa``/``eager`` the flattened row is one sequence of the whole batch's
    tokens under a block mask, so attention costs the square of the batch's tokens, not of each example's
    (measured: the demo trained at ~780 tokens/s padding-free against ~8,000 padded). Only flash attention's
    varlen kernels make it cheap. ``auto`` is therefore padding-free (and packing best-fit) only with
    ``flash_attention_2`` on a model that passes :func:`padding_free_problem`; ``true`` asks for it anyway
    (exact, slower) and is an error on a model that fails the probe."""
    t = params.train
    flash = (t.attn_implementation or getattr(model.config, "_attn_implementation", None)) == "flash_attention_2"
    wanted = t.padding_free is True or (t.padding_free == "auto" and flash)
    problem = padding_free_problem(model, t.precision) if wanted else None
    if t.padding_free is True and problem:
        raise ValueError(f"train.padding_free: true, but {problem}; set train.padding_free: auto or false")
    padding_free = wanted and problem is None
    if t.packing:
        line = ("batches: best-fit packing into max_length rows, examples kept apart by position ids" if padding_free
                else "batches: wrapped packing into max_length rows (examples in a row attend to each other; "
                "best-fit packing that keeps them apart needs flash_attention_2)")
    elif padding_free:
        line = "batches: padding-free (each batch one row, position ids restart per example, no KV cache)"
    else:
        why = problem or ("train.padding_free: false" if t.padding_free is False else
                          "padding-free needs flash_attention_2 to be fast (on sdpa/eager a flattened row's "
                          "attention grows with the square of the batch's tokens)")
        line = f"batches: padded{', grouped by length' if t.group_by_length else ''} ({why})"
    # Resolved: padding_free True with packing means best-fit packing with examples kept apart (sft's config).
    train = t.model_copy(update={"padding_free": padding_free})
    return params.model_copy(update={"train": train}), line
