"""`tunegate run` on the shared Alpaca + ShareGPT files: converted, validated, tuned, evaluated, md5s in MLflow."""

from pathlib import Path

import pytest

from tunegate.adapters import mlflow as tracking
from tunegate.data.digest import file_md5
from tunegate.params import load_params

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params" / "shared_mix.yaml"
SHARED = REPO.parent / "shared" / "data" / "instruction"
USER_TASK = "tests/capability_tasks/zh_story_facts.yaml"


def test_alpaca_and_sharegpt_end_to_end(prefect_harness, base_model_path):
    from flows.retrain import retrain

    # Issue #27: a task of the user's own, one lm-eval YAML over a local (Chinese) file named in params, no code.
    summary = retrain(params_file=str(PARAMS), overrides=[
        "train.max_steps=8", "eval.capability.enabled=true", f"eval.capability.tasks=[{USER_TASK}]",
        "gate.capability_may_not_drop={max_drop: 0.5}",
    ])
    expected = {
        "alpaca": file_md5(SHARED / "alpaca_en_demo.json"),
        "glaive_toolcall": file_md5(SHARED / "glaive_toolcall_en_demo.json"),
    }
    assert summary["data"]["sources"] == expected
    run = tracking.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    for name, md5 in expected.items():
        assert run.data.tags[f"tunegate.source_md5.{name}"] == md5
    digests = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert digests["alpaca"] == expected["alpaca"] and digests["glaive_toolcall"] == expected["glaive_toolcall"]
    assert run.data.tags["tunegate.validation"] == "passed"
    assert run.data.metrics["data_dropped_records"] > 0  # 'drop' rules removed over-long and duplicate records
    assert len(tracking.client().get_metric_history(run.info.run_id, "train_loss")) >= 1
    assert set(summary["candidate"]["metrics"]["per_family"]) == {"alpaca", "glaive_toolcall"}
    # Open-ended answers, gated on response loss (params: gate.primary_metric): exact match stays 0, the loss
    # falls from the base model's, and the candidate is registered on the loss's interval, per family too.
    gate = summary["gate"]
    assert summary["candidate"]["metrics"]["exact_match"] == summary["baseline"]["metrics"]["exact_match"] == 0.0
    assert gate["reasons"][0].startswith("PASS response_loss superiority: baseline "), gate["reasons"]
    losses = summary["baseline"]["metrics"]["by_category"]["response_loss"]
    families = {r.split(" family ")[1].split(" ")[0]: r for r in gate["reasons"] if " family " in r.split(":")[0]}
    assert set(families) == {"alpaca", "glaive_toolcall"}, "\n".join(gate["reasons"])
    for family, reason in families.items():  # judged on the family's response loss, not its exact match
        assert f"baseline {losses[family]:.3f} -> candidate " in reason or f"({losses[family]:.3f} -> " in reason, reason
    assert "a significant rise may not exceed 0.050" in families["alpaca"]
    assert gate["passed"] and summary["registered_version"] is not None, gate["reasons"]
    # `tunegate status` shows the figure the run was gated on, not exact match
    from rich.console import Console

    from tunegate.operations.status import collect_status, render_status

    status = collect_status(load_params(PARAMS), last=5)
    [row] = [r for r in status["runs"] if r["run_id"] == summary["run_id"]]
    assert row["primary_metric"] == "response_loss"
    assert row["candidate_primary"] == pytest.approx(summary["candidate"]["metrics"]["response_loss"])
    console = Console(record=True, width=200)
    render_status(status, console)
    table = console.export_text()
    assert " loss " in table and f"{row['candidate_primary']:.3f}" in table, table
    # The user's task: per item in --json, per task in MLflow, gated and shown in the report, its file's md5 logged.
    for role in ("baseline", "candidate"):
        score = summary[role]["metrics"]["by_category"]["capability"]["zh_story_facts"]
        assert 0.0 <= score <= 1.0 and run.data.metrics[f"{role}_capability.zh_story_facts"] == pytest.approx(score)
    [cap] = [r for r in gate["reasons"] if "capability zh_story_facts may not drop" in r]
    assert cap.startswith("PASS") and "a significant drop may not exceed 0.500" in cap
    report = Path(summary["evaluation"]["report"]).with_suffix(".md").read_text(encoding="utf-8")
    assert "| capability | zh_story_facts |" in report and "significant drop <= 0.500" in report
    assert run.data.tags["tunegate.eval_md5.capability/zh_story_facts/zh_story_facts.jsonl"] == file_md5(REPO / "tests/capability_tasks/zh_story_facts.jsonl")
    artifacts = {a.path for a in tracking.client().list_artifacts(run.info.run_id, "validation")}
    assert {"validation/report.md", "validation/report.json", "validation/data_docs"} <= artifacts
    assert load_params(PARAMS).project.name == "tunegate-shared-mix"
