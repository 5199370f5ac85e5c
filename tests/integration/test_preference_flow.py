"""Issue #28: the preference stage through the real flow, CLI, MLflow registry and audit trail.

1. SFT then DPO on *swapped* pairs (chosen and rejected exchanged): the DPO model is worse than its SFT parent
   on the held-out pairs and is refused; the SFT parent goes through the gate instead and is registered, with
   the reason, as the run's one version.
2. That SFT version approved, a preference-only run from it (``preference.start_from: champion``): DPO from the
   champion on the real pairs, its reference the champion; the DPO model beats its parent and is registered.
   Every figure of the preference stage is the same in ``--json``, MLflow, the report and the model card.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunegate import tags
from tunegate.adapters import mlflow as tracking
from tunegate.cli import app
from tunegate.governance import promotion

REPO = Path(__file__).resolve().parents[2]
NAME = "tunegate-preference-test"
# Lean: the suites that time or check other things off; the SFT stage shorter (it still beats the base model).
LEAN = ["eval.capability.enabled=false", "eval.judge.enabled=false",
        "gate.capability_may_not_drop=null", "gate.min_win_rate=null", "train.epochs=2", "eval.safety.max_prompts=20",
        "eval.ifeval.max_prompts=10"]


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    """params/demo_preference.yaml for a registered model of its own (the demo's versions stay the other tests')."""
    import yaml

    raw = yaml.safe_load((REPO / "params" / "demo_preference.yaml").read_text())
    raw["project"]["name"] = raw["model"]["registered_name"] = NAME
    path = tmp_path_factory.mktemp("params") / "preference.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli_run(home: Path, params_file: Path, overrides: list[str]) -> dict:
    env = {**os.environ, "TUNEGATE_HOME": str(home), "COLUMNS": "300"}
    env.pop("PREFECT_API_URL", None)
    sets = [arg for item in [*LEAN, *overrides] for arg in ("--set", item)]
    proc = subprocess.run([sys.executable, "-m", "tunegate.cli", "run", "--params", str(params_file), "--json", *sets],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def swapped_run(tunegate_home, demo_data, params_file, tmp_path_factory):
    pairs = [json.loads(line) for line in (demo_data / "preference" / "train.jsonl").read_text().splitlines()]
    swapped = tmp_path_factory.mktemp("swapped") / "swapped.jsonl"
    swapped.write_text("".join(json.dumps({**p, "chosen": p["rejected"], "rejected": p["chosen"]}) + "\n" for p in pairs))
    return cli_run(tunegate_home, params_file, [f"preference.data.train=[{{path: {swapped}, name: swapped_pairs}}]"])


def test_a_dpo_model_worse_than_its_parent_is_refused_and_the_sft_parent_registered(swapped_run, params_file):
    summary = swapped_run
    preference = summary["preference"]
    # The DPO model, trained to prefer the wrong answers, loses to its parent on the held-out (correct) pairs ...
    held = preference["comparisons"]["parent"]["held_out"]
    assert held["accuracy"] < 0.5 and held["high"] < 0.5, held
    assert held["candidate_prefers_chosen"] < held["parent_prefers_chosen"]
    assert not preference["gate"]["passed"]
    failed = [r for r in preference["gate"]["reasons"] if r.startswith("FAIL")]
    assert any(r.startswith("FAIL vs parent: preference_accuracy gain") for r in failed), failed
    # ... so the run registers its SFT parent, saying which and why: one version.
    assert summary["outcome"] == "registered" and summary["candidate"]["stage"] == "sft" and summary["candidate"]["role"] == "parent"
    assert preference["registered_stage"] == "sft"
    assert "refused" in preference["why"] and "SFT parent passed the gate" in preference["why"]
    assert summary["gate"]["passed"] and not any(r.startswith("FAIL") for r in summary["gate"]["reasons"])
    version = summary["registered_version"]
    assert [v.version for v in tracking.versions_of_run(NAME, summary["run_id"])] == [version]
    ref = tracking.get_version(NAME, version)
    assert ref.tags[tags.REGISTERED_STAGE] == "sft" and ref.tags[tags.MODEL_ARTIFACT] == "tunegate_model"
    assert ref.tags[tags.PARENT] == "sft" and ref.tags[tags.REFERENCE] == "parent:sft"
    # The figures the summary shows for the registered model are the SFT model's (MLflow role "parent").
    run = tracking.get_run(summary["run_id"])
    assert run.data.metrics["parent_exact_match"] == summary["candidate"]["metrics"]["exact_match"]
    assert run.data.metrics["preference_accuracy"] == held["accuracy"]
    # The reference was checked equal to the parent before the first step, and both stages are in the lineage.
    assert preference["reference"]["is_parent"] and preference["reference"]["check"]["max_abs_logp_difference"] <= 1e-4
    out = CliRunner().invoke(app, ["lineage", version, "--params", str(params_file)])
    assert out.exit_code == 0, out.output
    lineage = out.output
    assert "SFT model (the DPO model was refused)" in lineage and "reference parent:sft" in lineage, lineage
    assert preference["data"]["train_md5"] in lineage and summary["data_md5"] in lineage
    from tunegate.governance import audit

    events = [e["event"] for e in audit.store().entries(NAME) if e["data"].get("run_id") == summary["run_id"]]
    for event in ("preference_data_versioned", "preference_validation", "preference_training_finished", "preference_decision"):
        assert event in events, events


def test_preference_only_run_from_the_approved_sft_champion(swapped_run, tunegate_home, params_file):
    v1 = swapped_run["registered_version"]
    result = CliRunner().invoke(app, ["approve", v1, "--reviewer", "rita", "--reason", "SFT release", "--params", str(params_file)])
    assert result.exit_code == 0, result.output
    assert tracking.alias_version(NAME, "champion").version == v1

    summary = cli_run(tunegate_home, params_file, ["preference.start_from=champion"])
    preference = summary["preference"]
    # No SFT stage: DPO from the champion, which is its reference, its parent and the baseline.
    assert preference["sft"] is None and preference["start_from"] == "champion"
    assert preference["parent"]["kind"] == "version" and preference["parent"]["version"] == v1
    assert preference["reference"]["version"] == v1 and preference["reference"]["check"]["max_abs_logp_difference"] <= 1e-4
    assert summary["baseline"]["source"] == "champion" and summary["baseline"]["version"] == v1
    comparisons = preference["comparisons"]
    assert comparisons["parent"]["deltas"] and comparisons["baseline"]["deltas"] and comparisons["base"]["deltas"]
    held = comparisons["parent"]["held_out"]
    assert held["accuracy"] > 0.5 and held["low"] > 0.5, held
    assert preference["gate"]["passed"] and summary["outcome"] == "registered" and summary["candidate"]["stage"] == "preference"
    version = summary["registered_version"]
    ref = tracking.get_version(NAME, version)
    assert ref.tags[tags.MODEL_ARTIFACT] == "preference/tunegate_model" and ref.tags[tags.PARENT] == f"version:{v1}"
    assert ref.tags[tags.PARENT_VERSION] == v1 and ref.tags[tags.REFERENCE] == f"parent:version:{v1}"

    # One set of figures: --json, MLflow, the report and the model card.
    run = tracking.get_run(summary["run_id"])
    metrics = run.data.metrics
    for metric, value in summary["candidate"]["metrics"].items():
        if isinstance(value, float):
            assert metrics[f"candidate_{metric}"] == value, metric
    assert metrics["preference_accuracy"] == held["accuracy"]
    assert metrics["preference_accuracy_low"] == held["low"] and metrics["preference_accuracy_high"] == held["high"]
    for d in comparisons["parent"]["deltas"]:
        if d["metric"] not in ("preference_accuracy", "judge_win_rate"):
            assert metrics[f"parent_delta_{d['metric']}{'' if d['category'] == 'all' else '.' + d['category']}"] == d["delta"]
    report_md = Path(summary["evaluation"]["report"]).with_suffix(".md").read_text()
    line = (f"implicit reward prefers the chosen answer in **{held['accuracy']:.3f}** of {held['pairs']} "
            f"(interval [{held['low']:.3f}, {held['high']:.3f}]")
    assert line in report_md
    for d in comparisons["parent"]["deltas"]:
        if d["category"] == "all":
            assert f"| {d['metric']} | {d['baseline']:.3f} | {d['candidate']:.3f} | {d['delta']:+.3f} |" in report_md, d["metric"]
    for reason in preference["gate"]["reasons"]:
        assert f"- {reason}\n" in report_md, reason
    card = tracking.client().get_model_version(NAME, version).description
    assert "## Preference tuning" in card and "this version is the run's DPO model" in card
    assert f"held-out implicit-reward accuracy {held['accuracy']:.3f} [{held['low']:.3f}, {held['high']:.3f}] over {held['pairs']} pairs" in card
    assert f"version {v1}" in card and preference["data"]["train_md5"] in card
    ok, message = promotion.verify(NAME)
    assert ok, message

