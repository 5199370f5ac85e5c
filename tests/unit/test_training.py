"""Real training steps on the real tiny model (a few seconds each)."""

from pathlib import Path

import pytest

from tunegate.demo_data import generate_demo_records
from tunegate.evaluation import evaluate_model
from tunegate.modeling import load_saved_model, read_model_info
from tunegate.params import load_params
from tunegate.training import to_prompt_completion, train_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_data():
    train, evaluation = generate_demo_records(5, 24, 4, ["story_start", "refusal", "json_color", "compare"])
    return train, evaluation


def _params(*extra):
    return load_params(
        REPO / "params" / "demo.yaml",
        ["train.max_steps=12", "train.batch_size=16", "train.logging_steps=1", *extra],
    )


def test_lora_loss_falls_and_model_reloads(tmp_path, small_data, base_model_path):
    train, evaluation = small_data
    steps = []
    result = train_model(_params(), train, tmp_path, log_step=lambda s, v: steps.append((s, v)))
    losses = [v["loss"] for _, v in steps if "loss" in v]
    assert result.global_step == 12 and len(losses) >= 10
    assert losses[-1] < losses[0] * 0.7, losses
    assert result.trainable_params < result.total_params
    assert read_model_info(result.model_dir).method == "lora"
    assert (result.model_dir / "adapter_model.safetensors").is_file()
    assert (result.model_dir / "resolved_params.yaml").is_file()
    model, tokenizer = load_saved_model(result.model_dir)
    assert tokenizer.chat_template, "the template is saved with the model"
    metrics = evaluate_model(model, tokenizer, evaluation, max_new_tokens=16, batch_size=8)
    assert metrics.n == len(evaluation)


def test_same_params_same_data_same_loss(tmp_path, small_data):
    train, _ = small_data
    a = train_model(_params(), train, tmp_path / "a")
    b = train_model(_params(), train, tmp_path / "b")
    assert a.final_loss == b.final_loss
    assert [h.get("loss") for h in a.log_history] == [h.get("loss") for h in b.log_history]


def test_last_turn_must_be_assistant():
    with pytest.raises(ValueError, match="assistant"):
        to_prompt_completion({"id": "x", "messages": [{"role": "user", "content": "hi"}]})
