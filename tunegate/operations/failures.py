"""Failures the tracking server did not hear about.

When a flow run fails because MLflow is unreachable, its failure hook cannot mark the
MLflow run FAILED. It remembers the failure here instead (under ``$TUNEGATE_HOME``);
the next run that reaches the server marks those runs FAILED with the original reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunegate import tags
from tunegate.adapters import mlflow as tracking


def pending_file() -> Path:
    from tunegate.paths import tunegate_home

    return tunegate_home() / "runs" / "unrecorded_failures.jsonl"


def remember(experiment: str, flow_run_id: str, reason: str) -> None:
    path = pending_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"experiment": experiment, "flow_run_id": flow_run_id, "reason": reason}) + "\n")


def runs_of(experiment: str, flow_run_id: str) -> list[Any]:
    """The MLflow runs a flow run opened (raises when MLflow is down)."""
    return tracking.find_runs_by_tag(experiment, tags.PREFECT_FLOW_RUN_ID, flow_run_id)


def mark_failed(runs: list[Any], reason: str) -> list[str]:
    """Mark MLflow runs FAILED with the reason; returns their ids (raises when MLflow is down)."""
    for run in runs:
        tracking.set_tags(run.info.run_id, {tags.FAILURE: reason[:4000], tags.OUTCOME: "failed"})
        tracking.end_run(run.info.run_id, "FAILED")
    return [run.info.run_id for run in runs]


def reconcile() -> list[dict[str, Any]]:
    """Record remembered failures on the tracking server; those it still cannot take stay remembered."""
    path = pending_file()
    if not path.is_file():
        return []
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    done, left = [], []
    for entry in entries:
        try:
            entry["mlflow_run_ids"] = mark_failed(runs_of(entry["experiment"], entry["flow_run_id"]), entry["reason"])
            done.append(entry)
        except Exception:  # still unreachable: keep it for the next run
            left.append(entry)
    if left:
        path.write_text("".join(json.dumps(e) + "\n" for e in left), encoding="utf-8")
    else:
        path.unlink(missing_ok=True)
    return done
