"""Issue #25, acceptance 2: a suite that lives in the tests folder, registered with one line, shows in a real
`tunegate run`'s --json summary, its MLflow run, its report and a gate rule; without that line it shows in
none of them. Both runs are short (one training step on a slice of the demo data, only the reference suite
beside the planted one): what is checked is where the suite's figures go, not the model's quality."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunegate.adapters import mlflow as tracking
from tunegate.cli import app
from tunegate.evaluation.suites import REGISTRY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
import planted_suite  # noqa: E402

pytestmark = pytest.mark.integration


def _slice(source: Path, out: Path, per_family: int) -> Path:
    """The first ``per_family`` records of each family of a demo JSONL file."""
    taken: dict[str, int] = {}
    lines = []
    for line in source.read_text(encoding="utf-8").splitlines():
        family = json.loads(line).get("family", "")
        if taken.get(family, 0) < per_family:
            taken[family] = taken.get(family, 0) + 1
            lines.append(line)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def small_run(demo_data, tmp_path_factory, prefect_harness, base_model_path):
    folder = tmp_path_factory.mktemp("slices")
    train = _slice(demo_data / "train.jsonl", folder / "train.jsonl", 6)
    evaluation = _slice(demo_data / "eval.jsonl", folder / "eval.jsonl", 3)
    return [
        "project.name=tunegate-suite-registry", "data.dvc_stage=null", f"data.train=[{{path: '{train}', name: demo}}]",
        f"data.eval=[{{path: '{evaluation}', name: demo_eval}}]", "validation.coverage=[]", "validation.min_records=1",
        "validation.refusal_share=[0, 1]", "train.max_steps=1", "train.logging_steps=1", "eval.max_new_tokens=8",
        "eval.reference.rouge=false", "eval.ifeval.enabled=false", "eval.safety.enabled=false", "eval.capability.enabled=false", "eval.judge.enabled=false", "gate.capability_may_not_drop=null", "gate.min_win_rate=null",
        "eval.bootstrap_resamples=200", "gate.rules=[{metric: response_loss, max_regression: 0.5}]",  # ifeval is off
        "gate.min_improvement=-1", "gate.min_improvement_over_base=null", "gate.min_family_items=1",
    ]


def _run(overrides: list[str]) -> dict:
    result = CliRunner().invoke(app, ["run", "--json", *[a for item in overrides for a in ("--set", item)]])
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _views(summary: dict) -> dict[str, str]:
    """Every place a suite's figures go, as text: --json, the MLflow run's metrics and params, the report, the gate."""
    run = tracking.get_run(summary["run_id"])
    return {
        "json": json.dumps(summary),
        "mlflow_metrics": " ".join(run.data.metrics),
        "mlflow_params": " ".join(run.data.params),
        "report": Path(summary["evaluation"]["report"]).with_suffix(".md").read_text(encoding="utf-8"),
        "gate": "\n".join(summary["gate"]["reasons"]),
    }


def test_a_planted_suite_shows_everywhere_and_without_its_line_nowhere(small_run):
    planted = ["model.registered_name=tunegate-suite-registry-with", "eval.planted.max_words=4",
               "gate.rules=[{metric: planted_brevity, max_regression: 1}]"]
    with REGISTRY.registered(planted_suite.SUITE):  # the one registration line
        summary = _run(small_run + planted)
    views = _views(summary)
    run = tracking.get_run(summary["run_id"])
    for role in ("baseline", "candidate"):
        figure = summary[role]["metrics"]["planted_brevity"]
        assert 0.0 <= figure <= 1.0 and run.data.metrics[f"{role}_planted_brevity"] == figure
    [delta] = [d for d in summary["evaluation"]["deltas"] if (d["metric"], d["category"]) == ("planted_brevity", "all")]
    assert run.data.metrics["delta_planted_brevity"] == delta["delta"] and run.data.params["eval.planted.max_words"] == "4"
    assert f"| planted | planted_brevity | {delta['baseline']:.3f} | {delta['candidate']:.3f} |" in views["report"]
    [reason] = [r for r in summary["gate"]["reasons"] if "planted_brevity[all] regression" in r]
    assert f"- {reason}\n" in views["report"]

    # The line removed: the same run knows nothing of it; a rule naming it stops at the preflight.
    refused = CliRunner().invoke(app, ["run", "--json", *[a for item in small_run + planted[2:] for a in ("--set", item)]])
    assert refused.exit_code == 2 and "gate.rules[0].metric: no registered suite computes 'planted_brevity'" in refused.output
    without = _views(_run([*small_run, "model.registered_name=tunegate-suite-registry-without"]))
    assert {name: "planted" in text for name, text in without.items()} == dict.fromkeys(without, False)
    assert "exact_match" in without["mlflow_metrics"] and "| reference | exact_match |" in without["report"]
