"""Padding-free training is exact where tunegate uses it: for stories260K (Llama), a tiny GPT-2 and a tiny
Qwen2 (ChatML, built from ../shared/tokenizers), the training forward of a flattened batch (TRL's collator)
and of packed rows (tunegate's, the CPU default), through the SFT trainer's own ``compute_loss``, gives each
example the logits and the loss it gets run alone, and the batch the loss of the same batch padded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chat_records import pick
from tunegate.params import load_params

REPO = Path(__file__).resolve().parents[2]
ATOL = 1e-4
RECORDS = ["en", "zh", "ar", "emoji", "multi-turn", "answer-repeats-prompt"]


def _params(model_path: Path, template: str | None, *extra: str):
    sets = [f"model.base_model={model_path}", "train.max_length=240", *extra]
    if template:
        sets.append(f"model.chat_template={template}")
    return load_params(REPO / "params" / "demo.yaml", sets)


@pytest.fixture(params=["stories260K", "tiny_gpt2", "tiny_chatml"])
def family(request, base_model_path):
    if request.param == "stories260K":
        return base_model_path, "alpaca"
    path = request.getfixturevalue(request.param)
    return path, ("alpaca" if request.param == "tiny_gpt2" else None)


def _trainer(params, tmp_path):
    from tunegate.data.tokenize import tokenize_records
    from tunegate.paths import model_source
    from tunegate.tuning import objectives
    from tunegate.tuning.modeling import load_tokenizer
    from tunegate.tuning.packing import resolve_batching
    from tunegate.tuning.training import load_model_for_training, peft_config, shared_arguments

    tokenizer = load_tokenizer(model_source(params.model.base_model), params.model.chat_template)
    model = load_model_for_training(params)
    resolved, batching = resolve_batching(params, model)
    objective = objectives.get("sft")
    examples = tokenize_records(tokenizer, pick(*RECORDS), params.train.max_length)
    dataset = objective.dataset(resolved, tokenizer, pick(*RECORDS))
    trainer = objective.trainer(objectives.TrainerParts(
        params=resolved, model=model, tokenizer=tokenizer,
        args=objective.config(resolved, shared_arguments(resolved, tmp_path)),
        train_dataset=dataset, peft_config=peft_config(resolved), callbacks=[], batching=batching.layout,
    ))
    return trainer, resolved, batching, examples


def _per_example(logits: torch.Tensor, labels: torch.Tensor) -> float:
    loss = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")
    return float(loss) / max(int((labels[1:] != -100).sum()), 1)


@pytest.mark.parametrize("layout", ["flattened", "rows"])
def test_packed_batch_equals_each_example_alone(family, layout, tmp_path):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tunegate.tuning.packing import best_fit_rows

    model_path, template = family
    extra = ["train.padding_free=true"] if layout == "flattened" else []  # rows: the default (auto) on sdpa
    trainer, resolved, batching, examples = _trainer(_params(model_path, template, *extra), tmp_path)
    assert batching.layout == layout, batching.line
    assert resolved.train.padding_free is (layout == "flattened")
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    batch = trainer.data_collator(rows)
    assert "attention_mask" not in batch, "no mask: transformers builds the block mask from the position ids"
    lengths = [len(e.input_ids) for e in examples]
    if layout == "flattened":
        placement = [[list(range(len(examples)))], 1]
        assert batch["input_ids"].shape[0] == 1
    else:
        placement = [best_fit_rows(lengths, max(lengths)), None]
        assert batch["input_ids"].shape == (len(placement[0]), max(sum(lengths[i] for i in r) for r in placement[0]))
        assert len(placement[0]) < len(examples), "packing fits some examples together"
        assert int(batch["num_real_tokens"].sum()) == sum(lengths)
    model = trainer.model.eval()
    with torch.no_grad():
        loss, packed = trainer.compute_loss(model, dict(batch), return_outputs=True)
        for r, members in enumerate(placement[0]):
            start = 0
            for i in members:
                example, n = examples[i], lengths[i]
                alone = model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0]
                together = packed.logits[r, start : start + n]
                assert torch.allclose(together, alone, atol=ATOL), float((together - alone).abs().max())
                labels = torch.tensor(example.labels)
                assert _per_example(together, labels) == pytest.approx(_per_example(alone, labels), abs=ATOL)
                start += n
        # The batch's loss is the padded batch's: same examples, same tokens counted.
        padded = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
        padded_loss = trainer.compute_loss(model, dict(padded))
    assert float(loss) == pytest.approx(float(padded_loss), abs=ATOL)


def test_the_probe_sees_the_cache_contaminate_and_auto_pads_without_flash_attention(base_model_path, tmp_path):
    """With the KV cache on, transformers builds no block mask: the probe's gap is large, so a forward
    that left ``use_cache`` on would fail the test above. ``auto`` on sdpa pads (a flattened row's attention
    grows with the square of the batch's tokens there), saying so; ``false`` pads."""
    from tunegate.tuning.packing import TOLERANCE, flattened_logits_gap, resolve_batching
    from tunegate.tuning.training import load_model_for_training

    params = _params(base_model_path, "alpaca")
    model = load_model_for_training(params)
    assert flattened_logits_gap(model, use_cache=True) > 100 * TOLERANCE["fp32"]
    assert flattened_logits_gap(model) < TOLERANCE["fp32"]
    auto, batching = resolve_batching(_params(base_model_path, "alpaca"), model)
    assert auto.train.padding_free is False and batching.layout == "rows"
    assert batching.line.startswith("batches: each batch's examples packed best-fit into rows")
    padded, batching = resolve_batching(_params(base_model_path, "alpaca", "train.padding_free=false"), model)
    assert padded.train.padding_free is False and batching.layout == "padded"
    assert "train.padding_free: false" in batching.line


def test_padding_free_true_on_a_model_that_mixes_examples_is_refused(base_model_path, monkeypatch):
    from tunegate.tuning import packing
    from tunegate.tuning.training import load_model_for_training

    params = _params(base_model_path, "alpaca", "train.padding_free=true")
    model = load_model_for_training(params)
    # A fault injected: a family whose attention ignores restarting position ids.
    monkeypatch.setattr(packing, "flattened_logits_gap", lambda model, **kw: 3.0)
    with pytest.raises(ValueError, match="padding_free: true.*flattened examples see each other"):
        packing.resolve_batching(params, model)
    auto, batching = packing.resolve_batching(_params(base_model_path, "alpaca"), model)  # rows fail too: padded
    assert batching.layout == "padded" and "examples see each other" in batching.line
    auto, batching = packing.resolve_batching(_params(base_model_path, "alpaca", "train.packing=true"), model)
    assert auto.train.padding_free is False and batching.line.startswith("batches: wrapped packing")


def test_best_fit_rows():
    from tunegate.tuning.packing import best_fit_rows

    assert best_fit_rows([5, 3, 8, 2, 6], 8) == [[2], [4, 3], [0, 1]]
    assert best_fit_rows([4, 4, 4], 4) == [[0], [1], [2]]
    rows = best_fit_rows([71, 40, 110, 30, 65, 44, 9], 110)
    assert sorted(i for r in rows for i in r) == list(range(7)) and len(rows) == 4


def test_even_batches_go_padded_with_the_same_labels():
    """Examples too even in length to share a row: the collator pads (with the mask) instead of packing."""
    from tunegate.tuning.packing import PackedRowsCollator

    collate = PackedRowsCollator(pad_token_id=0)
    even = collate([{"input_ids": [5, 6, 7, 8], "labels": [-100, 6, 7, 8]}, {"input_ids": [9, 10, 11], "labels": [-100, -100, 11]}])
    assert even["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]] and "position_ids" not in even
    assert even["labels"].tolist() == [[-100, 6, 7, 8], [-100, -100, 11, -100]]
    mixed = collate([{"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8]}, {"input_ids": [9, 10], "labels": [9, 10]},
                     {"input_ids": [12, 13], "labels": [12, 13]}])
    assert mixed["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 12, 13]] and "attention_mask" not in mixed
    assert mixed["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    assert mixed["labels"].tolist() == [[-100, 6, 7, 8], [-100, 10, -100, 13]]  # a first token is never a target
    assert int(mixed["num_real_tokens"].sum()) == 8
