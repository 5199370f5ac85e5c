"""The multi-user set-up: `tunegate server` with MLflow's backend store and Prefect's database on PostgreSQL
and artifacts proxied by the MLflow server; two "hosts" run the flow against it and race approvals,
and the audit trail is one hash-chained table in the same PostgreSQL.

Needs PostgreSQL on 127.0.0.1:5432 (trust auth, as on the project's machines and CI); skips elsewhere.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TUNEGATE = str(Path(sys.executable).parent / "tunegate")
PG = {"host": "127.0.0.1", "port": os.environ.get("TUNEGATE_TEST_PG_PORT", "5432"), "user": "postgres"}
# The smallest run that still trains, evaluates against the base model, passes the gate and registers; host B's
# 6-step model takes alias candidate from host A's 300-step one only because the newest wins (replace_waiting).
TINY_RUN = ["--set", "train.max_steps=6", "--set", "train.batch_size=8", "--set", "eval.max_new_tokens=8",
            "--set", "eval.ifeval.enabled=false", "--set", "eval.safety.enabled=false", "--set", "eval.capability.enabled=false",
            "--set", "eval.judge.enabled=false", "--set", "gate.capability_may_not_drop=null", "--set", "gate.min_win_rate=null",
            "--set", "gate.min_improvement=-1", "--set", "gate.min_improvement_over_base=null", "--set", "gate.max_family_regression=1", "--set", "gate.rules=[]",
            "--set", "gate.replace_waiting=always"]
RUN_EVENTS = ("run_started", "gate_decision", "registered", "run_finished")
RACE_EVENTS = ("approval", "approval_refused", "alias_moved")


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


def pg_url(db: str) -> str:
    return f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{db}"


def sql_text(value: str) -> str:
    """A PostgreSQL string literal (dollar-quoted: the audit bodies are JSON full of quotes)."""
    assert "$tg$" not in value
    return f"$tg${value}$tg$"


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


@dataclass
class Host:
    """A client machine: its own $TUNEGATE_HOME (nothing shared with the other host or the server),
    the server's URLs and the shared audit database."""

    label: str
    home: Path
    env: dict[str, str]

    @property
    def params(self) -> str:
        return str(self.home / "params.yaml")

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen([TUNEGATE, *args], cwd=REPO, env={**self.env, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def tunegate(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return finish(self.start(*args), timeout)


def finish(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def said(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def make_host(label: str, tmp_path: Path, base_env: dict[str, str], clients: dict[str, str], model: str, demo_data: Path) -> Host:
    home = tmp_path / f"host-{label}"
    home.mkdir()
    eval_small = home / "eval_small.jsonl"
    eval_small.write_text("\n".join((demo_data / "eval.jsonl").read_text().splitlines()[::5]) + "\n")
    demo = (REPO / "params" / "demo.yaml").read_text()
    params = demo.replace("registered_name: tunegate-demo-assistant", f"registered_name: {model}")
    params = params.replace("- {path: data/demo/eval.jsonl, name: demo_eval}", f"- {{path: {eval_small}, name: demo_eval}}")
    assert params.count(model) == 1 and params.count(str(eval_small)) == 1, "params/demo.yaml changed shape"
    (home / "params.yaml").write_text(params)
    return Host(label, home, {**base_env, **clients, "TUNEGATE_HOME": str(home), "TUNEGATE_ACTOR": f"ivan-{label}"})


def test_two_hosts_run_and_race_approvals_on_postgres(databases, base_model_path, demo_data, tmp_path):
    from mlflow import MlflowClient

    from tunegate.paths import free_port

    server_home = tmp_path / "server-home"
    prefect_port, mlflow_port = free_port(), free_port()
    base_env = {**os.environ, "COLUMNS": "200"}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "TUNEGATE_AUDIT_DB", "TUNEGATE_AUDIT_DIR", "TUNEGATE_ACTOR",
                "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        base_env.pop(key, None)
    server_env = {**base_env, "TUNEGATE_HOME": str(server_home),
                  "TUNEGATE_MLFLOW_BACKEND_STORE_URI": pg_url(databases["mlflow"]),
                  "TUNEGATE_PREFECT_DATABASE_URL": f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{databases['prefect']}",
                  "TUNEGATE_MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "shared-artifacts")}
    out = tmp_path / "server.out"
    server = subprocess.Popen([TUNEGATE, "server", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)],
                              cwd=REPO, env=server_env, stdout=open(out, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C stops both" not in out.read_text() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        assert server.poll() is None and "Ctrl-C stops both" in out.read_text(), out.read_text()[-3000:]
        assert f"postgresql://{PG['user']}@" in out.read_text()  # the stores it says it uses

        mlflow_db = databases["mlflow"]
        name = f"pg-{uuid.uuid4().hex[:6]}"
        clients = {"PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api", "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                   "TUNEGATE_AUDIT_DB": pg_url(mlflow_db)}
        a, b = (make_host(label, tmp_path, base_env, clients, name, demo_data) for label in ("a", "b"))

        # --- each host runs once, B started while A runs: B queues behind A on the Prefect global concurrency
        # limit tunegate-<model> (in Prefect's PostgreSQL), so version 1 comes from host A, version 2 from host B.
        # A trains longer, so it still holds the slot when B, started once A holds it, asks for it.
        run_args = ("run", "--json", "--no-wait-for-approval", "--params", a.params, *TINY_RUN, "--set", "train.max_steps=300")
        started_a = a.start(*run_args)
        deadline = time.monotonic() + 600
        holding = ""
        while not holding and started_a.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            holding = psql("SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                           "WHERE t.key = 'tunegate.queue' AND t.value = 'holding'", mlflow_db)
        assert holding, "host A's run never took its run slot"
        limit = f"tunegate-{name}"
        assert psql(f"SELECT \"limit\" || '/' || active_slots FROM concurrency_limit_v2 WHERE name = '{limit}'", databases["prefect"]) == "1/1"
        started_b = b.start("run", "--json", "--no-wait-for-approval", "--params", b.params, *TINY_RUN)
        finished = {"a": finish(started_a, 900), "b": finish(started_b, 900)}
        runs = {}
        for host, version in ((a, "1"), (b, "2")):
            run = finished[host.label]
            assert run.returncode == 0, said(run)
            assert "Traceback" not in run.stdout + run.stderr, said(run)
            summary = json.loads(run.stdout.strip().splitlines()[-1])
            assert summary["registered_version"] == version
            if version == "2":  # compared with host A's version 1, which waited for review: replaced by policy
                assert (summary["waiting"]["version"], summary["waiting"]["policy"], summary["waiting"]["replace"]) == ("1", "always", True)
            runs[host.label] = summary["run_id"]

            # The records are in PostgreSQL: MLflow's run and registered version, Prefect's flow run.
            assert psql(f"SELECT status FROM runs WHERE run_uuid = '{summary['run_id']}'", mlflow_db) == "FINISHED"
            assert psql(f"SELECT run_id FROM model_versions WHERE name = '{name}' AND version = {version}", mlflow_db) == summary["run_id"]
            assert psql(f"SELECT state_type FROM flow_run WHERE id = '{summary['prefect_flow_run_id']}'", databases["prefect"]) == "COMPLETED"
            # Evaluated against the base model: nothing was approved yet.
            assert psql(f"SELECT value FROM model_version_tags WHERE name = '{name}' AND version = {version} "
                        "AND key = 'tunegate.baseline_version'", mlflow_db) == ""
        # Host B's version took alias candidate from host A's (both ran; B's registered last).
        assert psql(f"SELECT alias || '=' || version FROM registered_model_aliases WHERE name = '{name}'", mlflow_db) == "candidate=2"
        log_b = finished["b"].stdout + finished["b"].stderr
        assert f"waiting for the run slot of {name}" in log_b and f"held by run {runs['a']}, trigger manual" in log_b, said(finished["b"])
        assert "after waiting" in log_b
        assert psql(f"SELECT active_slots FROM concurrency_limit_v2 WHERE name = '{limit}'", databases["prefect"]) == "0"
        # Artifacts went through the MLflow server to its destination, not to the clients' disks.
        assert len(list((tmp_path / "shared-artifacts").rglob("adapter_model.safetensors"))) >= 2
        for host in (a, b):
            assert not any((host.home / "mlflow").rglob("*.safetensors"))

        # --- the race: both hosts approve at once; version 1 is superseded -------------------------------
        race = {
            "alice": a.start("approve", "2", "--reviewer", "alice", "--reason", "host A: metrics fine", "--params", a.params),
            "bob": b.start("approve", "2", "--reviewer", "bob", "--reason", "host B: safety fine", "--params", b.params),
            "carol": a.start("approve", "1", "--reviewer", "carol", "--reason", "host A: the older one", "--params", a.params),
        }
        results = {reviewer: finish(process) for reviewer, process in race.items()}
        report = "\n".join(f"{reviewer}: {said(result)}" for reviewer, result in results.items())
        winners = [reviewer for reviewer, result in results.items() if result.returncode == 0]
        assert len(winners) == 1 and winners[0] in ("alice", "bob"), report
        winner = winners[0]
        loser = "bob" if winner == "alice" else "alice"
        assert "champion -> version 2" in results[winner].stdout, report
        assert results[loser].returncode == 1 and results["carol"].returncode == 1, report
        assert "not the current candidate" in results["carol"].stderr, report

        # Exactly one champion, version 2: as MLflow says and as its table in PostgreSQL holds.
        registry = MlflowClient(tracking_uri=clients["MLFLOW_TRACKING_URI"], registry_uri=clients["MLFLOW_TRACKING_URI"])
        assert registry.get_model_version_by_alias(name, "champion").version == "2"
        assert dict(registry.get_registered_model(name).aliases) == {"champion": "2"}
        assert psql(f"SELECT alias || '=' || version FROM registered_model_aliases WHERE name = '{name}'", mlflow_db) == "champion=2"

        # --- one chain, verified from both hosts (and from the server's own home via server.json) --------
        checks = {
            "verify a": a.start("audit", "verify", "--params", a.params),
            "verify b": b.start("audit", "verify", "--params", b.params),
            "export b": b.start("audit", "export", "--out", str(b.home / "trail.jsonl"), "--params", b.params),
            "history a": a.start("history", "--alias", "champion", "--json", "--params", a.params),
            "verify server home": subprocess.Popen(
                [TUNEGATE, "audit", "verify", "--params", a.params], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**base_env, "TUNEGATE_HOME": str(server_home), "MLFLOW_TRACKING_URI": clients["MLFLOW_TRACKING_URI"]}),
        }
        done = {what: finish(process) for what, process in checks.items()}
        for what, result in done.items():
            assert result.returncode == 0, f"{what}: {said(result)}"
        lines = (b.home / "trail.jsonl").read_text().splitlines()
        trail = [json.loads(line) for line in lines]
        n = len(trail)
        for what in ("verify a", "verify b", "verify server home"):
            assert f"audit trail intact: {n} entries, chain intact" in done[what].stdout, done[what].stdout
            assert f"registry heads: {name} at entry {n - 1}" in done[what].stdout, done[what].stdout
        # The export is the table, row for row, exactly as hashed.
        assert psql("SELECT body FROM tunegate_audit_events ORDER BY seq", mlflow_db).splitlines() == lines

        assert [e["seq"] for e in trail] == list(range(n))
        times = [dt.datetime.fromisoformat(e["time"]) for e in trail]
        assert times == sorted(times)
        # A fresh database: the two runs' events, then the race's, nothing else.
        assert all(e["data"].get("run_id") in runs.values() or e["event"] in RACE_EVENTS for e in trail), [e["event"] for e in trail]
        for label, run_id in runs.items():
            events = [e for e in trail if e["data"].get("run_id") == run_id]
            kinds = [e["event"] for e in events]
            assert kinds[0] == "run_started" and kinds[-1] == "run_finished" and set(RUN_EVENTS) <= set(kinds), kinds
            assert kinds.index("gate_decision") < kinds.index("registered"), kinds
            assert {e["actor"] for e in events} == {f"ivan-{label}"}, events
        run_seqs = {label: [e["seq"] for e in trail if e["data"].get("run_id") == run_id] for label, run_id in runs.items()}
        # Host A's run, then host B's: B opened its run while A ran, and did nothing more until A's ended.
        b_after_start = [e["seq"] for e in trail if e["data"].get("run_id") == runs["b"] and e["event"] != "run_started"]
        assert max(run_seqs["a"]) < min(b_after_start), (run_seqs, b_after_start)
        race_entries = [e for e in trail if e["event"] in RACE_EVENTS]
        assert min(e["seq"] for e in race_entries) > max(run_seqs["b"])
        assert [e["event"] for e in trail[n - len(race_entries):]] == [e["event"] for e in race_entries]  # they end the trail
        assert sorted(e["event"] for e in race_entries) == ["alias_moved", "approval", "approval_refused", "approval_refused"]
        approval = next(e for e in race_entries if e["event"] == "approval")
        moved = next(e for e in race_entries if e["event"] == "alias_moved")
        assert moved["seq"] == approval["seq"] + 1  # both under the winner's promotion lock
        assert approval["data"]["reviewer"] == winner and moved["data"]["champion"] == "2" and moved["data"]["approvers"] == [winner]
        assert approval["data"]["env_user"] == ("ivan-a" if winner == "alice" else "ivan-b")
        assert moved["data"]["moves"] == [{"alias": "candidate", "from": "2", "to": None}, {"alias": "champion", "from": None, "to": "2"}]
        refused = {(e["data"]["reviewer"], e["data"]["version"]) for e in race_entries if e["event"] == "approval_refused"}
        assert refused == {(loser, "2"), ("carol", "1")}
        assert all("not the current candidate" in e["data"]["why"] for e in race_entries if e["event"] == "approval_refused")
        history = json.loads(done["history a"].stdout)
        assert [(row["event"], row["version"], row["actor"], row["seq"]) for row in history] == [("alias_moved", "2", winner, moved["seq"])]
        # Nothing went to a per-host JSONL trail.
        for host in (a, b):
            assert not list((host.home / "audit").glob("events.jsonl*")), list((host.home / "audit").iterdir())

        # --- tampering in PostgreSQL is caught -----------------------------------------------------------
        body = psql(f"SELECT body FROM tunegate_audit_events WHERE seq = {approval['seq']}", mlflow_db)
        forged = body.replace(f'"reviewer":"{winner}"', '"reviewer":"mallory"')
        assert forged != body
        psql(f"UPDATE tunegate_audit_events SET body = {sql_text(forged)} WHERE seq = {approval['seq']}", mlflow_db)
        broken = a.tunegate("audit", "verify", "--params", a.params)
        assert broken.returncode == 1, said(broken)
        assert f"entry {approval['seq']}: content does not match its hash" in broken.stderr, said(broken)
        psql(f"UPDATE tunegate_audit_events SET body = {sql_text(body)} WHERE seq = {approval['seq']}", mlflow_db)
        restored = b.tunegate("audit", "verify", "--params", b.params)
        assert restored.returncode == 0 and f"{n} entries, chain intact" in restored.stdout, said(restored)
        # Deleting the last row leaves an intact chain, but the registry holds the head: truncated.
        psql(f"DELETE FROM tunegate_audit_events WHERE seq = {n - 1}", mlflow_db)
        truncated = a.tunegate("audit", "verify", "--params", a.params)
        assert truncated.returncode == 1, said(truncated)
        assert re.search(rf"entry {n - 1}: missing .* trail ends at entry {n - 2} \(truncated\)", truncated.stderr), said(truncated)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)
        assert server.wait(timeout=60) == 0, out.read_text()[-2000:]
