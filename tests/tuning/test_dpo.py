"""The DPO objective on the real tiny model: its reference is the SFT model it starts from, frozen.

Before the first optimizer step the policy's and the reference's log-probabilities of the chosen and the
rejected answers are equal (every margin 0) and equal the starting SFT model's own, loaded separately from
disk, not the base model's. Switching the reference to the base model (TRL's adapters-off fallback) is
caught by the check before anything trains.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunegate.data.demo import generate_demo_records
from tunegate.params import parse_params
from tunegate.tuning.objectives import dpo as dpo_module
from tunegate.tuning.training import sft_stage_params, train_model

REPO = Path(__file__).resolve().parents[2]


def _pairs(records):
    """Chosen: the record's answer; rejected: the answer's words reversed (a wrong answer of the same length)."""
    out = []
    for n, record in enumerate(records):
        answer = record["messages"][-1]["content"]
        wrong = " ".join(reversed(answer.split())) if len(answer.split()) > 1 else answer[::-1] + "!"
        out.append({"id": f"pairs-{n:06d}", "prompt": record["messages"][:-1],
                    "chosen": {"role": "assistant", "content": answer}, "rejected": {"role": "assistant", "content": wrong},
                    "source": {"file": "pairs.jsonl", "index": n, "format": "trl"}, "family": record["family"]})
    return out


def dpo_params(*, method: str = "lora", steps: int = 6, **preference_train):
    raw = yaml.safe_load((REPO / "params" / "demo.yaml").read_text())
    raw["train"].update({"objective": "dpo", "method": method, "max_steps": 12, "batch_size": 16, "logging_steps": 1,
                         "save_steps": None, "checkpoint_minutes": None})
    if method == "full":
        raw["train"]["learning_rate"] = 0.002
    raw["preference"] = {"start_from": "sft", "data": {"train": [{"path": "pairs.jsonl"}]},
                         "train": {"max_steps": steps, "batch_size": 8, "learning_rate": 0.001, **preference_train}}
    return parse_params(raw, "test")


@pytest.fixture(scope="module")
def sft_and_pairs(tmp_path_factory):
    train, evaluation = generate_demo_records(5, 24, 4, ["reverse_words", "last_word", "compare", "json_color"])
    out = {}
    for method in ("lora", "full"):
        work = tmp_path_factory.mktemp(f"sft-{method}")
        out[method] = train_model(sft_stage_params(dpo_params(method=method)), train, work).model_dir
    return out, _pairs(train[:48])


def _own_log_probs(model, tokenizer, params, pairs):
    """Summed log-probabilities of each pair's chosen and rejected answer under ``model``: a plain forward over
    the whole logits, independent of TRL's fused head."""
    import torch

    rows = dpo_module.tokenize_pairs(tokenizer, pairs, params.preference.train.max_length, params.preference.train.max_prompt_length)
    model.eval()
    chosen, rejected = [], []
    with torch.no_grad():
        for row in rows:
            for side, out in (("chosen_ids", chosen), ("rejected_ids", rejected)):
                ids = torch.tensor([row["prompt_ids"] + row[side]])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
                targets = ids[0, 1:]
                start = len(row["prompt_ids"]) - 1
                out.append(float(logp[start:].gather(1, targets[start:, None]).sum()))
    return torch.tensor(chosen), torch.tensor(rejected)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_reference_is_the_starting_sft_model(method, sft_and_pairs, tmp_path, monkeypatch):
    import torch

    from tunegate.tuning.modeling import load_base_model, load_saved_model, read_model_info

    sft_dirs, pairs = sft_and_pairs
    params = dpo_params(method=method)
    seen = {}
    original = dpo_module.check_reference

    def spy(trainer, n=8):
        seen["policy"] = dpo_module.pair_log_probs(trainer, n)
        seen["reference"] = dpo_module.pair_log_probs(trainer, n, reference=True)
        return original(trainer, n)

    monkeypatch.setattr(dpo_module, "check_reference", spy)
    steps = []
    result = train_model(params, pairs, tmp_path, start_from=sft_dirs[method], log_step=lambda s, v: steps.append((s, v)))
    # Before the first step: policy == reference (margins exactly 0 up to fp32 noise) ...
    assert torch.allclose(seen["policy"][0], seen["reference"][0], atol=1e-4)
    assert torch.allclose(seen["policy"][1], seen["reference"][1], atol=1e-4)
    assert result.checks["reference_check"]["max_abs_logp_difference"] <= 1e-4
    # ... and both equal the SFT model's own log-probs, loaded separately, not the base model's.
    sft_model, tokenizer = load_saved_model(sft_dirs[method])
    sft_chosen, sft_rejected = _own_log_probs(sft_model, tokenizer, params, pairs[:8])
    assert torch.allclose(seen["reference"][0], sft_chosen, atol=2e-3), (seen["reference"][0], sft_chosen)
    assert torch.allclose(seen["reference"][1], sft_rejected, atol=2e-3)
    base = load_base_model(read_model_info(sft_dirs[method]).base_model)
    base_chosen, _ = _own_log_probs(base, tokenizer, params, pairs[:8])
    assert (seen["reference"][0] - base_chosen).abs().max() > 0.5, "the SFT model scores unlike the base model"
    # TRL's own first-step figures: rewards 0, margins 0 (the policy has not moved yet).
    first = next(v for s, v in steps if "rewards/margins" in v)
    assert abs(first["rewards/margins"]) < 1e-4 and abs(first["rewards/chosen"]) < 1e-4
    # The saved model is the policy alone, in the SFT model's format.
    info = read_model_info(result.model_dir)
    assert info.method == method and info.base_model == read_model_info(sft_dirs[method]).base_model
    if method == "lora":
        assert not (result.model_dir / dpo_module.REFERENCE_ADAPTER).exists()
        load_saved_model(result.model_dir)


def test_a_reference_that_is_the_base_model_is_refused(sft_and_pairs, tmp_path, monkeypatch):
    """The fault: the reference computed with the adapter switched off (the base model), as when a trainer
    is given a fresh adapter over the SFT weights' base. The check refuses before any step."""
    sft_dirs, pairs = sft_and_pairs
    build = dpo_module.DPO.trainer

    def base_as_reference(self, parts):
        trainer = build(self, parts)
        trainer.model.delete_adapter(dpo_module.REFERENCE_ADAPTER)  # TRL then scores the reference adapters-off
        return trainer

    monkeypatch.setattr(dpo_module.DPO, "trainer", base_as_reference)
    with pytest.raises(dpo_module.ReferenceMismatch, match="does not score like the starting model"):
        train_model(dpo_params(), pairs, tmp_path, start_from=sft_dirs["lora"])
    assert not (tmp_path / "model").exists()


def test_dpo_moves_the_margin_towards_chosen(sft_and_pairs, tmp_path):
    sft_dirs, pairs = sft_and_pairs
    steps = []
    train_model(dpo_params(steps=12, learning_rate=0.003), pairs, tmp_path, start_from=sft_dirs["lora"],
                log_step=lambda s, v: steps.append((s, v)))
    margins = [v["rewards/margins"] for _, v in steps if "rewards/margins" in v]
    assert len(margins) >= 10 and margins[-1] > 0.05, margins


def test_a_killed_dpo_run_resumes_from_its_checkpoint_to_the_same_loss(sft_and_pairs, tmp_path):
    """A DPO attempt that died after checkpoint-4 continues there (the policy from the checkpoint, the reference
    again the starting SFT model) and ends where an uninterrupted run ends."""
    import shutil

    sft_dirs, pairs = sft_and_pairs
    params = dpo_params(steps=6)
    params = params.model_copy(update={"train": params.train.model_copy(update={"save_steps": 2})})
    steps_first: list = []
    first = train_model(params, pairs, tmp_path / "first", start_from=sft_dirs["lora"], log_step=lambda s, v: steps_first.append(s))
    shutil.copytree(tmp_path / "first" / "checkpoints" / "checkpoint-4", tmp_path / "again" / "checkpoints" / "checkpoint-4")
    steps_again: list = []
    again = train_model(params, pairs, tmp_path / "again", start_from=sft_dirs["lora"], log_step=lambda s, v: steps_again.append((s, v)))
    assert again.resumed_from and again.resumed_from.endswith("checkpoint-4")
    assert "reference_check" not in again.checks  # checked once, before the first step of the fresh start
    assert min(s for s, v in steps_again if "loss" in v) == 5 and again.global_step == first.global_step == 6
    assert abs(again.final_loss - first.final_loss) <= 1e-5, (again.final_loss, first.final_loss)
