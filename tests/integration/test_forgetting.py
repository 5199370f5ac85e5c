"""Forgetting, for real (issue #27): full fine-tuning at a high learning rate makes the demo base model forget
the English it was pretrained on (story continuation), and the gate refuses it for that task alone; the demo's
LoRA candidate, trained on the same data, keeps it and passes."""

from pathlib import Path

import pytest

from tunegate.data.demo import generate_demo_records
from tunegate.evaluation.suites import compare, evaluate_suites
from tunegate.governance.gate import decide_promotion
from tunegate.params import load_params
from tunegate.tuning.modeling import load_base_model, load_saved_model, load_tokenizer
from tunegate.tuning.training import train_model

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SETTINGS = [
    "train.max_steps=80", "eval.ifeval.enabled=false", "eval.safety.enabled=false", "eval.judge.enabled=false",
    "gate.rules=[]", "gate.min_win_rate=null",
    "eval.capability.tasks=[story_continuation]", "eval.capability.max_items=100", "eval.bootstrap_resamples=1000",
]
# Full fine-tuning of every weight at 0.01 (the demo's LoRA: 0.005 on adapters): it learns the tasks and
# forgets TinyStories' English (story continuation 1.00 -> ~0.65 here).
OVER_TRAINED = ["train.method=full", "train.learning_rate=0.01"]


def test_an_over_trained_model_is_refused_for_forgetting_alone_and_the_lora_candidate_passes(tmp_path, base_model_path, demo_data):
    train, evaluation = generate_demo_records(21, 150, 30, ["story_start", "json_color", "reverse_words"])
    params = load_params(REPO / "params" / "demo.yaml", SETTINGS)
    assert params.gate.capability_may_not_drop.max_drop == 0.10  # the demo policy's bound
    results = {"base": evaluate_suites(load_base_model(params.base_model_path()),
                                       load_tokenizer(params.base_model_path(), params.model.chat_template), evaluation, params.eval)}
    for name, overrides in (("lora", []), ("over_trained", OVER_TRAINED)):
        run = train_model(load_params(REPO / "params" / "demo.yaml", SETTINGS + overrides), train, tmp_path / name)
        model, tokenizer = load_saved_model(run.model_dir)
        results[name] = evaluate_suites(model, tokenizer, evaluation, params.eval)

    def gate(candidate):  # the first run's gate: the baseline is the base model
        deltas = [d.to_dict() for d in compare(results["base"], results[candidate], params.eval)]
        return decide_promotion(results["base"].summary(), results[candidate].summary(), params.gate, deltas, deltas)

    story = {name: r.by_category("capability")["story_continuation"] for name, r in results.items()}
    assert story["base"] >= 0.95 and story["over_trained"] <= story["base"] - 0.2, story
    # Both learned the tasks (the primary rule and the over-base rule pass for both) ...
    assert results["over_trained"].mean("exact_match") > results["base"].mean("exact_match") + 0.2
    refused = gate("over_trained")
    failed = [r.split(":")[0] for r in refused.reasons if r.startswith("FAIL")]
    # ... but only the over-trained one forgot: refused for that task, and for nothing else.
    assert failed == ["FAIL capability story_continuation may not drop"], refused.reasons
    passed = gate("lora")
    assert passed.passed, passed.reasons
    assert any(r.startswith("PASS capability story_continuation may not drop: base") or
               r.startswith("PASS capability story_continuation may not drop: baseline") for r in passed.reasons), passed.reasons
