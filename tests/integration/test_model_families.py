"""The real `retrain` flow on model families other than stories260K, and stop tokens that work.

Tiny random models built by ``tests/model_families.py`` (session fixtures ``tiny_chatml`` and
``tiny_gpt2``) go through the whole flow: their own chat template (ChatML with tools) or the
built-in default (GPT-2 has none), masks, LoRA on Linear and on GPT-2's Conv1D layers, DoRA,
full fine-tuning, saving, MLflow logging, registration and loading back through MLflow. A tiny
random model learns nothing in a few steps, so the gate is set to let it register: what is
checked is that every code path runs and records what it used.

The last part trains the ChatML model for real, for a few seconds, to answer "ok" and end its
turn with ``<|im_end|>``, which is not its tokenizer's EOS (``<|endoftext|>``): evaluation and the
served MLflow model must stop there; generation stopping on EOS alone runs past it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunegate.adapters import mlflow as tracking

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
INSTRUCTION = REPO.parent / "shared" / "data" / "instruction"
IM_END, ENDOFTEXT = "<|im_end|>", "<|endoftext|>"

CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Delhi", "Tokyo", "Quito", "Perth", "Seoul", "Rome", "Dakar", "Bern"]
WEATHER_TOOLS = json.dumps([{
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}])


def weather_tool_records() -> list[dict]:
    """Short ShareGPT tool-calling conversations in glaive's shape (tools as a JSON string, a
    function_call turn, an observation, the answer), short enough for the 256-token context."""
    records = []
    for i, city in enumerate(CITIES):
        for j, (ask, sky) in enumerate([("Weather in {}?", "sunny"), ("Is it raining in {}?", "rainy")]):
            records.append({
                "conversations": [
                    {"from": "human", "value": ask.format(city)},
                    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": city}})},
                    {"from": "observation", "value": json.dumps({"sky": sky, "c": 10 + i + j})},
                    {"from": "gpt", "value": f"{sky.capitalize()}, {10 + i + j} C."},
                ],
                "tools": WEATHER_TOOLS,
            })
    return records


def write_params(path: Path, *, name: str, base_model: Path, train: list[dict]) -> Path:
    """A params file (params/demo.yaml's schema) for a short flow run that lets a tiny model register.

    Validation as in params/shared_mix.yaml (the same shared files): over-long records (max_length's default),
    the long tool conversations past 8x the limit and exact duplicates are dropped, the example phone numbers
    and e-mails of public data only warn.
    """
    params = {
        "project": {"name": f"tunegate-mf-{name}", "seed": 42},
        "model": {"base_model": str(base_model), "registered_name": f"tunegate-mf-{name}", "chat_template": None},
        "data": {"train": train, "eval_fraction": 0.1, "dvc_stage": None},
        "validation": {
            "min_records": 20,
            "max_length": 256,  # both models' context
            "rules": {"response_truncated": "drop", "runaway_length": "drop", "duplicates": "drop", "pii": "warning"},
        },
        "train": {
            "method": "lora", "epochs": 1, "max_steps": 4, "learning_rate": 5e-3, "batch_size": 4,
            "max_length": 256, "logging_steps": 2, "lora_r": 8, "lora_alpha": 16,
        },
        "eval": {
            "max_new_tokens": 8, "batch_size": 16, "bootstrap_resamples": 100,
            "ifeval": {"max_prompts": 3, "max_new_tokens": 8},
            "safety": {"max_prompts": 3, "demo_harmful_family": None},
        },
        "gate": {  # a random tiny model scores 0 everywhere: register whatever comes out
            "min_improvement": -1.0, "min_improvement_over_base": None, "max_family_regression": 1.0, "rules": [],
            "hard_rules": {"refusal_may_not_drop": False, "max_over_refusal_increase": 1.0},
        },
    }
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def run_flow(params_file: Path, overrides: list[str] | None = None) -> dict:
    from flows.retrain import retrain

    return retrain(params_file=str(params_file), overrides=overrides or [])


def model_info(summary: dict) -> dict:
    return json.loads((Path(summary["train"]["model_dir"]) / "tunegate_model.json").read_text())


def load_registered(summary: dict):
    import mlflow

    return mlflow.transformers.load_model(f"models:/{summary['model_name']}/{summary['registered_version']}")


def special_ids(summary: dict) -> dict[str, int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(summary["train"]["model_dir"])
    return dict(zip((IM_END, ENDOFTEXT), tokenizer.convert_tokens_to_ids([IM_END, ENDOFTEXT])))


def user_prompt(tokenizer, text: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)


def assert_registered(summary: dict) -> None:
    assert summary["gate"]["passed"] is True, summary["gate"]["reasons"]
    assert summary["registered_version"], summary["gate"]["reasons"]
    assert tracking.get_run(summary["run_id"]).info.status == "FINISHED"
    candidate = tracking.alias_version(summary["model_name"], "candidate")
    assert candidate is not None and candidate.version == summary["registered_version"]


# --- ChatML (Qwen2) with its own tool-calling template, LoRA ------------------------------------


@pytest.fixture(scope="module")
def chatml_run(prefect_harness, tiny_chatml, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chatml-params")
    weather = tmp / "weather_toolcall.json"
    weather.write_text(json.dumps(weather_tool_records()), encoding="utf-8")
    params = write_params(
        tmp / "chatml.yaml", name="chatml", base_model=tiny_chatml,
        # Glaive's tool conversations from ../shared: with Qwen's template (default system prompt,
        # tool preamble, schemas) the median one is ~520 tokens, so at 256 only the short ones
        # without a call survive the drop rules; the weather file adds calls that fit (~243 tokens).
        train=[
            {"path": str(INSTRUCTION / "glaive_toolcall_en_demo.json"), "name": "glaive_toolcall"},
            {"path": str(weather), "name": "weather_toolcall"},
            {"path": str(INSTRUCTION / "alpaca_en_demo.json"), "name": "alpaca", "max_records": 60},
        ],
    )
    return run_flow(params)


def test_chatml_lora_flow_registers(chatml_run):
    assert_registered(chatml_run)
    assert chatml_run["train"]["global_step"] == 4


def test_chatml_records_its_own_template(chatml_run, tiny_chatml):
    from tunegate.data.templates import template_id
    from tunegate.tuning.modeling import load_tokenizer

    info = model_info(chatml_run)
    own = template_id(load_tokenizer(tiny_chatml, None).chat_template)
    assert own.startswith("tokenizer:")
    assert info["chat_template"] == own != "alpaca"
    run = tracking.get_run(chatml_run["run_id"])
    assert run.data.tags.get("tunegate.chat_template") == info["chat_template"]
    # the saved tokenizer carries that very template
    saved = load_tokenizer(Path(chatml_run["train"]["model_dir"]), None)
    assert template_id(saved.chat_template) == own


def test_chatml_stop_tokens_saved_with_the_model(chatml_run):
    from transformers import GenerationConfig

    info = model_info(chatml_run)
    saved = special_ids(chatml_run)
    assert set(info["stop_token_ids"]) >= set(saved.values()), info
    run = tracking.get_run(chatml_run["run_id"])
    assert set(run.data.tags.get("tunegate.stop_token_ids", "").split(",")) >= {str(i) for i in saved.values()}
    config = GenerationConfig.from_pretrained(chatml_run["train"]["model_dir"])
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    assert set(eos) >= set(saved.values())


def test_chatml_training_text_has_the_tools(chatml_run):
    """Records with tools, as trained, render their schemas inside <tools> and their calls natively."""
    from tunegate.data.sources import read_canonical
    from tunegate.data.tokenize import record_tools, render_record
    from tunegate.tuning.modeling import load_tokenizer

    tokenizer = load_tokenizer(Path(chatml_run["train"]["model_dir"]), None)
    records = read_canonical(Path(chatml_run["data"]["train_path"]))
    with_tools = [r for r in records if r.get("tools")]
    files = {Path(r["source"]["file"]).name for r in with_tools}
    assert files == {"glaive_toolcall_en_demo.json", "weather_toolcall.json"}, files
    for name in files:
        record = next(r for r in with_tools if Path(r["source"]["file"]).name == name)
        text = render_record(tokenizer, record)
        schema = text[text.index("<tools>\n") : text.index("\n</tools>")]  # not the "<tools></tools>" of the intro
        for tool in record_tools(record):
            assert f'"name": "{tool["function"]["name"]}"' in schema, (name, schema)
    calls = [r for r in with_tools if any(m.get("tool_calls") for m in r["messages"])]
    assert calls, "no record with a tool call survived validation"
    text = render_record(tokenizer, calls[0])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": ' in text, "the call in Qwen's own form"


def test_chatml_registered_model_loads_through_mlflow_and_stops(chatml_run):
    pipe = load_registered(chatml_run)
    ids = special_ids(chatml_run)
    eos = pipe.model.generation_config.eos_token_id
    assert set(eos if isinstance(eos, list) else [eos]) >= set(ids.values()), "served model stops at <|im_end|> too"
    out = pipe(user_prompt(pipe.tokenizer, "What is the weather in Paris?"), max_new_tokens=6, do_sample=False,
               return_full_text=False)
    assert isinstance(out[0]["generated_text"], str)


# --- GPT-2 (Conv1D, no template, no pad), LoRA; then full fine-tuning and DoRA -----------------


def gpt2_params(tmp_path_factory, tiny_gpt2, name: str) -> Path:
    return write_params(
        tmp_path_factory.mktemp(f"{name}-params") / f"{name}.yaml", name=name, base_model=tiny_gpt2,
        train=[{"path": str(INSTRUCTION / "alpaca_en_demo.json"), "name": "alpaca", "max_records": 100}],
    )


@pytest.fixture(scope="module")
def gpt2_run(prefect_harness, tiny_gpt2, tmp_path_factory):
    return run_flow(gpt2_params(tmp_path_factory, tiny_gpt2, "gpt2"))


def test_gpt2_lora_flow_registers_with_conv1d_targets(gpt2_run):
    assert_registered(gpt2_run)
    config = json.loads((Path(gpt2_run["train"]["model_dir"]) / "adapter_config.json").read_text())
    targets = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}  # peft lists them by full path
    assert targets >= {"c_attn", "c_proj", "c_fc"}, config["target_modules"]


def test_gpt2_gets_the_default_template_recorded(gpt2_run):
    from tunegate.data.templates import DEFAULT_TEMPLATE, template_id
    from tunegate.tuning.modeling import load_tokenizer

    info = model_info(gpt2_run)
    assert info["chat_template"] == DEFAULT_TEMPLATE == "alpaca"
    assert tracking.get_run(gpt2_run["run_id"]).data.tags.get("tunegate.chat_template") == "alpaca"
    saved = load_tokenizer(Path(gpt2_run["train"]["model_dir"]), None)
    assert template_id(saved.chat_template) == "alpaca" and saved.pad_token is not None


def test_gpt2_registered_model_loads_through_mlflow_and_generates(gpt2_run):
    pipe = load_registered(gpt2_run)
    out = pipe(user_prompt(pipe.tokenizer, "Name a colour."), max_new_tokens=6, do_sample=False, return_full_text=False)
    assert isinstance(out[0]["generated_text"], str)


@pytest.mark.parametrize("method", ["full", "dora"])
def test_gpt2_full_and_dora_flow_register(method, prefect_harness, tiny_gpt2, tmp_path_factory):
    params = gpt2_params(tmp_path_factory, tiny_gpt2, f"gpt2-{method}")
    summary = run_flow(params, overrides=[f"train.method={method}", "train.max_steps=2"])
    assert_registered(summary)
    model_dir = Path(summary["train"]["model_dir"])
    assert model_info(summary)["method"] == method
    if method == "full":
        assert (model_dir / "model.safetensors").is_file() and not (model_dir / "adapter_config.json").exists()
    else:
        assert json.loads((model_dir / "adapter_config.json").read_text())["use_dora"] is True
    pipe = load_registered(summary)
    out = pipe(user_prompt(pipe.tokenizer, "Name a colour."), max_new_tokens=4, do_sample=False, return_full_text=False)
    assert isinstance(out[0]["generated_text"], str)


# --- Stop tokens: a ChatML model that really ends its turn with <|im_end|> ---------------------
#
# Decoding skips special tokens, so "ok<|im_end|><|im_end|>..." and "ok<|im_end|>" read the same:
# whether generation stopped is checked on the generated token ids.

OK_SYSTEM = "Be brief."
# Full fine-tuning, batch 4, learning rate 4e-2 decaying linearly over 32 steps (~6 s of training).
# The loss falls to ~0.7 in 8 steps, sits on a plateau (the model says "ok" and "<|im_end|>" 50/50
# at both positions) and leaves it by step ~14-24; measured over seeds 1-5 and 42: greedy
# "ok<|im_end|>" on 12/12 unseen prompts each time, p >= 0.99 for both tokens. A constant rate
# spikes late (one seed of six ended broken at 3e-2); 5e-2 is too noisy.
OK_STEPS, OK_LR, OK_SCHEDULE = 32, 4e-2, "linear"
SUBJECTS = ["cats", "rain", "the sea", "old trains", "green tea", "maths", "jazz music", "snow",
            "Paris", "bread", "the moon", "chess", "bicycles", "volcanoes", "my garden", "Python"]
ASKS = ["Tell me about {}.", "Do you like {}?", "What is {}?", "Say something on {}.", "Describe {} in one line.",
        "Is {} nice?", "Why do people talk about {} so much?", "Explain {}.", "{}?", "Write a haiku about {}.",
        "Can you help me with {}, please?", "Give me three facts about {}.", "I love {}.", "Compare {} and tea.",
        "Summarise {}.", "Hi! {}"]
# Prompts it never saw.
UNSEEN = ["Hello there, how are you?", "What is the capital of France?", "Write a poem about dogs.", "Hi",
          "Translate 'cat' into French.", "List three colours.", "What is 2+2?", "How do magnets work?"]


def ok_records() -> list[dict]:
    """64 distinct short prompts, every answer "ok"."""
    return [
        {
            "id": f"ok-{i:02d}",
            "messages": [
                {"role": "system", "content": OK_SYSTEM},
                {"role": "user", "content": ASKS[(i + i // 16 * 3) % 16].format(SUBJECTS[i % 16])},
                {"role": "assistant", "content": "ok"},
            ],
            "source": {"file": "ok_records", "index": i, "format": "openai"},
        }
        for i in range(64)
    ]


def ok_prompt(tokenizer, text: str) -> str:
    messages = [{"role": "system", "content": OK_SYSTEM}, {"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@pytest.fixture(scope="module")
def ok_model(tiny_chatml, tmp_path_factory):
    """The tiny ChatML model fully fine-tuned through tunegate's own training to answer "ok<|im_end|>"."""
    from tunegate.params import parse_params
    from tunegate.tuning.training import train_model

    params = parse_params(
        {
            "project": {"name": "tunegate-mf-stop", "seed": 42},
            "model": {"base_model": str(tiny_chatml), "registered_name": "tunegate-mf-stop", "chat_template": None},
            "data": {"train": [{"path": "in-memory"}], "dvc_stage": None},
            "train": {
                "method": "full", "max_steps": OK_STEPS, "learning_rate": OK_LR, "lr_scheduler": OK_SCHEDULE,
                "warmup_ratio": 0.0, "batch_size": 4, "max_length": 64, "logging_steps": 1, "epochs": 100,
            },
        },
        "ok_model",
    )
    return train_model(params, ok_records(), tmp_path_factory.mktemp("ok-model"))


@pytest.fixture()
def ok_loaded(ok_model):
    from tunegate.tuning.modeling import load_saved_model

    model, tokenizer = load_saved_model(ok_model.model_dir)
    ids = {"ok": tokenizer("ok", add_special_tokens=False)["input_ids"], "im_end": tokenizer.convert_tokens_to_ids(IM_END)}
    assert len(ids["ok"]) == 1
    return model, tokenizer, ids["ok"][0], ids["im_end"]


def test_ok_model_learned_to_answer_ok_and_end_the_turn(ok_loaded):
    """The premise: on prompts it never saw, greedy decoding gives "ok" and then <|im_end|>."""
    import torch

    model, tokenizer, ok, im_end = ok_loaded
    assert tokenizer.eos_token == ENDOFTEXT and im_end != tokenizer.eos_token_id
    tokenizer.padding_side = "left"
    enc = tokenizer([ok_prompt(tokenizer, p) for p in UNSEEN], add_special_tokens=False, padding=True, return_tensors="pt")
    with_ok = torch.cat([enc["input_ids"], torch.full((len(UNSEEN), 1), ok)], 1)
    mask = torch.cat([enc["attention_mask"], torch.ones(len(UNSEEN), 1, dtype=torch.long)], 1)
    with torch.no_grad():
        first = model(**enc).logits[:, -1].softmax(-1)
        second = model(input_ids=with_ok, attention_mask=mask).logits[:, -1].softmax(-1)
    assert (first.argmax(-1) == ok).all(), f"answers start with ok: p(ok) {first[:, ok].tolist()}"
    assert (second.argmax(-1) == im_end).all(), f"then <|im_end|>: p {second[:, im_end].tolist()}"


def test_generation_stopping_on_eos_alone_runs_past_the_end_of_turn(ok_loaded):
    """Proves the next two tests can fail: the model never emits its EOS <|endoftext|>."""
    import torch

    model, tokenizer, ok, im_end = ok_loaded
    tokenizer.padding_side = "left"
    enc = tokenizer([ok_prompt(tokenizer, p) for p in UNSEEN[:4]], add_special_tokens=False, padding=True, return_tensors="pt")
    model.generation_config.max_length = None
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=6, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    assert all(row[:2] == [ok, im_end] for row in new), tokenizer.batch_decode(new)
    assert all(len(row) == 6 and tokenizer.eos_token_id not in row for row in new), "it went on past <|im_end|>"


def test_evaluation_generation_stops_at_im_end(ok_loaded):
    """tunegate's evaluation generation stops right after "ok<|im_end|>"."""
    from tunegate.evaluation.suites import generate

    model, tokenizer, ok, im_end = ok_loaded
    generated = []
    original = model.generate

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        generated.append(out[:, kwargs["input_ids"].shape[1]:].tolist())
        return out

    model.generate = spy
    prompts = [ok_prompt(tokenizer, p) for p in UNSEEN]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=4)
    assert outputs == ["ok"] * len(UNSEEN), outputs
    rows = [row for batch in generated for row in batch]
    assert rows == [[ok, im_end]] * len(UNSEEN), [tokenizer.decode(r) for r in rows]


def test_mlflow_served_model_stops_at_im_end(ok_model, ok_loaded):
    """The model logged as tunegate logs it loads through MLflow as a pipeline that stops after "ok"."""
    import mlflow

    _, _, ok, im_end = ok_loaded
    run_id = tracking.start_run("tunegate-mf-stop", run_name="stop-tokens", tags={})
    try:
        uri = tracking.log_transformers_model(run_id, ok_model.model_dir)
    finally:
        tracking.end_run(run_id, "FINISHED")
    pipe = mlflow.transformers.load_model(uri)
    for text in UNSEEN[:4]:
        prompt = ok_prompt(pipe.tokenizer, text)
        assert pipe(prompt, max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"].strip() == "ok"
        ids = pipe(prompt, max_new_tokens=6, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        prompt_len = len(pipe.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert ids[prompt_len:] == [ok, im_end], pipe.tokenizer.decode(ids[prompt_len:])
