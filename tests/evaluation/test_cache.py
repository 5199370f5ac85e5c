"""The evaluation key (tunegate.evaluation.cache): what makes an earlier evaluation reusable, and what does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunegate.evaluation import cache as eval_cache
from tunegate.evaluation.cache import EvalKey, EvaluationOutcome
from tunegate.evaluation.suites import ModelEvaluation, Score
from tunegate.params import load_params

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "params" / "demo.yaml"
MD5 = "0" * 32


def _evaluation() -> ModelEvaluation:
    return ModelEvaluation(
        scores={
            "response_loss": [Score("1", "lowercase", 2.0000000000000004, 3.0), Score("2", "json_color", 0.1 + 0.2, 7.0)],
            "exact_match": [Score("1", "lowercase", 1.0), Score("2", "json_color", 0.0)],
            "ifeval_instruction_loose": [Score("demo-1#0", "change_case", 1.0)],
        },
        examples={
            "reference": [{"key": "1", "category": "lowercase", "prompt": "Say hi.", "reference": "hi", "output": "hi"}],
            "ifeval": [{"key": "demo-1", "category": "demo", "prompt": "p", "output": "ünï 中文", "instructions": ["change_case:english_lowercase"],
                        "strict": [True], "loose": [False]}],
        },
        truncated_prompts=3,
    )


def test_a_stored_evaluation_comes_back_equal():
    evaluation = _evaluation()
    again = ModelEvaluation.from_dict(json.loads(json.dumps(evaluation.to_dict())))
    assert again == evaluation
    assert again.summary() == evaluation.summary()
    assert again.summary()["response_loss"] == pytest.approx((2.0 * 3 + 0.3 * 7) / 10)  # per token: the weights came back
    assert ModelEvaluation.from_dict(ModelEvaluation().to_dict()) == ModelEvaluation()


@pytest.fixture()
def params(base_model_path):
    return load_params(DEMO)


def _key(params, eval_md5=MD5) -> str:
    return eval_cache.make_key(params, eval_md5, None, None).digest


def test_the_key_changes_with_eval_data_eval_params_and_code(params, monkeypatch):
    key = _key(params)
    assert _key(load_params(DEMO)) == key  # deterministic
    assert _key(params, "1" * 32) != key  # eval data
    assert _key(load_params(DEMO, ["eval.max_new_tokens=12"])) != key  # an eval param
    assert _key(load_params(DEMO, ["eval.safety.max_prompts=5"])) != key
    assert _key(load_params(DEMO, ["model.chat_template=chatml"])) != key  # the base model's prompts
    # Not about the evaluation: the gate, training, the reuse switch itself.
    assert _key(load_params(DEMO, ["gate.min_improvement=0.2", "train.learning_rate=0.001"])) == key
    off = load_params(DEMO, ["eval.reuse_baseline=false"])
    assert off.eval.reuse_baseline is False and _key(off) == key
    assert off.fingerprint() == params.fingerprint() and off.flat()["eval.reuse_baseline"] is False  # logged, not fingerprinted

    sources = eval_cache._own_sources()
    edited = tuple((name, data + b"\n# edited\n" if name == "tunegate/evaluation/generation.py" else data) for name, data in sources)
    monkeypatch.setattr(eval_cache, "_own_sources", lambda: edited)
    assert _key(params) != key  # the evaluation's code


def test_code_fingerprint_covers_sources_and_library_versions():
    sources = eval_cache.eval_code_sources()
    assert {"tunegate/evaluation/suites.py", "tunegate/evaluation/generation.py", "tunegate/tuning/modeling.py",
            "tunegate/data/templates.py", "tunegate.evaluation.cache.compute", "suite:safety",
            "suite:ifeval:tunegate.evaluation.ifeval", "suite:safety:tunegate.evaluation.safety",
            "suite:safety:tunegate.data.refusals", "suite:reference:tunegate.evaluation.suite_reference"} <= set(sources)
    versions = eval_cache.library_versions()
    assert {"torch", "transformers", "python"} <= set(versions)
    base = eval_cache.code_fingerprint(sources, versions)
    assert eval_cache.code_fingerprint(dict(sources), dict(versions)) == base
    assert eval_cache.code_fingerprint({**sources, "tunegate/evaluation/stats.py": b""}, versions) != base
    assert eval_cache.code_fingerprint(sources, {**versions, "transformers": "0.0.1"}) != base


def test_the_key_changes_with_an_eval_file(params, tmp_path):
    ifeval = tmp_path / "ifeval.jsonl"
    shutil.copy(REPO.parent / "shared" / "data" / "eval" / "ifeval_input_data.jsonl", ifeval)
    with_file = load_params(DEMO, [f"eval.ifeval.path={ifeval}"])
    key = _key(with_file)
    lines = ifeval.read_text(encoding="utf-8").splitlines(keepends=True)
    ifeval.write_text("".join(reversed(lines)), encoding="utf-8")  # same path, other content
    assert _key(with_file) != key


def test_the_base_model_is_known_by_path_and_files(params, base_model_path, tmp_path):
    copy = tmp_path / "base"
    shutil.copytree(base_model_path, copy)
    moved = load_params(DEMO, [f"model.base_model={copy}"])
    identity = eval_cache.model_identity(moved, None, None)
    assert identity["kind"] == "base_model" and identity["path"] == str(copy)
    assert identity["files_sha256"] == eval_cache.model_identity(params, None, None)["files_sha256"]
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert eval_cache.model_identity(moved, None, None)["files_sha256"] != identity["files_sha256"]


def test_a_trained_model_is_known_by_its_run_and_files(params, tmp_path):
    model = tmp_path / "tunegate_model"
    model.mkdir()
    (model / "tunegate_model.json").write_text(json.dumps({"method": "full", "base_model": "/nowhere", "chat_template": "alpaca"}))
    (model / "model.safetensors").write_bytes(b"weights")
    identity = eval_cache.model_identity(params, model, "run1")
    assert identity["uri"] == "runs:/run1/tunegate_model" and "base_model" not in identity
    assert eval_cache.model_identity(params, model, "run2") != identity
    (model / "model.safetensors").write_bytes(b"other weights")
    assert eval_cache.model_identity(params, model, "run1")["files_sha256"] != identity["files_sha256"]
    with pytest.raises(ValueError, match="needs the run"):
        eval_cache.model_identity(params, model, None)


# --- finding a stored evaluation: only under the same key, only when it checks out -----------------


class _FakeStore:
    """A RunStore (what tunegate.adapters.mlflow offers the cache) over a dict: run id -> (tags, {artifact path: json})."""

    def __init__(self, runs):
        self.runs = runs

    def finished_runs_tagged(self, experiment, tag, value, limit=20):
        return [(rid, tags) for rid, (tags, _) in self.runs.items() if tags.get(tag) == value][:limit]

    def read_json_artifact(self, run_id, path):
        return json.loads(json.dumps(self.runs[run_id][1][path]))


def test_a_stored_evaluation_is_used_only_when_its_recorded_key_matches():
    key = EvalKey({"kind": "trained", "uri": "runs:/A/tunegate_model", "files_sha256": "f"}, MD5, "s", "c")
    other = EvalKey(key.model, "1" * 32, "s", "c")
    evaluation = _evaluation()
    good = eval_cache.artifact(evaluation, key, "A")
    forged = eval_cache.artifact(evaluation, other, "B")  # tagged with the key, but stored under another
    bad_metrics = {**good, "metrics": {**good["metrics"], "exact_match": 1.0}}
    runs = {
        "B": (eval_cache.tags("baseline", key, None), {"evaluation/baseline.json": forged}),
        "C": (eval_cache.tags("baseline", key, None), {"evaluation/baseline.json": bad_metrics}),
        "A": (eval_cache.tags("candidate", key, None), {"evaluation/candidate.json": good}),
    }
    client = _FakeStore(runs)

    found, problems = eval_cache.find_earlier(client, "exp", key)
    assert found is not None and found.run_id == "A" and found.role == "candidate" and found.computed_in == "A"
    assert found.evaluation == evaluation and problems == []  # the champion's own run comes first

    found, problems = eval_cache.find_earlier(client, "exp", key, exclude_run="A")
    assert found is None and len(problems) == 2
    assert "run B" in problems[0] and "recorded key" in problems[0]
    assert "run C" in problems[1] and "do not follow" in problems[1]
    assert eval_cache.find_earlier(client, "exp", other) == (None, [])


def test_summary_and_report_say_where_the_baseline_came_from():
    from tunegate.evaluation.report import render_markdown as report
    from tunegate.governance.gate import verdict_cell
    from tunegate.governance.summary import build_summary, render_markdown

    key = EvalKey({"kind": "base_model", "path": "/m"}, MD5, "s", "c")
    reused = EvaluationOutcome(_evaluation(), key, reused_from="run-1", computed_in="run-1").provenance()
    assert reused == {"reused": True, "from_run": "run-1", "computed_in": "run-1", "key": key.digest}
    computed = EvaluationOutcome(_evaluation(), key, reason="no earlier evaluation with this key").provenance()
    assert computed["reused"] is False and computed["key"] == key.digest

    metrics = _evaluation().summary()
    summary = build_summary(
        run_id="run-2", flow_run_id=None, model_name="m", tracking_uri="sqlite://", commit="c",
        data={"data_md5": MD5, "n_train": 1, "n_eval": 1}, baseline={"source": "champion", "version": "1"},
        baseline_metrics=metrics, candidate_metrics=metrics,
        train={}, gate={"passed": False, "reasons": []}, registered_version=None, baseline_evaluation=reused,
    )
    assert summary["baseline_evaluation"] == reused and summary["baseline"]["metrics"] == metrics
    text = "- baseline evaluation: reused from run `run-1` (same model, eval data, suites, code)"
    assert text in render_markdown(summary)
    summary["baseline_evaluation"] = computed
    assert "- baseline evaluation: computed in this run" in render_markdown(summary)

    context = {"run_id": "run-2", "model_name": "m", "baseline": {"source": "champion", "version": "1"}}
    line = "Baseline evaluation reused from run `run-1` (same model, eval data, suites, code)."
    assert line in report({**context, "baseline_evaluation": reused}, [], [], verdict_cell=verdict_cell)
    assert "reused" not in report({**context, "baseline_evaluation": computed}, [], [], verdict_cell=verdict_cell) and "reused" not in report(context, [], [], verdict_cell=verdict_cell)
