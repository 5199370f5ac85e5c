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


def test_alpaca_and_sharegpt_end_to_end(prefect_harness, base_model_path):
    from flows.retrain import retrain

    summary = retrain(params_file=str(PARAMS), overrides=["train.max_steps=8"])
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
    assert summary["gate"]["reasons"]
    artifacts = {a.path for a in tracking.client().list_artifacts(run.info.run_id, "validation")}
    assert {"validation/report.md", "validation/report.json", "validation/data_docs"} <= artifacts
    assert load_params(PARAMS).project.name == "tunegate-shared-mix"
