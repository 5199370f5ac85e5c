"""The training-objective seam: two objectives through one training loop, on the real tiny model.

The second objective lives here: plain causal-LM training on the whole rendered conversation (prompt
tokens too) with transformers' own Trainer. Registering it is one line; resume, checkpoints, the
callbacks, the quiet progress, stop tokens, saving and the TrainResult come from the shared code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunegate.data.demo import generate_demo_records
from tunegate.params import ParamsError, load_params
from tunegate.tuning import objectives
from tunegate.tuning.modeling import read_model_info
from tunegate.tuning.training import train_model

REPO = Path(__file__).resolve().parents[2]


class CausalLM:
    """Next-token loss on every token of the rendered conversation, through ``transformers.Trainer``."""

    name = "causal_lm_test"

    def dataset(self, params, tokenizer, records):
        from datasets import Dataset

        from tunegate.data.tokenize import tokenize_records

        examples = tokenize_records(tokenizer, records, params.train.max_length)
        return Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.input_ids for e in examples]})

    def config(self, params, shared):
        from transformers import TrainingArguments

        return TrainingArguments(**shared)

    def trainer(self, parts):
        from transformers import Trainer

        model = parts.model
        if parts.peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, parts.peft_config)
        return Trainer(model=model, args=parts.args, train_dataset=parts.train_dataset, processing_class=parts.tokenizer,
                       data_collator=_pad(parts.tokenizer.pad_token_id), callbacks=parts.callbacks)


def _pad(pad_id: int):
    import torch

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = [r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows]
        labels = [r["labels"] + [-100] * (width - len(r["labels"])) for r in rows]
        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}

    return collate


@pytest.fixture
def causal_lm():
    objective = objectives.register(CausalLM())  # the one line that makes `train.objective: causal_lm_test` valid
    yield objective
    objectives.unregister(objective.name)


@pytest.fixture(scope="module")
def records():
    train, _ = generate_demo_records(3, 12, 2, ["story_start", "refusal", "json_color"])
    return train


def _params(objective: str):
    return load_params(REPO / "params" / "demo.yaml", [
        f"train.objective={objective}", "train.max_steps=3", "train.save_steps=2", "train.batch_size=8",
        "train.logging_steps=1", "train.checkpoint_minutes=null",
    ])


def _train(objective: str, records, work_dir: Path):
    steps, checkpoints, lines = [], [], []
    result = train_model(_params(objective), records, work_dir, log_step=lambda s, v: steps.append((s, v)),
                         log_checkpoint=checkpoints.append, log_line=lines.append)
    return result, steps, checkpoints, lines


@pytest.mark.parametrize("objective", ["sft", "causal_lm_test"])
def test_each_objective_gets_the_shared_training_loop(objective, causal_lm, records, tmp_path, base_model_path, capfd):
    result, steps, checkpoints, lines = _train(objective, records, tmp_path / "first")
    # The callbacks: every step's loss to log_step, each checkpoint to log_checkpoint, tunegate's own lines.
    assert [s for s, v in steps if "loss" in v] == [1, 2, 3]
    assert any("grad_norm" in v and "learning_rate" in v for _, v in steps)
    assert [p.name for p in checkpoints] == ["checkpoint-2", "checkpoint-3"]  # by save_steps, and at the end
    assert all((p / "trainer_state.json").is_file() for p in checkpoints)
    assert lines[0].startswith("batches: ")  # said once at start: how batches are built
    assert lines[1].startswith("step 1/3: loss ") and lines[-1].startswith("step 3/3: loss ")
    printed = capfd.readouterr()  # the quiet progress: no trainer log dicts on the terminal
    assert "{'loss'" not in printed.out + printed.err and "'train_runtime'" not in printed.out + printed.err
    # The TrainResult and the figures a run logs.
    assert result.global_step == 3 and result.final_loss == [v["loss"] for _, v in steps if "loss" in v][-1] > 0
    assert set(result.metrics()) == {"train_final_loss", "train_runtime_s", "train_tokens", "train_tokens_per_second_overall",
                                     "trainable_params", "total_params"}
    assert 0 < result.trainable_params < result.total_params, "the LoRA adapter (train.method) wraps the model"
    assert result.trainer_args["per_device_train_batch_size"] == 8 and result.trainer_args["seed"] == 42
    assert ("packing" in result.trainer_args) == (objective == "sft"), "the objective's own config class (SFTConfig)"
    # Saved with its model info, params and stop tokens.
    info = read_model_info(result.model_dir)
    assert info.method == "lora" and info.stop_token_ids
    assert (result.model_dir / "adapter_model.safetensors").is_file()
    assert "objective: " + objective in (result.model_dir / "resolved_params.yaml").read_text()
    assert json.loads((result.model_dir / "generation_config.json").read_text())["eos_token_id"]

    # Resume: a run that died after checkpoint-2 continues there, runs only step 3 and ends where the first did.
    shutil.copytree(tmp_path / "first" / "checkpoints" / "checkpoint-2", tmp_path / "again" / "checkpoints" / "checkpoint-2")
    resumed, steps_again, _, _ = _train(objective, records, tmp_path / "again")
    assert resumed.resumed_from and resumed.resumed_from.endswith("checkpoint-2")
    assert [s for s, v in steps_again if "loss" in v] == [3]
    assert resumed.global_step == 3 and abs(resumed.final_loss - result.final_loss) <= 1e-6


def test_the_objective_shapes_the_data(causal_lm, records, base_model_path):
    """What differs is the objective's: SFT's labels leave the prompt out of the loss, the test objective's do not."""
    from tunegate.tuning.modeling import load_tokenizer

    params = _params("causal_lm_test")
    tokenizer = load_tokenizer(base_model_path, params.model.chat_template)
    sft, plain = (objectives.get(name).dataset(params, tokenizer, records[:4]) for name in ("sft", "causal_lm_test"))
    assert sft["input_ids"] == plain["input_ids"] and plain["labels"] == plain["input_ids"]
    assert all(-100 in labels for labels in sft["labels"])


def test_train_objective_is_checked_against_the_registry(causal_lm):
    assert _params("causal_lm_test").train.objective == "causal_lm_test"
    assert load_params(REPO / "params" / "demo.yaml").train.objective == "sft"  # the default: params files need no key
    with pytest.raises(ParamsError, match=r"train.objective 'ppo' is not a training objective; allowed: sft, dpo, causal_lm_test"):
        _params("ppo")
    objectives.unregister("causal_lm_test")
    with pytest.raises(ParamsError, match=r"allowed: sft, dpo \("):
        _params("causal_lm_test")
    with pytest.raises(objectives.UnknownObjective, match="allowed: sft, dpo"):
        objectives.get("causal_lm_test")


def test_a_name_is_registered_once(causal_lm):
    with pytest.raises(ValueError, match="already registered"):
        objectives.register(CausalLM())
