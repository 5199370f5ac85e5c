"""The multi-user set-up: `tunegate server` with MLflow's backend store and Prefect's database on PostgreSQL
and artifacts proxied by the MLflow server; the flow runs against it.

Needs PostgreSQL on 127.0.0.1:5432 (trust auth, as on the project's machines and CI); skips elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TUNEGATE = str(Path(sys.executable).parent / "tunegate")
PG = {"host": "127.0.0.1", "port": os.environ.get("TUNEGATE_TEST_PG_PORT", "5432"), "user": "postgres"}


def _pg_unavailable() -> str | None:
    if shutil.which("pg_isready") is None or shutil.which("psql") is None:
        return "pg_isready/psql not installed: no PostgreSQL client on this machine"
    ready = subprocess.run(["pg_isready", "-h", PG["host"], "-p", PG["port"]], capture_output=True, text=True)
    if ready.returncode != 0:
        return f"PostgreSQL does not answer on {PG['host']}:{PG['port']} ({ready.stdout.strip() or ready.returncode})"
    return None


REASON = _pg_unavailable()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(REASON is not None, reason=f"{REASON}; the multi-user test needs it")]


def psql(sql: str, db: str = "test") -> str:
    result = subprocess.run(
        ["psql", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", db, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture()
def databases():
    """Two fresh databases, as docs/deploy.md creates them; dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    names = {"mlflow": f"tunegate_mlflow_{suffix}", "prefect": f"tunegate_prefect_{suffix}"}
    for name in names.values():
        psql(f"CREATE DATABASE {name}")
    try:
        yield names
    finally:
        for name in names.values():
            psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_flow_runs_against_mlflow_and_prefect_on_postgres(databases, base_model_path, demo_data, tmp_path):
    from tunegate.server import free_port

    home = tmp_path / "home"
    prefect_port, mlflow_port = free_port(), free_port()
    env = {**os.environ, "TUNEGATE_HOME": str(home), "COLUMNS": "200",
           "TUNEGATE_MLFLOW_BACKEND_STORE_URI": f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{databases['mlflow']}",
           "TUNEGATE_PREFECT_DATABASE_URL": f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{databases['prefect']}",
           "TUNEGATE_MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "shared-artifacts")}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    out = tmp_path / "server.out"
    server = subprocess.Popen([TUNEGATE, "server", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)],
                              cwd=REPO, env=env, stdout=open(out, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C stops both" not in out.read_text() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        assert server.poll() is None and "Ctrl-C stops both" in out.read_text(), out.read_text()[-3000:]
        assert f"postgresql://{PG['user']}@" in out.read_text()  # the stores it says it uses

        eval_small = tmp_path / "eval_small.jsonl"
        eval_small.write_text("\n".join((demo_data / "eval.jsonl").read_text().splitlines()[::5]) + "\n")
        name = f"pg-{uuid.uuid4().hex[:6]}"
        client_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api", "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}"}
        run = subprocess.run(
            [TUNEGATE, "run", "--json", "--no-wait-for-approval", "--set", f"model.registered_name={name}",
             "--set", "train.max_steps=6", "--set", "eval.ifeval.enabled=false", "--set", "eval.safety.enabled=false",
             "--set", "gate.min_improvement=-1", "--set", "gate.max_family_regression=1", "--set", "gate.rules=[]",
             "--set", f"data.eval=[{{path: {eval_small}, name: demo_eval}}]"],
            cwd=REPO, env=client_env, capture_output=True, text=True, timeout=900,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        assert summary["registered_version"] == "1"

        # The records are in PostgreSQL: MLflow's run and registered version, Prefect's flow run.
        assert psql(f"SELECT status FROM runs WHERE run_uuid = '{summary['run_id']}'", databases["mlflow"]) == "FINISHED"
        assert psql(f"SELECT run_id FROM model_versions WHERE name = '{name}' AND version = 1", databases["mlflow"]) == summary["run_id"]
        assert psql(f"SELECT alias FROM registered_model_aliases WHERE name = '{name}'", databases["mlflow"]) == "candidate"
        assert psql(f"SELECT state_type FROM flow_run WHERE id = '{summary['prefect_flow_run_id']}'", databases["prefect"]) == "COMPLETED"
        # Artifacts went through the MLflow server to its destination, not to the client's disk.
        assert any((tmp_path / "shared-artifacts").rglob("adapter_model.safetensors"))
        assert not (home / "mlflow" / "artifacts").exists() or not any((home / "mlflow" / "artifacts").rglob("*.safetensors"))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)
        assert server.wait(timeout=60) == 0, out.read_text()[-2000:]
