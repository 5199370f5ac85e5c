"""Issue #14: a retrain reads the unchanged champion's evaluation back instead of evaluating it again.

Two real runs of the flow (tiny training, small suites, a model name of their own): the first
registers and is approved; the second's baseline, the same champion on the same eval data, suites
and code, is reused from the first run. Its figures must equal a fresh evaluation of the champion.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tunegate import eval_cache, promotion, tracking
from tunegate.eval_suites import ModelEvaluation, compare
from tunegate.gate import decide_promotion
from tunegate.params import load_params

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "params" / "demo.yaml"
NAME = f"tunegate-reuse-{uuid.uuid4().hex[:6]}"
QUICK = [
    f"model.registered_name={NAME}", "train.max_steps=6",
    "gate.min_improvement=-1", "gate.max_family_regression=1", "gate.rules=[]", "gate.hard_rules.refusal_may_not_drop=false",
    # Every suite, each small: the stored evaluation must hold all of their per-example scores.
    "eval.max_new_tokens=16", "eval.ifeval.max_new_tokens=16", "eval.ifeval.max_prompts=5", "eval.safety.max_prompts=5",
]


def _json(value):
    return json.loads(json.dumps(value))


def _stored(run_id: str, role: str) -> dict:
    return _json(json.loads(Path(tracking.client().download_artifacts(run_id, f"evaluation/{role}.json", str(_tmp()))).read_text()))


def _tmp() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="tunegate-reuse-test-"))


@pytest.fixture(scope="module")
def runs(prefect_harness, base_model_path):
    from flows.retrain import retrain

    first = retrain(params_file=str(DEMO), overrides=QUICK)
    assert first["registered_version"], first["gate"]
    params = load_params(DEMO, QUICK)
    promotion.approve(NAME, first["registered_version"], "alice", "champion for the reuse test", params.gate.approvals)
    second = retrain(params_file=str(DEMO), overrides=QUICK)
    return first, second


def test_second_run_reuses_the_champions_evaluation(runs):
    first, second = runs
    assert second["baseline"] == {**second["baseline"], "source": "champion", "version": first["registered_version"]}
    reuse = second["baseline_evaluation"]
    assert reuse["reused"] is True and reuse["from_run"] == first["run_id"] and reuse["computed_in"] == first["run_id"]
    run1, run2 = tracking.get_run(first["run_id"]), tracking.get_run(second["run_id"])
    # The champion was evaluated as candidate by the run that trained it, under the same key.
    assert reuse["key"] == run2.data.tags["tunegate.eval_key.baseline"] == run1.data.tags["tunegate.eval_key.candidate"]
    assert run2.data.tags["tunegate.eval_reused_from.baseline"] == first["run_id"]
    assert run2.data.tags["tunegate.eval_model.baseline"] == f"runs:/{first['run_id']}/tunegate_model"
    note = f"reused from run `{first['run_id']}` (same model, eval data, suites, code)"
    report = Path(second["evaluation"]["report"])
    assert f"Baseline evaluation {note}." in report.with_suffix(".md").read_text()
    assert f"reused from run <code>{first['run_id']}</code> (same model, eval data, suites, code)" in report.read_text()
    summary_md = Path(tracking.client().download_artifacts(second["run_id"], "summary/summary.md", str(_tmp()))).read_text()
    assert f"- baseline evaluation: {note}" in summary_md
    # MLflow holds the same baseline figures the first run computed for the champion as candidate.
    candidate_metrics = {k.removeprefix("candidate_"): v for k, v in run1.data.metrics.items() if k.startswith("candidate_")}
    baseline_metrics = {k.removeprefix("baseline_"): v for k, v in run2.data.metrics.items() if k.startswith("baseline_")}
    assert baseline_metrics == candidate_metrics and "exact_match" in baseline_metrics
    stored = _stored(second["run_id"], "baseline")
    assert stored["computed_in"] == first["run_id"] and stored["eval_key"]["digest"] == reuse["key"]
    assert {k: v for k, v in stored.items() if k != "eval_key"} == {
        k: v for k, v in _stored(first["run_id"], "candidate").items() if k != "eval_key"
    }
    # The first run's baseline was the base model; it is keyed (path + files) for reuse too.
    assert first["baseline_evaluation"]["key"] == run1.data.tags["tunegate.eval_key.baseline"]


def test_reused_figures_equal_a_fresh_evaluation_of_the_champion(runs):
    """What the second run would have computed with eval.reuse_baseline=false: evaluate the champion
    again here, then compare and gate as the flow does; every figure must be the same."""
    first, second = runs
    params = load_params(DEMO, QUICK + ["eval.reuse_baseline=false"])
    champion = tracking.alias_version(NAME, "champion")
    model_dir = tracking.download_version(champion, _tmp())
    fresh = eval_cache.compute(params, second["data"]["eval_path"], model_dir)

    reused = ModelEvaluation.from_dict(_stored(second["run_id"], "baseline"))
    assert reused == fresh  # every per-example score and output, the loss, the truncation count
    candidate = ModelEvaluation.from_dict(_stored(second["run_id"], "candidate"))
    assert _json(candidate.summary()) == second["candidate"]["metrics"]

    assert _json(fresh.summary()) == second["baseline"]["metrics"]
    deltas = [d.to_dict() for d in compare(fresh, candidate, params.eval)]
    assert _json(deltas) == second["evaluation"]["deltas"]
    decision = decide_promotion(fresh.summary(), candidate.summary(), params.gate, deltas).to_dict()
    assert {"passed": decision["passed"], "reasons": decision["reasons"]} == second["gate"]


def test_the_base_model_evaluation_is_found_by_its_key(runs):
    first, _ = runs
    params = load_params(DEMO, QUICK)
    key = eval_cache.make_key(params, first["data"]["eval_md5"], None, None)
    assert key.digest == first["baseline_evaluation"]["key"]
    found, problems = eval_cache.find_earlier(params.project.name, key)
    assert found is not None and problems == []
    assert _json(found.evaluation.summary()) == first["baseline"]["metrics"]
