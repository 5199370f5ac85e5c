"""The MLflow server goes away in the middle of a run: Prefect retries the transient failure, then the
run fails cleanly; nothing is registered or promoted; the failure is in the audit trail."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from tunegate import audit, failures
from tunegate.server import ServerConfig, free_port, start_mlflow, stop, wait_healthy

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
QUICK = ["train.max_steps=6", "eval.ifeval.enabled=false", "eval.safety.enabled=false", "gate.min_improvement=-1",
         "gate.max_family_regression=1", "gate.rules=[]", "eval.bootstrap_resamples=200"]


def test_mlflow_server_down_mid_run_fails_cleanly_after_retries(prefect_harness, base_model_path, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from flows.retrain import retrain

    config = ServerConfig(home=tmp_path / "mlflow-home", mlflow_port=free_port())
    server = start_mlflow(config)
    try:
        wait_healthy(server)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", config.mlflow_url)
        # The audit table lives in the server's database: appends go on while the server is down.
        monkeypatch.setenv("TUNEGATE_AUDIT_DB", config.backend_store_uri())
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail each request fast; Prefect retries the task
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
        name = f"outage-{uuid.uuid4().hex[:6]}"
        already = len(audit.store().entries())
        killed = {}

        def kill_when_training_starts():
            # The fault: the tracking server stops once the data has been validated, as tuning begins.
            deadline = time.time() + 600
            while time.time() < deadline:
                new = audit.store().entries()[already:]
                started = [e for e in new if e["event"] == "run_started"]
                if started and any(e["event"] == "validation" and e["data"]["run_id"] == started[0]["data"]["run_id"] for e in new):
                    killed["run_id"] = started[0]["data"]["run_id"]
                    killed["flow_run_id"] = started[0]["data"]["flow_run_id"]
                    stop([server])
                    return
                time.sleep(0.1)

        killer = threading.Thread(target=kill_when_training_starts, daemon=True)
        killer.start()
        started = time.monotonic()
        with pytest.raises(Exception) as raised:
            retrain(params_file=str(REPO / "params" / "demo.yaml"), overrides=[f"model.registered_name={name}", *QUICK])
        took = time.monotonic() - started
        killer.join(timeout=10)
        assert killed, "the server was never stopped: the run did not reach tuning"
        assert server.process.poll() is not None
    finally:
        stop([server])

    # Prefect retried the task that lost the server (1 attempt + 3 retries), then failed the flow run.
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(killed["flow_run_id"])
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])), sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=50,
        )
    assert flow_run.state.is_failed()
    failed = [t for t in task_runs if t.state and t.state.is_failed()]
    assert [t.name.split("-")[0] for t in failed] == ["tune"], [t.name for t in failed]
    assert failed[0].run_count == 4, failed[0].run_count
    assert took >= 2 + 5 + 15  # the retry delays were waited out
    assert "Max retries exceeded" in str(raised.value) or "Connection refused" in str(raised.value)

    # The failure is in the audit trail, which is intact; nothing was registered, so nothing can be promoted.
    ok, message, entries = audit.store().verify()
    failure = [e for e in entries[already:] if e["event"] == "run_failed" and e["data"]["flow_run_id"] == killed["flow_run_id"]]
    assert len(failure) == 1 and ("Max retries exceeded" in failure[0]["data"]["reason"] or "refused" in failure[0]["data"]["reason"])
    assert not [e for e in entries[already:] if e["event"] in ("registered", "alias_moved", "approval")]
    assert ok, message
    store = MlflowClient(tracking_uri=config.backend_store_uri(), registry_uri=config.backend_store_uri())
    assert store.search_model_versions(f"name = '{name}'") == []
    assert store.get_run(killed["run_id"]).info.status == "RUNNING"  # the hook could not reach the server to mark it

    # The hook remembered the failure; once the server is back, the next run marks the MLflow run FAILED.
    assert killed["flow_run_id"] in failures.pending_file().read_text()
    again = start_mlflow(ServerConfig(home=config.home, mlflow_port=free_port()))
    try:
        wait_healthy(again)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", again.url)
        done = failures.reconcile()
        assert [d["mlflow_run_ids"] for d in done if d["flow_run_id"] == killed["flow_run_id"]] == [[killed["run_id"]]]
        run = MlflowClient(tracking_uri=again.url).get_run(killed["run_id"])
        assert run.info.status == "FAILED" and run.data.tags["tunegate.outcome"] == "failed"
        assert killed["flow_run_id"] not in (failures.pending_file().read_text() if failures.pending_file().exists() else "")
    finally:
        stop([again])
