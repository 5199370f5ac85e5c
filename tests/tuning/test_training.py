"""Real training steps on the real tiny model (a few seconds each)."""

from pathlib import Path

import pytest

from tunegate.data.demo import generate_demo_records
from tunegate.evaluation.suites import evaluate_suites
from tunegate.params import EvalParams, ParamsError, load_params
from tunegate.tuning.modeling import load_saved_model, read_model_info
from tunegate.tuning.training import TrainingSetupError, train_model

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


@pytest.mark.parametrize(
    "method, extra",
    [("lora", []), ("dora", []), ("full", ["train.learning_rate=0.002"])],
)
def test_each_cpu_method_learns(method, extra, tmp_path, small_data, base_model_path, capfd):
    train, evaluation = small_data
    steps, lines = [], []
    result = train_model(_params(f"train.method={method}", *extra), train, tmp_path, log_step=lambda s, v: steps.append((s, v)),
                         log_line=lines.append)
    # Issue #15: the trainer's log dicts stay off the terminal; tunegate's own lines say the same, about every tenth.
    printed = capfd.readouterr()
    assert "{'loss'" not in printed.out + printed.err and "'train_runtime'" not in printed.out + printed.err
    assert lines[0].startswith("batches: each batch's examples packed")  # said once at start
    assert lines[1].startswith("step 1/12: loss ") and lines[-1].startswith("step 12/12: loss ") and "tokens/s" in lines[-1]
    losses = [v["loss"] for _, v in steps if "loss" in v]
    assert result.global_step == 12 and len(losses) >= 10
    assert losses[-1] < losses[0] * 0.7, losses
    assert any("grad_norm" in v and "learning_rate" in v for _, v in steps)
    assert result.tokens_per_second > 0 and result.num_tokens > 0
    assert result.trainer_args["per_device_train_batch_size"] == 16
    info = read_model_info(result.model_dir)
    assert info.method == method
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    assert (result.model_dir / weights).is_file()
    assert (result.model_dir / "resolved_params.yaml").is_file()
    if method == "lora":
        assert result.trainable_params < result.total_params
    model, tokenizer = load_saved_model(result.model_dir)
    assert tokenizer.chat_template, "the template is saved with the model"
    scored = evaluate_suites(model, tokenizer, evaluation, EvalParams(max_new_tokens=16, batch_size=8, ifeval={"enabled": False},
                                                                      safety={"enabled": False}))
    assert scored.summary()["n"] == len(evaluation) and len(scored.scores["response_loss"]) == len(evaluation)


def test_qlora_without_cuda_fails_before_loading(tmp_path, small_data, monkeypatch):
    import transformers

    def must_not_load(*args, **kwargs):  # pragma: no cover - reached only if the check is missing
        raise AssertionError("a model was loaded before the CUDA check")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", must_not_load)
    with pytest.raises(TrainingSetupError, match="qlora needs a CUDA GPU"):
        train_model(_params("train.method=qlora"), small_data[0], tmp_path)


def test_bf16_on_cpu_is_refused_at_load():
    with pytest.raises(ParamsError, match="needs device: auto"):
        _params("train.precision=bf16")


def test_same_params_same_data_same_loss(tmp_path, small_data):
    train, _ = small_data
    a = train_model(_params(), train, tmp_path / "a")
    b = train_model(_params(), train, tmp_path / "b")
    assert a.final_loss == b.final_loss
    assert [h.get("loss") for h in a.log_history] == [h.get("loss") for h in b.log_history]


def test_merge_adapter_on_request(tmp_path, small_data):
    result = train_model(_params("train.max_steps=2", "train.merge_adapter=true"), small_data[0], tmp_path)
    assert result.merged_dir and (result.merged_dir / "model.safetensors").is_file()
    assert read_model_info(result.merged_dir).method == "full"


def test_gradient_checkpointing_is_what_params_say(tmp_path):
    """TRL's SFTConfig defaults to activation checkpointing on (every forward recomputed in the backward);
    tunegate's ``train.gradient_checkpointing: false`` must reach the trainer as false."""
    from tunegate.tuning.training import sft_config

    demo = Path(__file__).resolve().parents[2] / "params" / "demo.yaml"
    assert sft_config(load_params(demo), tmp_path).activation_checkpointing is False
    on = load_params(demo, ["train.gradient_checkpointing=true"])
    assert sft_config(on, tmp_path).activation_checkpointing is True


def test_liger_only_where_it_can_run(monkeypatch):
    """train.liger: auto is off on CPU (and without the package); true without CUDA is refused up front."""
    from tunegate.tuning import hardware

    demo = Path(__file__).resolve().parents[2] / "params" / "demo.yaml"
    assert hardware.liger_enabled(load_params(demo)) is False  # device: cpu
    gpu = load_params(demo, ["train.device=auto"])
    monkeypatch.setattr(hardware, "_has_module", lambda name: False)
    assert hardware.liger_enabled(gpu) is False  # no liger-kernel package
    monkeypatch.setattr(hardware, "_has_module", lambda name: True)
    import torch

    assert hardware.liger_enabled(gpu) is torch.cuda.is_available()
    refused = hardware.hardware_problems(load_params(demo, ["train.liger=true"]))
    assert refused and refused[0].startswith("train.liger: true needs a CUDA GPU")
