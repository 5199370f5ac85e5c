"""How training batches are laid out, exactly: one probe of the loaded model, not a list of families.

Three layouts keep each example's loss what it is alone:

- ``padded``: one row per example, padded to the batch's longest (transformers' and TRL's default);
- ``rows``: the batch's own examples packed best-fit into rows as long as its longest example, position
  ids restarting at 0 per example and no attention mask (:class:`PackedRowsCollator`). The same examples
  make each step as padded, so the optimisation is the same; only the padding between them goes (the
  demo's shuffled batches of 32 are 28% padding). A row is no longer than the batch's longest example, so
  attention per row costs what it costs padded, on ``sdpa`` and ``eager`` too;
- ``flattened``: the whole batch one row (TRL's collator with ``padding_free``), for flash attention's
  varlen kernels. On ``sdpa``/``eager`` that row's attention grows with the square of the batch's tokens
  (measured: the demo trained at ~780 tokens/s flattened against ~8,000 padded), so only
  ``flash_attention_2`` gets it by default.

transformers builds the block-diagonal causal mask from restarting position ids only when there is no
attention mask and no KV cache; TRL's SFTTrainer passes ``use_cache=False`` to every training forward.
Whether a model's attention honours the restarting positions is a property of its family and attention
implementation (measured here: Llama/stories260K, GPT-2 and Qwen2 on ``sdpa`` and ``eager`` within 1e-5;
with the cache on, the second example's logits are off by up to 10.8), so :func:`padding_free_problem`
asks the model itself: short random sequences laid out packed against one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# fp32 logits of a packed batch equal the separate runs to ~1e-5; half precision to ~1e-2.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 5e-2}
FLATTENED = ((7, 11, 5),)  # the probe's layouts: one row of three examples,
ROWS = ((7, 5), (11,))  # two rows, the second padded at its end as PackedRowsCollator pads

Layout = Literal["padded", "rows", "flattened", "packed"]
PACK_MIN_SAVING = 0.9  # packed rows only where they take at most 90% of the padded batch's rows


@dataclass(frozen=True)
class Batching:
    """How this run's training batches are built, and the line that says so once at start."""

    layout: Layout
    line: str


def flattened_logits_gap(model, rows: tuple[tuple[int, ...], ...] = FLATTENED, seed: int = 0,
                         use_cache: bool = False) -> float:
    """Largest absolute difference between the logits of random sequences of the given lengths laid out
    packed (``rows`` of examples, position ids restarting per example, short rows padded at the end with
    position id 0, no mask) and run one at a time."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 0) or 256)
    device = next(model.parameters()).device
    seqs = [[torch.randint(0, vocab, (n,), generator=generator).to(device) for n in row] for row in rows]
    width = max(sum(row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    positions = torch.zeros_like(ids)
    for r, row in enumerate(seqs):
        start = 0
        for s in row:
            ids[r, start : start + len(s)] = s
            positions[r, start : start + len(s)] = torch.arange(len(s), device=device)
            start += len(s)
    was_training = model.training
    model.eval()
    gap = 0.0
    try:
        with torch.no_grad():
            together = model(input_ids=ids, position_ids=positions, use_cache=use_cache).logits.float()
            for r, row in enumerate(seqs):
                start = 0
                for s in row:
                    alone = model(input_ids=s[None], use_cache=False).logits[0].float()
                    gap = max(gap, float((together[r, start : start + len(s)] - alone).abs().max()))
                    start += len(s)
    finally:
        model.train(was_training)
    return gap


def padding_free_problem(model, precision: str = "fp32", rows: tuple[tuple[int, ...], ...] = FLATTENED) -> str | None:
    """None when this model's attention keeps packed examples apart in the ``rows`` layout; else why not
    (said once at start)."""
    try:
        gap = flattened_logits_gap(model, rows=rows)
    except Exception as error:  # a family whose forward refuses position ids without a mask
        return f"{type(model).__name__} cannot run a packed batch ({type(error).__name__}: {error})"
    if gap > TOLERANCE.get(precision, 1e-4):
        attention = getattr(model.config, "_attn_implementation", None) or "default"
        return (f"{type(model).__name__} on {attention} attention lets flattened examples see each other "
                f"(logits off by {gap:.3g} against one at a time)")
    return None


def resolve_batching(params: Any, model) -> tuple[Any, Batching]:
    """``params`` with ``train.padding_free`` decided for this model (True: the flattened layout), and the
    :class:`Batching` this run uses.

    ``auto``: flattened with ``flash_attention_2``, else rows, each where the model passes the probe for
    that layout, else padded; ``true`` asks for flattened on any attention (exact, slower on sdpa/eager) and
    is an error on a model that fails the probe; ``false`` pads. ``packing`` packs the dataset into
    max_length rows: best-fit with the examples kept apart with flash attention, wrapped otherwise."""
    t = params.train
    flash = (t.attn_implementation or getattr(model.config, "_attn_implementation", None)) == "flash_attention_2"
    wanted = t.padding_free is True or (t.padding_free == "auto" and flash)
    problem = padding_free_problem(model, t.precision) if wanted else None
    if t.padding_free is True and problem:
        raise ValueError(f"train.padding_free: true, but {problem}; set train.padding_free: auto or false")
    flattened = wanted and problem is None
    if t.packing:  # flattened here means best-fit packing (sft's config)
        batching = Batching("packed", "batches: best-fit packing into max_length rows, examples kept apart by "
                            "position ids" if flattened else "batches: wrapped packing into max_length rows "
                            "(examples in a row attend to each other; best-fit packing that keeps them apart needs "
                            "flash_attention_2)")
    elif flattened:
        batching = Batching("flattened", "batches: padding-free (each batch one row, position ids restart per "
                            "example, no KV cache)")
    elif t.padding_free == "auto" and (problem := problem or padding_free_problem(model, t.precision, rows=ROWS)) is None:
        batching = Batching("rows", "batches: each batch's examples packed best-fit into rows as long as its "
                            "longest, position ids restarting per example (no padding between them, no KV cache)")
    else:
        why = problem or "train.padding_free: false"
        batching = Batching("padded", f"batches: padded{', grouped by length' if t.group_by_length else ''} ({why})")
    train = t.model_copy(update={"padding_free": flattened})
    return params.model_copy(update={"train": train}), batching


def best_fit_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``capacity`` tokens: best-fit decreasing (each
    example, longest first, goes to the fullest row it still fits), deterministic for the same lengths."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [r for r in range(len(rows)) if room[r] >= lengths[i]]
        if fits:
            best = min(fits, key=lambda r: (room[r], r))
            rows[best].append(i)
            room[best] -= lengths[i]
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


@dataclass
class PackedRowsCollator:
    """The ``rows`` layout: a batch's examples (``input_ids`` and ``labels``, -100 where no loss) packed
    best-fit into rows as long as its longest example.

    Each example's positions restart at 0 and its first label is -100 (never a target alone either, and in a
    row it would be the previous example's last prediction); the end of a short row is padding, each pad
    token at position 0 (a block of its own) with label -100. No attention mask: transformers then builds
    the block-diagonal causal mask from the position ids. ``num_real_tokens`` is what TRL would count for
    padded batches (it counts a row's width when there is no mask); :class:`tunegate.tuning.objectives.sft`
    takes it out before the forward.

    A batch whose examples are too even in length to share rows (packing would keep more than
    ``PACK_MIN_SAVING`` of the rows) goes padded, with its attention mask: the same loss, and on CPU the
    packed mask costs more than the few pad tokens it saves (measured: 6% slower on the demo's data)."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids = [list(e["input_ids"]) for e in examples]
        labels = [list(e.get("labels", e["input_ids"])) for e in examples]
        lengths = [len(x) for x in ids]
        rows = best_fit_rows(lengths, max(lengths))
        packed = len(rows) <= PACK_MIN_SAVING * len(lengths)
        if not packed:  # one row per example, right-padded, with the attention mask (what TRL's collator builds)
            rows = [[i] for i in range(len(lengths))]
        width = max(sum(lengths[i] for i in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        row_labels = torch.full((len(rows), width), -100, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                n = lengths[i]
                input_ids[r, start : start + n] = torch.tensor(ids[i])
                row_labels[r, start + 1 : start + n] = torch.tensor(labels[i][1:])
                position_ids[r, start : start + n] = torch.arange(n)
                mask[r, start : start + n] = 1
                start += n
        batch = {"input_ids": input_ids, "labels": row_labels, "num_real_tokens": torch.tensor([sum(lengths)])}
        batch.update({"position_ids": position_ids} if packed else {"attention_mask": mask})
        return batch
