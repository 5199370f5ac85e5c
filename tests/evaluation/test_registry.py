"""The suite registry (issue #25): the built-ins as they were, a suite from the tests folder registered with one
line and seen by params, the evaluation, the comparison, the report, the gate and the cache key; unregistered,
seen by none of them."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tunegate.evaluation import cache as eval_cache
from tunegate.evaluation import generation
from tunegate.evaluation.registry import Metric, Registry, Suite
from tunegate.evaluation.report import render_markdown
from tunegate.evaluation.scores import ModelEvaluation, Score
from tunegate.evaluation.suites import REGISTRY, compare, evaluate_suites, gate_metric_problems
from tunegate.governance.gate import decide_promotion, verdict_cell
from tunegate.params import EvalParams, ParamsError, load_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
import planted_suite  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "params" / "demo.yaml"

# What suites.METRICS said before the registry: metric -> (suite, higher is better), in the order they run.
BEFORE = {
    "response_loss": ("response_loss", False),
    "exact_match": ("reference", True),
    "normalized_match": ("reference", True),
    "rouge_l": ("reference", True),
    "ifeval_prompt_strict": ("ifeval", True),
    "ifeval_prompt_loose": ("ifeval", True),
    "ifeval_instruction_strict": ("ifeval", True),
    "ifeval_instruction_loose": ("ifeval", True),
    "refusal_rate": ("safety", True),
    "over_refusal_rate": ("safety", False),
}
# Registered since (issue #27): the capability suite (lm-evaluation-harness; tasks as categories) and the pairwise judge.
SINCE = {"capability": ("capability", True), "judge_win_rate": ("judge", True)}


def test_the_built_in_suites_are_the_ones_before_the_registry():
    assert {m: (REGISTRY.suite_of(m).name, REGISTRY.higher_is_better(m)) for m in REGISTRY.metric_names()} == BEFORE | SINCE
    assert list(BEFORE | SINCE) == REGISTRY.metric_names()
    assert [s.section for s in REGISTRY.suites()] == ["response_loss", "reference", "ifeval", "safety", "capability", "judge"]
    # Their params sections are EvalParams' own fields: the keys users write are unchanged.
    assert all(s.section in EvalParams.model_fields for s in REGISTRY.suites())


def test_a_suite_cannot_take_a_metric_or_section_twice():
    registry = Registry(REGISTRY.suites())
    with pytest.raises(ValueError, match="already has the metric"):
        registry.register(dataclasses.replace(planted_suite.SUITE, name="copy", section="copy", metrics=(Metric("exact_match"),)))
    with pytest.raises(ValueError, match="already has the name or section"):
        registry.register(dataclasses.replace(planted_suite.SUITE, section="reference"))
    with pytest.raises(ValueError, match="not its metrics"):
        Registry().register(dataclasses.replace(planted_suite.SUITE, report_rows=("nope",)))


def rec(i, family, prompt, answer):
    return {"id": str(i), "family": family, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


RECORDS = [rec(i, "a" if i % 2 else "b", f"prompt {i}", "x") for i in range(12)]
ONLY_REFERENCE = {"response_loss": False, "ifeval": {"enabled": False}, "safety": {"enabled": False}}


def _evaluate(monkeypatch, tokenizer, answers: list[str], params: EvalParams) -> ModelEvaluation:
    by_prompt = dict(zip(generation.render_prompts(tokenizer, RECORDS), answers))
    monkeypatch.setattr(generation, "generate", lambda model, tok, todo, *args, **kwargs: [by_prompt[p] for p in todo])
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    return evaluate_suites(model, tokenizer, RECORDS, params)


@pytest.fixture(scope="module")
def tokenizer(base_model_path):
    from tunegate.data.templates import load_tokenizer

    return load_tokenizer(base_model_path, "alpaca")


def _everything(monkeypatch, tokenizer, overrides: dict) -> dict:
    """What each part makes of one baseline/candidate pair, with a gate rule on every metric evaluated."""
    params = EvalParams(**ONLY_REFERENCE, bootstrap_resamples=200, **overrides)
    baseline = _evaluate(monkeypatch, tokenizer, ["x"] * 12, params)
    candidate = _evaluate(monkeypatch, tokenizer, ["x"] * 6 + ["a b c d e"] * 6, params)
    deltas = compare(baseline, candidate, params)
    from tunegate.params import GateParams, MetricRule

    policy = GateParams(min_improvement_over_base=None, min_family_items=1,
                        rules=[MetricRule(metric=m, max_regression=1) for m in candidate.scores])
    decision = decide_promotion(baseline.summary(), candidate.summary(), policy, [d.to_dict() for d in deltas])
    context = {"run_id": "r", "model_name": "m", "baseline": {"source": "base_model"}, "gate": decision.to_dict()}
    report = render_markdown(context, deltas, [], verdict_cell=verdict_cell)
    return {"metrics": candidate.summary(), "deltas": {d.metric for d in deltas}, "reasons": decision.reasons, "report": report,
            "mlflow": eval_cache.metrics("candidate", candidate)}


def test_a_registered_suite_is_in_params_evaluation_comparison_report_gate_and_mlflow(monkeypatch, tokenizer):
    with REGISTRY.registered(planted_suite.SUITE):  # the one line
        assert EvalParams().planted == planted_suite.PlantedParams()
        params = load_params(DEMO, ["eval.planted.max_words=4"])
        assert params.eval.planted.max_words == 4 and params.flat()["eval.planted.max_words"] == 4
        with pytest.raises(ParamsError, match=r"eval\.planted\.max_word: unknown key; allowed keys here: enabled, max_words"):
            load_params(DEMO, ["eval.planted.max_word=4"])
        seen = _everything(monkeypatch, tokenizer, {"planted": {"max_words": 4}})
        assert gate_metric_problems(params.gate.model_copy(update={"rules": []})) == []
    assert seen["metrics"]["planted_brevity"] == 0.5 and seen["mlflow"]["candidate_planted_brevity"] == 0.5
    assert "planted_brevity" in seen["deltas"]
    [row] = [line for line in seen["report"].splitlines() if line.startswith("| planted | planted_brevity |")]
    assert row.split("|")[3:5] == [" 1.000 ", " 0.500 "] and "PASS (significant loss <= 1.000)" in row
    assert "Planted brevity is the share of answers" in seen["report"]
    assert any(r.startswith("PASS planted_brevity[all] regression: baseline 1.000 -> candidate 0.500") for r in seen["reasons"])

    # Unregistered (the line removed): no part knows it, and its params section is an unknown key.
    assert REGISTRY.get("planted") is None and "planted" not in EvalParams().model_dump()
    with pytest.raises(ParamsError, match=r"eval\.planted: unknown key"):
        load_params(DEMO, ["eval.planted.max_words=4"])
    gone = _everything(monkeypatch, tokenizer, {})
    assert not any("planted" in str(part) for part in gone.values()), gone
    assert gone["metrics"]["exact_match"] == seen["metrics"]["exact_match"]  # the others as they were


def test_the_gate_may_name_only_registered_metrics(base_model_path):
    gate = load_params(DEMO, ["gate.rules=[{metric: planted_brevity, max_regression: 1}, {metric: rouge_l, max_regression: 1}]"]).gate
    [problem] = gate_metric_problems(gate)
    assert problem.startswith("gate.rules[0].metric: no registered suite computes 'planted_brevity'; the metrics: response_loss, ")
    with REGISTRY.registered(planted_suite.SUITE):
        assert gate_metric_problems(gate) == []
    assert gate_metric_problems(load_params(DEMO).gate) == []


def _write_module(path: Path, body: str) -> None:
    path.write_text(f'"""A suite module the test edits."""\n{body}\n', encoding="utf-8")


def test_the_key_changes_when_a_registered_suites_source_changes(base_model_path, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_module(tmp_path / "edited_suite.py", "LIMIT = 3")
    importlib.import_module("edited_suite")
    suite = Suite(name="edited", section="edited", params=planted_suite.PlantedParams, metrics=(Metric("edited_metric"),),
                  sources=("edited_suite",), run=lambda *args: None)
    params = load_params(DEMO)

    def key(p=params) -> str:
        return eval_cache.make_key(p, "0" * 32, None, None).digest

    without = key()
    with REGISTRY.registered(suite):
        registered = key(load_params(DEMO))
        assert registered != without
        eval_cache.module_source.cache_clear()  # a new process: the file is read again
        assert key(load_params(DEMO)) == registered
        _write_module(tmp_path / "edited_suite.py", "LIMIT = 4")
        eval_cache.module_source.cache_clear()
        assert key(load_params(DEMO)) != registered
    eval_cache.module_source.cache_clear()
    assert key() == without
    sys.modules.pop("edited_suite", None)


def test_a_suite_of_scores_computed_elsewhere_keeps_its_direction():
    lower = Suite(name="lower", section="lower", params=planted_suite.PlantedParams,
                  metrics=(Metric("lower_metric", higher_is_better=False),), sources=(), run=lambda *args: None)
    baseline = ModelEvaluation(scores={"lower_metric": [Score(str(i), "all", 0.0) for i in range(20)]})
    candidate = ModelEvaluation(scores={"lower_metric": [Score(str(i), "all", 1.0) for i in range(20)]})
    params = EvalParams(bootstrap_resamples=200)
    assert compare(baseline, candidate, params)[0].regression is False  # unknown: higher is better
    with REGISTRY.registered(lower):
        assert compare(baseline, candidate, EvalParams(bootstrap_resamples=200))[0].regression is True
