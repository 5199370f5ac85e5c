"""Faults of the servers.

The MLflow server goes away in the middle of a run: Prefect retries the transient failure, then the
run fails cleanly; nothing is registered or promoted; the failure is in the audit trail.

`tunegate server` supervises its two servers: one that is killed is restarted on the same port with the
same store (backoff, per-server state in server.json, shown by `tunegate status`) while the other keeps
serving; a server that keeps exiting makes it give up, stop both and exit 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from polling import request_json, wait_for

from tunegate.governance import audit
from tunegate.operations import failures
from tunegate.operations import server as server_module
from tunegate.operations.server import ServerConfig, start_mlflow, stop, wait_healthy
from tunegate.paths import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TUNEGATE = str(Path(sys.executable).parent / "tunegate")
QUICK = ["train.max_steps=6", "eval.ifeval.enabled=false", "eval.safety.enabled=false", "eval.capability.enabled=false", "eval.judge.enabled=false", "gate.capability_may_not_drop=null", "gate.min_win_rate=null", "gate.min_improvement=-1", "gate.min_improvement_over_base=null",
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


# --- supervision: the restart policy on fake processes (no servers, a fake clock) -----------------

class _FakeProcess:
    pids = iter(range(900_000, 1_000_000))

    def __init__(self):
        self.pid, self.returncode = next(self.pids), None

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _supervised(tmp_path, monkeypatch, policy=None):
    monkeypatch.setattr(server_module, "answers", lambda url, timeout=5.0: True)  # restarted servers answer at once
    monkeypatch.setattr(server_module, "port_free", lambda host, port: True)
    monkeypatch.setattr(server_module, "_kill_group", lambda process: None)
    config = ServerConfig(home=tmp_path, prefect_port=free_port(), mlflow_port=free_port())
    servers = [server_module.Running(name, f"http://{name}", "", _FakeProcess(), tmp_path / f"{name}.log") for name in ("MLflow", "Prefect")]
    said, started = [], []

    def start(name, config):
        started.append(name)
        return server_module.Running(name, f"http://{name}", "", _FakeProcess(), tmp_path / f"{name}.log")

    clock = _Clock()
    supervisor = server_module.Supervisor(config, servers, policy=policy, say=said.append, start=start, clock=clock)
    supervisor.write_state()
    return supervisor, servers, clock, said, started


def test_restart_backoff_doubles_up_to_the_cap():
    policy = server_module.RestartPolicy()
    assert [policy.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_dead_server_is_restarted_after_the_backoff_and_the_other_is_untouched(tmp_path, monkeypatch):
    supervisor, servers, clock, said, started = _supervised(tmp_path, monkeypatch)
    prefect_process = servers[1].process
    servers[0].process.returncode = -9
    supervisor.tick()
    assert started == [] and "restarting it in 1s" in said[-1] and "exited with code -9" in said[-1]
    view = server_module.supervisor_view(tmp_path)
    assert view["components"]["MLflow"]["state"] == "waiting" and view["components"]["MLflow"]["last_exit_code"] == -9
    clock.now += 0.5
    supervisor.tick()
    assert started == []  # still in its backoff
    clock.now += 0.6
    supervisor.tick()
    assert started == ["MLflow"] and servers[1].process is prefect_process and servers[0].process.returncode is None
    supervisor.tick()  # the restarted server answers its health check
    view = server_module.supervisor_view(tmp_path)
    mlflow, prefect = view["components"]["MLflow"], view["components"]["Prefect"]
    assert (mlflow["state"], mlflow["restarts"], mlflow["last_exit_code"], mlflow["pid"]) == ("running", 1, -9, servers[0].process.pid)
    assert mlflow["last_restart"] and (prefect["restarts"], prefect["pid"]) == (0, prefect_process.pid)
    state = json.loads(server_module.state_file(tmp_path).read_text())
    assert state["pids"] == {"MLflow": servers[0].process.pid, "Prefect": prefect_process.pid}
    assert state["audit_db"] == supervisor.config.audit_db() and state["mlflow_url"] == supervisor.config.mlflow_url  # kept keys
    log = (tmp_path / "MLflow.log").read_text()
    assert "restarting it in 1s" in log and "restarted the MLflow server (restart 1" in log
    assert not (tmp_path / "Prefect.log").exists()


def test_the_supervisor_gives_up_after_five_exits_within_five_minutes(tmp_path, monkeypatch):
    supervisor, servers, clock, said, started = _supervised(tmp_path, monkeypatch)
    delays = []
    for _ in range(4):
        servers[0].process.returncode = 1
        supervisor.tick()
        delays.append(supervisor.components["MLflow"].restart_at - clock.now)
        clock.now += delays[-1]
        supervisor.tick()  # restarted
        supervisor.tick()  # healthy
    assert delays == [1, 2, 4, 8] and started == ["MLflow"] * 4
    servers[0].process.returncode = 1
    with pytest.raises(server_module.ServerError, match=r"MLflow server exited with code 1 \(5 exits within 300s\); gave up .* see .*MLflow.log"):
        supervisor.tick()
    assert "gave up" in (tmp_path / "MLflow.log").read_text()
    assert servers[1].process.returncode is None  # the caller stops both: `servers` holds what to stop


def test_exits_older_than_the_window_are_forgotten(tmp_path, monkeypatch):
    supervisor, servers, clock, said, started = _supervised(tmp_path, monkeypatch)
    for _ in range(10):  # one exit every 2 minutes: never 5 within 5 minutes, never more than 3 counted
        servers[0].process.returncode = -9
        supervisor.tick()
        clock.now += 120
        supervisor.tick()
        supervisor.tick()
    assert supervisor.components["MLflow"].restarts == 10
    assert max(supervisor.components["MLflow"].exits) - min(supervisor.components["MLflow"].exits) < 300


def test_a_restarted_server_that_never_answers_counts_as_an_exit(tmp_path, monkeypatch):
    supervisor, servers, clock, said, started = _supervised(tmp_path, monkeypatch)
    monkeypatch.setattr(server_module, "answers", lambda url, timeout=5.0: False)
    servers[1].process.returncode = 3
    supervisor.tick()
    clock.now += 1
    supervisor.tick()
    assert supervisor.components["Prefect"].state == "starting"
    clock.now += supervisor.policy.start_timeout + 1
    supervisor.tick()
    assert supervisor.components["Prefect"].state == "waiting" and "did not answer" in said[-1] and "restarting it in 2s" in said[-1]


def test_a_restart_waits_for_the_old_port_and_a_failed_spawn_counts_as_an_exit(tmp_path, monkeypatch):
    supervisor, servers, clock, said, started = _supervised(tmp_path, monkeypatch)
    monkeypatch.setattr(server_module, "port_free", lambda host, port: False)  # the killed server's port, still held
    servers[0].process.returncode = -9
    supervisor.tick()
    clock.now += 1
    supervisor.tick()
    clock.now += 9
    supervisor.tick()
    assert started == [] and supervisor.components["MLflow"].state == "waiting"
    clock.now += 1.5  # 10 s past the due time: the restart goes ahead (and its own bind would fail)

    def no_spawn(name, config):
        raise server_module.ServerError("cannot spawn")

    supervisor.start = no_spawn
    supervisor.tick()
    mlflow = supervisor.components["MLflow"]
    assert (mlflow.state, mlflow.restarts, mlflow.last_exit_code, len(mlflow.exits)) == ("waiting", 0, -9, 2)
    assert "could not be restarted (cannot spawn); restarting it in 2s" in said[-1]


def test_supervisor_view_is_none_without_server_json_and_reads_an_old_one(tmp_path):
    assert server_module.supervisor_view(tmp_path) is None
    (tmp_path / "server.json").write_text(json.dumps({"pids": {"MLflow": 12}, "logs": {"MLflow": "m.log"}, "audit_db": None}))
    view = server_module.supervisor_view(tmp_path)
    assert view["components"]["MLflow"]["pid"] == 12 and view["components"]["MLflow"]["restarts"] == 0


# --- supervision for real: `tunegate server`, its MLflow server killed ---------------------------------

def _get(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read()
    try:
        return json.loads(body)
    except ValueError:
        return {"text": body.decode(errors="replace")}


def _state(home: Path) -> dict:
    try:
        return json.loads((home / "server.json").read_text())
    except (OSError, ValueError):
        return {}


def _answers(url: str, timeout: float = 3) -> bool:
    try:
        _get(url, timeout=timeout)
        return True
    except OSError:
        return False


RESTART_MODEL = "restart-assistant"
RESTART_STEPS = 40


def _write_run_params(work: Path, base_model: Path, demo: Path) -> Path:
    """A run long enough to kill the MLflow server in the middle of tuning: 40 steps, a checkpoint every 5."""
    eval_small = work / "eval_small.jsonl"
    eval_small.write_text("\n".join((demo / "eval.jsonl").read_text().splitlines()[::5]) + "\n")
    params = {
        "project": {"name": "tunegate-restart", "seed": 42},
        "model": {"base_model": str(base_model), "registered_name": RESTART_MODEL, "chat_template": "alpaca"},
        "data": {
            "train": [{"path": str(demo / "train.jsonl"), "name": "demo"}],
            "eval": [{"path": str(eval_small), "name": "demo_eval"}],
            "dvc_stage": None,
        },
        "validation": {"min_records": 100, "refusal_share": [0.05, 0.5]},
        "train": {"max_steps": RESTART_STEPS, "save_steps": 5, "logging_steps": 1, "batch_size": 8, "max_length": 128,
                  "lora_r": 32, "lora_alpha": 64, "learning_rate": 0.005},
        "eval": {"ifeval": {"enabled": False}, "safety": {"enabled": False}, "bootstrap_resamples": 200},
        "gate": {"min_improvement": -1, "min_improvement_over_base": None, "max_family_regression": 1, "rules": []},
    }
    path = work / "restart.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _newest_checkpoint(home: Path) -> int | None:
    """The step of the newest complete checkpoint of any run under ``home/runs``."""
    steps = [int(p.parent.name.split("-")[-1]) for p in (home / "runs").glob("*/checkpoints/checkpoint-*/trainer_state.json")
             if p.parent.name.split("-")[-1].isdigit()]
    return max(steps) if steps else None


def test_server_restarts_a_killed_mlflow_server_while_prefect_keeps_serving(tmp_path, base_model_path, demo_data):
    """`tunegate server`'s MLflow server is killed -9 in the middle of tuning (issue #14, acceptance 6): the
    supervisor restarts it on the same port with the same store, the Prefect server stays up and answers
    throughout, and the run finishes: the retried tuning task resumes from the checkpoint and says so."""
    home, out = tmp_path / "home", tmp_path / "server.out"
    prefect_port, mlflow_port = free_port(), free_port()
    prefect, mlflow = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
    env = {**os.environ, "TUNEGATE_HOME": str(home), "COLUMNS": "200"}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "TUNEGATE_AUDIT_DB"):
        env.pop(key, None)
    client_env = {**env, "MLFLOW_TRACKING_URI": mlflow, "PREFECT_API_URL": f"{prefect}/api"}
    # Each MLflow request fails within ~3 s while the server is down (2 retries, backoff 1 s inside MLflow's HTTP
    # client, shorter than the >= 10 s restart), so the outage fails the tuning task and Prefect's retries
    # (2/5/15 s) resume it from its checkpoint; the retries then span ~40 s, twice the slowest restart measured.
    # Its own compute slot: a wait behind another session's run on this machine would hide the outage from the retries.
    run_env = {**client_env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "TUNEGATE_MACHINE_DIR": str(tmp_path / "machine")}
    params = _write_run_params(tmp_path, base_model_path, demo_data)
    handle = open(out, "w")
    process = subprocess.Popen([TUNEGATE, "server", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)],
                               cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    run, run_out, run_err = None, tmp_path / "run.out", tmp_path / "run.err"
    prefect_down: list[str] = []
    watching = threading.Event()
    try:
        wait_for(lambda: "Ctrl-C stops both" in out.read_text() or process.poll() is not None, 240, "tunegate server to start")
        assert process.poll() is None, out.read_text()
        before = _state(home)
        mlflow_pid, prefect_pid = before["components"]["MLflow"]["pid"], before["components"]["Prefect"]["pid"]
        assert before["pids"] == {"MLflow": mlflow_pid, "Prefect": prefect_pid}
        assert before["components"]["MLflow"]["restarts"] == 0
        experiment = request_json(f"{mlflow}/api/2.0/mlflow/experiments/create", {"name": "survives-the-restart"})["experiment_id"]

        def watch_prefect():  # Prefect's API must answer all along (10 s: two busy cores train meanwhile)
            while not watching.is_set():
                if not _answers(f"{prefect}/api/health", timeout=10):
                    prefect_down.append(time.strftime("%H:%M:%S"))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch_prefect, daemon=True)
        watcher.start()

        # A run against the supervised servers, with the environment `tunegate server` prints.
        run_started = time.monotonic()
        with open(run_out, "w") as stdout, open(run_err, "w") as stderr:
            run = subprocess.Popen([TUNEGATE, "run", "-p", str(params), "--json", "--no-wait-for-approval"], cwd=REPO, env=run_env,
                                   stdout=stdout, stderr=stderr, start_new_session=True)
        killed_at_step = wait_for(lambda: _newest_checkpoint(home) or run.poll() is not None, 600, "the first checkpoint", interval=0.2)
        assert run.poll() is None, f"the run ended before its first checkpoint:\n{run_err.read_text()[-3000:]}"
        assert killed_at_step < RESTART_STEPS, killed_at_step  # the kill comes in the middle of tuning

        os.kill(mlflow_pid, signal.SIGKILL)
        killed = time.monotonic()
        after = wait_for(lambda: (s := _state(home)) and s["components"]["MLflow"]["state"] == "running"
                          and s["components"]["MLflow"]["restarts"] == 1 and s, 180, "the MLflow server to be restarted", interval=0.2)
        restart_took = time.monotonic() - killed
        mlflow_after = after["components"]["MLflow"]
        assert mlflow_after["pid"] != mlflow_pid and after["pids"]["MLflow"] == mlflow_after["pid"]
        assert mlflow_after["last_exit_code"] == -9 and mlflow_after["last_restart"]
        assert _get(f"{mlflow}/health")["text"].strip() == "OK"  # the same port
        got = _get(f"{mlflow}/api/2.0/mlflow/experiments/get?experiment_id={experiment}")  # the same backend store
        assert got["experiment"]["name"] == "survives-the-restart"
        assert after["components"]["Prefect"]["pid"] == prefect_pid and after["components"]["Prefect"]["restarts"] == 0
        assert after["audit_db"] == before["audit_db"] and after["mlflow_url"] == mlflow and after["started"] == before["started"]
        assert process.poll() is None

        # The run finishes: the tuning task failed while the server was down, a retry resumed from the checkpoint.
        code = run.wait(timeout=900)
        run_took = time.monotonic() - run_started
        stdout, stderr = run_out.read_text(), run_err.read_text()
        print(f"\nMLflow killed at checkpoint-{killed_at_step}; restarted and healthy {restart_took:.1f}s after the kill; "
              f"the run took {run_took:.0f}s")
        assert code == 0, f"tunegate run -> {code} (MLflow back {restart_took:.1f}s after the kill)\n{stdout[-2000:]}\n{stderr[-5000:]}"
        summary = json.loads(stdout.strip().splitlines()[-1])
        assert summary["outcome"] == "registered" and summary["registered_version"] == "1", summary.get("outcome")
        resumed = [int(step) for step in re.findall(r"resuming training from step (\d+) \(checkpoint ", stdout + stderr)]
        assert resumed and all(killed_at_step <= step < RESTART_STEPS for step in resumed), (resumed, killed_at_step)
        assert summary["train"]["global_step"] == RESTART_STEPS
        assert summary["train"]["resumed_from"].endswith(f"checkpoint-{resumed[-1]}")
        flow_run = _get(f"{prefect}/api/flow_runs/{summary['prefect_flow_run_id']}")
        assert flow_run["state"]["type"] == "COMPLETED"
        task_runs = request_json(f"{prefect}/api/task_runs/filter", {"flow_runs": {"id": {"any_": [summary["prefect_flow_run_id"]]}}})
        tune = [t for t in task_runs if t["name"].startswith("tune")]
        assert len(tune) == 1 and tune[0]["state"]["type"] == "COMPLETED" and tune[0]["run_count"] == 1 + len(resumed), tune
        mlflow_run = _get(f"{mlflow}/api/2.0/mlflow/runs/get?run_id={summary['run_id']}")["run"]
        assert mlflow_run["info"]["status"] == "FINISHED"
        version = _get(f"{mlflow}/api/2.0/mlflow/model-versions/get?name={RESTART_MODEL}&version=1")["model_version"]
        assert version["run_id"] == summary["run_id"]

        # One restart, of MLflow only: the Prefect server kept its pid and answered throughout.
        final = _state(home)
        assert final["components"]["MLflow"]["restarts"] == 1 and final["components"]["MLflow"]["pid"] == mlflow_after["pid"]
        assert final["components"]["Prefect"]["pid"] == prefect_pid and final["components"]["Prefect"]["restarts"] == 0
        watching.set()
        watcher.join(timeout=15)
        assert prefect_down == [], f"the Prefect API did not answer at {prefect_down}"
        assert _answers(f"{prefect}/api/health")
        console = out.read_text()
        assert "the MLflow server exited with code -9; restarting it in 1s" in console, console[-2000:]
        assert "restarted the MLflow server (restart 1" in console
        log = (home / "logs" / "mlflow-server.log").read_text()
        assert "tunegate supervisor: the MLflow server exited with code -9" in log and "tunegate supervisor: restarted" in log
        assert "tunegate supervisor" not in (home / "logs" / "prefect-server.log").read_text()

        # `tunegate status` shows the restart
        result = subprocess.run([TUNEGATE, "status", "--json"], cwd=REPO, env=client_env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        status = json.loads(result.stdout.strip().splitlines()[-1])
        assert status["server"]["supervisor_alive"] is True and status["server"]["supervisor_pid"] == process.pid
        shown = status["server"]["components"]
        assert (shown["MLflow"]["restarts"], shown["MLflow"]["last_exit_code"], shown["MLflow"]["pid"]) == (1, -9, mlflow_after["pid"])
        assert (shown["Prefect"]["restarts"], shown["Prefect"]["pid"]) == (0, prefect_pid)
        text = subprocess.run([TUNEGATE, "status"], cwd=REPO, env=client_env, capture_output=True, text=True, timeout=300)
        assert text.returncode == 0, text.stderr[-3000:]
        assert f"MLflow: running, pid {mlflow_after['pid']}, restarts 1, last at" in text.stdout and "last exit code -9" in text.stdout
        assert f"Prefect: running, pid {prefect_pid}, restarts 0" in text.stdout

        # Ctrl-C still stops both
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 0, out.read_text()[-2000:]
        assert "stopped (SIGINT)" in out.read_text()
        assert not (home / "server.json").exists()
        for url in (f"{prefect}/api/health", f"{mlflow}/health"):
            assert not _answers(url)
    finally:
        watching.set()
        if run is not None and run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=10)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for name in ("MLflow", "Prefect"):  # never leave a server behind, whatever failed
            pid = _state(home).get("pids", {}).get(name)
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        handle.close()
