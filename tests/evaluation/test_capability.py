"""The capability suite (issue #27): lm-evaluation-harness tasks over local files only, scored per item.

Real lm-eval runs on the real tiny model; the network is cut by the fault injected here (``socket.connect``
raises for anything but loopback), and a metric that would come from the hub is refused, before a run (the
preflight) and while running (``evaluate.load``)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tunegate.evaluation import suite_capability as capability
from tunegate.evaluation.capability_tasks import prepare, shipped
from tunegate.evaluation.suites import eval_file_problems, evaluate_suites, gate_metric_problems
from tunegate.params import CapabilityTask, load_params

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data" / "eval"
OFF = ["eval.reference.enabled=false", "eval.ifeval.enabled=false", "eval.safety.enabled=false", "eval.response_loss=false"]


def needs_shared():
    if not (SHARED / "mmlu_redux").is_dir():
        pytest.skip(f"{SHARED} is missing: the tests need ../shared beside the repo")


def test_the_shipped_tasks():
    assert set(shipped()) == {"story_continuation", "piqa", "mmlu_redux", "gsm8k"}


def test_mmlu_redux_reads_every_file_and_respects_the_annotators():
    needs_shared()
    rows = prepare.mmlu_redux_rows(str(SHARED / "mmlu_redux"))
    subjects = {r["subject"] for r in rows}
    assert len(subjects) == 57  # ';' and ',' files, columns in any order, the cp1252 one
    assert {r["error_type"] for r in rows} == {"ok", "wrong_groundtruth"}
    assert all(len(r["choices"]) == 4 and r["answer"] in range(4) for r in rows)
    moral = [r for r in rows if r["subject"] == "moral_scenarios"]
    assert moral and all("\ufffd" not in r["question"] for r in moral)
    # Of 5,700 items, 5,330 are ok in some spelling ("OK", "Ok", "ok "); wrong ground truths with a usable
    # correction are kept with it; the other error types are out.
    ok = sum(r["error_type"] == "ok" for r in rows)
    assert ok == 5330 and 5330 < len(rows) < 5700
    without_corrections = prepare.mmlu_redux_rows(str(SHARED / "mmlu_redux"), corrected=False)
    assert len(without_corrections) == ok


def test_piqa_joins_the_label_file_and_refuses_a_misaligned_one(tmp_path):
    needs_shared()
    rows = prepare.piqa_rows(str(SHARED / "piqa" / "valid.jsonl"), str(SHARED / "piqa" / "valid-labels.lst"))
    assert len(rows) == 1838 and {r["label"] for r in rows} == {0, 1}
    short = tmp_path / "labels.lst"
    short.write_text("0\n1\n")
    with pytest.raises(ValueError, match="1838 items but .* has 2 labels"):
        prepare.piqa_rows(str(SHARED / "piqa" / "valid.jsonl"), str(short))


def test_the_sample_is_seeded_and_stratified_by_subject():
    docs = [{"subject": s} for s in ["a"] * 60 + ["b"] * 30 + ["c"] * 10]
    first = capability.sample_indices(docs, 20, 0, "t", None)
    assert first == capability.sample_indices(docs, 20, 0, "t", None) != capability.sample_indices(docs, 20, 1, "t", None)
    counts = {s: sum(docs[i]["subject"] == s for i in first) for s in "abc"}
    assert counts == {"a": 12, "b": 6, "c": 2}
    assert capability.sample_indices(docs, 200, 0, "t", None) == list(range(100))
    plain = capability.sample_indices([{"x": 1}] * 50, 10, 0, "t", None)
    assert len(plain) == 10 == len(set(plain))


def _task(tmp_path: Path, **changes) -> Path:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": f"Is {i} even?", "choices": ["yes", "no"], "a": i % 2}) + "\n" for i in range(12)))
    config = {"task": "my_qa", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
              "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{q}}", "doc_to_choice": "choices",
              "doc_to_target": "a", "metric_list": [{"metric": "acc"}]} | changes
    path = tmp_path / "my_qa.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    return path


def _params(tasks, *more):
    return load_params(REPO / "params" / "demo.yaml", [*OFF, "eval.capability.enabled=true", f"eval.capability.tasks={tasks}", *more])


def test_the_preflight_refuses_what_would_need_a_download_in_one_line_each(tmp_path):
    hub = _task(tmp_path, task="hub_qa", dataset_path="cais/mmlu", dataset_kwargs={})
    (tmp_path / "m").mkdir()
    metric = _task(tmp_path / "m", task="metric_qa", metric_list=[{"metric": "bertscore"}])
    problems = eval_file_problems(_params(f"[{hub}, {metric}, nowhere.yaml, no_such_task]").eval)
    assert len(problems) == 4, problems
    assert "capability task 'hub_qa'" in problems[0] and "'cais/mmlu' is a Hugging Face hub dataset" in problems[0]
    assert "dataset_path: json" in problems[0]
    assert "capability task 'metric_qa'" in problems[1] and "metric 'bertscore' is not one lm-eval ships" in problems[1] and "evaluate.load" in problems[1]
    assert "'nowhere.yaml' does not exist" in problems[2]
    assert "'no_such_task' is neither a shipped task" in problems[3]
    assert all("\n" not in p for p in problems)
    assert eval_file_problems(_params(f"[{_task(tmp_path / 'm')}]").eval) == []
    assert eval_file_problems(_params(f"[{_task(tmp_path / 'm')}, {_task(tmp_path)}]").eval) == [
        "eval.capability.tasks: the task name(s) my_qa appear twice"]


def test_the_capability_rule_needs_the_suite_on():
    params = load_params(REPO / "params" / "demo.yaml", ["eval.capability.enabled=false"])
    [problem] = gate_metric_problems(params.gate, params.eval)
    assert problem.startswith("gate.capability_may_not_drop: the capability suite is off")


@pytest.fixture()
def network_cut(monkeypatch):
    """The fault injected: every connection but loopback fails, as on a machine with no route out."""
    real = socket.socket.connect
    attempts = []

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost") and not str(host).startswith("/"):
            attempts.append(address)
            raise OSError(f"network cut by the test: {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_the_suite_runs_with_the_network_cut_and_scores_per_item(network_cut, base_model_path, demo_data, tmp_path):
    from tunegate.tuning.modeling import load_base_model, load_tokenizer

    needs_shared()
    user = _task(tmp_path)
    params = _params(f"[story_continuation, piqa, mmlu_redux, {{task: gsm8k, max_items: 4}}, {{task: {user}, max_items: 8}}]",
                     "eval.capability.max_items=20")
    model = load_base_model(params.base_model_path())
    tokenizer = load_tokenizer(params.base_model_path(), params.model.chat_template)
    result = evaluate_suites(model, tokenizer, [], params.eval)
    scores = result.scores["capability"]
    per_task = {t: [s for s in scores if s.category == t] for t in ("story_continuation", "piqa", "mmlu_redux", "gsm8k", "my_qa")}
    assert {t: len(v) for t, v in per_task.items()} == {"story_continuation": 20, "piqa": 20, "mmlu_redux": 20, "gsm8k": 4, "my_qa": 8}
    assert all(s.value in (0.0, 1.0) for s in scores)
    assert result.by_category("capability")["story_continuation"] >= 0.9  # the base model's own capability
    rows = {r["task"]: r for r in result.examples["capability"]}
    assert rows["gsm8k"]["metric"] == "exact_match" and rows["gsm8k"]["filter"] == "strict-match"
    assert rows["mmlu_redux"]["of"] > 5000 and rows["piqa"]["figures"]["acc / none"] == result.by_category("capability")["piqa"]
    assert network_cut == []  # nothing even tried to leave the machine
    # Seeded: the same sample and scores again.
    again = evaluate_suites(model, tokenizer, [], params.eval)
    assert again.scores["capability"] == scores


def test_a_metric_fetched_at_run_time_is_refused_naming_the_task(network_cut, base_model_path, tmp_path):
    """A task whose process_results calls evaluate.load (what lm-eval #1723 / #2394 hit offline) stops with one
    line naming the task, not a hub timeout."""
    from tunegate.tuning.modeling import load_base_model, load_tokenizer

    (tmp_path / "utils.py").write_text(
        "def process_results(doc, results):\n"
        "    import evaluate\n"
        "    return {'acc': evaluate.load('accuracy').compute(predictions=[0], references=[0])['accuracy']}\n")
    user = _task(tmp_path, process_results="!function utils.process_results")
    text = user.read_text().replace("'!function utils.process_results'", "!function utils.process_results")
    user.write_text(text)
    params = _params(f"[{user}]")
    model = load_base_model(params.base_model_path())
    tokenizer = load_tokenizer(params.base_model_path(), params.model.chat_template)
    with pytest.raises(capability.OfflineRefusal, match=r"capability task 'my_qa': evaluate.load\('accuracy'\) would download"):
        evaluate_suites(model, tokenizer, [], params.eval)
    assert network_cut == []


def test_an_adapter_with_a_trained_lm_head_is_evaluated(tmp_path, base_model_path, demo_data):
    """HFLM ties the weights of the model it wraps; a LoRA model whose lm_head is a module to save cannot be
    tied again, so the suite wraps it without that (and leaves the model as it was)."""
    from peft import LoraConfig, get_peft_model

    from tunegate.tuning.modeling import load_base_model, load_tokenizer

    params = _params("[story_continuation]", "eval.capability.max_items=8")
    model = get_peft_model(load_base_model(params.base_model_path()),
                           LoraConfig(r=4, target_modules="all-linear", modules_to_save=["lm_head"]))
    result = evaluate_suites(model, load_tokenizer(params.base_model_path(), params.model.chat_template), [], params.eval)
    assert len(result.scores["capability"]) == 8
    assert "tie_weights" not in vars(model)


def test_task_entries_accept_names_and_settings():
    params = _params("[piqa, {task: gsm8k, max_items: 5, filter: flexible-extract}]")
    assert params.eval.capability.tasks == [CapabilityTask(task="piqa"), CapabilityTask(task="gsm8k", max_items=5, filter="flexible-extract")]
