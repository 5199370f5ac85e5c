"""The preflight: data files (outputs of the params' DVC stage excepted), eval files, the base model
offline, its tokenizer and chat template, the hardware; an unexpected error names a log file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tunegate.operations import preflight
from tunegate.params import load_params, parse_params
from tunegate.tuning import hardware

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "params" / "demo.yaml"


def _params(**changes):
    """The demo params with dotted keys changed (``changes={'train.method': 'qlora'}`` style)."""
    raw = yaml.safe_load(DEMO.read_text())
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return parse_params(raw, "test")


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))


# --- data and the DVC stage ---------------------------------------------------------------------


def test_demo_params_on_a_fresh_checkout_are_not_refused():
    """data/demo/*.jsonl is made by `dvc repro demo_data` when the flow starts: not a problem before."""
    params = _params(**{"data.train": [{"path": "data/demo/not-made-yet.jsonl"}], "data.eval": [{"path": "data/demo/eval-not-made.jsonl"}]})
    assert preflight.data_problems(params) == []
    assert preflight.data_problems(load_params(DEMO)) == []


def test_the_same_files_without_the_stage_are_refused():
    params = _params(**{"data.train": [{"path": "data/demo/not-made-yet.jsonl"}], "data.eval": [], "data.dvc_stage": None})
    problems = preflight.data_problems(params)
    assert len(problems) == 1
    assert "data.train[0].path" in problems[0] and "data/demo/not-made-yet.jsonl" in problems[0] and "fix the path" in problems[0]


def test_stage_outputs_read_from_dvc_yaml(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "make": {"cmd": "x", "outs": ["gen/a", {"gen/b.jsonl": {"cache": False}}]},
        "sub": {"cmd": "y", "wdir": "sub", "outs": ["out"]},
    }}))
    assert preflight.dvc_stage_outputs("make", tmp_path) == [(tmp_path / "gen/a").resolve(), (tmp_path / "gen/b.jsonl").resolve()]
    assert preflight.dvc_stage_outputs("sub", tmp_path) == [(tmp_path / "sub/out").resolve()]
    assert preflight.dvc_stage_outputs("missing", tmp_path) is None
    params = _params(**{
        "data.train": [{"path": str(tmp_path / "gen/a/train.jsonl")}, {"path": str(tmp_path / "gen/b.jsonl")}],
        "data.eval": [{"path": str(tmp_path / "elsewhere.jsonl")}],
        "data.dvc_stage": "make",
    })
    problems = preflight.data_problems(params, root=tmp_path)
    assert len(problems) == 1 and "data.eval[0].path" in problems[0] and "elsewhere.jsonl" in problems[0]


def test_unknown_stage_is_named():
    params = _params(**{"data.dvc_stage": "no_such_stage", "data.train": [{"path": str(DEMO)}], "data.eval": []})
    (problem,) = preflight.data_problems(params)
    assert "data.dvc_stage: 'no_such_stage'" in problem and "dvc.yaml" in problem and "data.dvc_stage: null" in problem


# --- the base model -----------------------------------------------------------------------------


def test_local_model_without_safetensors(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "pytorch_model.bin").write_bytes(b"x")
    problems, directory = preflight.model_problems(_params(**{"model.base_model": str(model)}))
    assert directory == model
    assert len(problems) == 1 and "safetensors" in problems[0] and "pytorch_model.bin" in problems[0] and "model.base_model" in problems[0]


def test_missing_local_model_dir(tmp_path):
    problems, directory = preflight.model_problems(_params(**{"model.base_model": str(tmp_path / "nope")}))
    assert directory is None and "does not exist" in problems[0] and str(tmp_path / "nope") in problems[0]


def test_hub_id_not_in_the_cache_names_id_cache_and_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (problem,), directory = preflight.model_problems(_params(**{"model.base_model": "some-org/not-cached-model"}))
    assert directory is None
    for text in ("some-org/not-cached-model", str(tmp_path / "hf" / "hub"), "HF_HUB_OFFLINE=1", "hf download some-org/not-cached-model", "local model directory"):
        assert text in problem, text
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the run may download it: not a preflight problem
    assert preflight.model_problems(_params(**{"model.base_model": "some-org/not-cached-model"})) == ([], None)


def test_hub_id_in_the_cache_is_found_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--some-org--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (cache / "models--some-org--cached" / "refs").mkdir()
    (cache / "models--some-org--cached" / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"x")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert preflight.model_problems(_params(**{"model.base_model": "some-org/cached"})) == ([], snapshot)


# --- tokenizer and template ---------------------------------------------------------------------


def test_demo_tokenizer_renders(base_model_path):
    assert preflight.tokenizer_problems(_params(), base_model_path) == []


def _with_template(base_model_path: Path, out: Path, template: str):
    """A copy of the base model whose tokenizer carries ``template``, and params that use its own template."""
    shutil.copytree(base_model_path, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out, _params(**{"model.base_model": str(out), "model.chat_template": None})


def test_a_template_that_fails_names_model_template_and_log(tmp_path, base_model_path):
    model, params = _with_template(base_model_path, tmp_path / "broken-template", "{{ raise_exception('this template is broken') }}")
    (problem,) = preflight.tokenizer_problems(params, model)
    assert str(model) in problem and "model.chat_template" in problem and "this template is broken" in problem
    log = Path(problem.rsplit("details in ", 1)[1])
    assert log.is_file() and "Traceback" in log.read_text()


def test_a_tokenizer_that_does_not_load(tmp_path):
    model = tmp_path / "no-tokenizer"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (problem,) = preflight.tokenizer_problems(_params(**{"model.base_model": str(model)}), model)
    assert "tokenizer does not load" in problem and str(model) in problem


# --- hardware -----------------------------------------------------------------------------------


def test_hardware_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.hardware_problems(_params()) == []
    problems = hardware.hardware_problems(_params(**{
        "train.method": "qlora", "train.device": "auto", "train.precision": "bf16",
        "train.attn_implementation": "flash_attention_2",
    }))
    assert len(problems) == 3
    assert problems[0].startswith("train.method: qlora needs a CUDA GPU") and "train.method: lora" in problems[0]
    assert problems[1].startswith("train.precision: bf16 needs a CUDA GPU") and "fp32" in problems[1]
    assert problems[2].startswith("train.attn_implementation: flash_attention_2 needs a CUDA GPU") and "sdpa" in problems[2]


def test_hardware_on_a_gpu_without_packages(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Old GPU")
    monkeypatch.setattr(hardware, "_has_module", lambda name: False)
    problems = hardware.hardware_problems(_params(**{
        "train.method": "qlora", "train.device": "auto", "train.precision": "bf16",
        "train.attn_implementation": "flash_attention_2",
    }))
    assert "pip install bitsandbytes" in problems[0]
    assert "Old GPU" in problems[1] and "fp16" in problems[1]
    assert "flash-attn" in problems[2]


# --- the whole preflight ------------------------------------------------------------------------


def test_demo_preflight_is_clean(base_model_path):
    assert preflight.run_preflight(load_params(DEMO), params_file="params/demo.yaml") == []


def test_every_problem_at_once_prefixed_with_the_params_file(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    params = _params(**{
        "model.base_model": "some-org/not-cached-model", "train.method": "qlora",
        "data.train": [{"path": str(tmp_path / "missing.jsonl")}], "data.eval": [], "data.dvc_stage": None,
    })
    problems = preflight.run_preflight(params, params_file="my.yaml")
    assert [p.check for p in problems] == ["data", "model", "hardware"]
    assert all(p.message.startswith("my.yaml: ") for p in problems)
    with pytest.raises(preflight.PreflightError) as raised:
        preflight.check_preflight(params, params_file="my.yaml", command="retrain flow")
    assert str(raised.value).startswith("retrain flow: 3 problem(s) before anything started:")
    assert len(raised.value.problems) == 3


def test_unexpected_error_names_a_log_file_not_a_traceback(monkeypatch, tmp_path):
    def boom(params):
        raise KeyError("surprise")

    monkeypatch.setattr(preflight, "hardware_problems", boom)
    problems = preflight.run_preflight(_params(**{"data.train": [{"path": str(DEMO)}], "data.dvc_stage": None}), params_file="p.yaml")
    (problem,) = [p for p in problems if p.check == "hardware"]
    assert "Traceback" not in problem.message and "KeyError: 'surprise'" in problem.message
    log = Path(problem.message.split("the traceback is in ", 1)[1].split(";", 1)[0])
    assert log.parent == tmp_path / "home" / "logs" and log.name.startswith("preflight-")
    assert "Traceback" in log.read_text() and "surprise" in log.read_text()


def test_template_without_end_of_turn_is_refused(base_model_path, tmp_path):
    """A template that ends answers with nothing would train a model that never stops."""
    model, params = _with_template(
        base_model_path, tmp_path / "no-end", "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    problems = preflight.tokenizer_problems(params, model)
    assert len(problems) == 1 and "cannot learn where to stop" in problems[0]


# --- preference data (issue #28): the wrong kind of file is refused before anything starts ---------------


def _pref_params(train_path: str, sft_path: str | None = None):
    raw = yaml.safe_load((REPO / "params" / "demo_preference.yaml").read_text())
    raw["preference"]["data"] = {"train": [{"path": train_path}]}
    if sft_path:
        raw["data"] = {"train": [{"path": sft_path}], "dvc_stage": None}
    return parse_params(raw, "test")


def test_chat_records_as_preference_data_and_pairs_as_instruction_data_are_refused(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Hallo?", "chosen": "Guten Tag!", "rejected": "Nein."}) + "\n")
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    kto = REPO.parent / "shared" / "data" / "instruction" / "kto_en_demo.json"
    problems = preflight.data_problems(_pref_params(str(chat)))
    assert len(problems) == 1 and problems[0].startswith(f"preference.data.train[0].path: {chat}: holds chat records")
    assert "instruction data goes under data.train" in problems[0]
    problems = preflight.data_problems(_pref_params(str(pairs), sft_path=str(pairs)))
    assert len(problems) == 1 and problems[0].startswith(f"data.train[0].path: {pairs}: holds preference pairs")
    assert "list it under preference.data.train and set train.objective: dpo" in problems[0]
    problems = preflight.data_problems(_pref_params(str(kto)))
    assert len(problems) == 1 and "unpaired records (label true/false, KTO data)" in problems[0]
    assert preflight.data_problems(_pref_params(str(pairs))) == []


def test_a_preference_section_needs_the_dpo_objective_and_dpo_needs_one():
    from tunegate.params import ParamsError, load_params

    with pytest.raises(ParamsError, match="a preference section is given to a train.objective sft run"):
        load_params(REPO / "params" / "demo_preference.yaml", ["train.objective=sft"])
    with pytest.raises(ParamsError, match="train.objective dpo trains on preference pairs: add a preference section"):
        load_params(DEMO, ["train.objective=dpo"])
