"""Operations against a real `tunegate server` (Prefect + MLflow on loopback, SQLite under its own home):
a manual run, the served schedule (second run: nothing to do), a new-data trigger evaluated against the
champion, `tunegate status`, the process work pool from prefect.yaml, and screenshots of both UIs.

Every command runs as a subprocess with the environment `tunegate server` prints, as an operator would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from polling import request_json, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TUNEGATE = str(Path(sys.executable).parent / "tunegate")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MODEL = "ops-assistant"


class Ops:
    """The running server and the environment every client command gets."""

    def __init__(self, home: Path, prefect_port: int, mlflow_port: int, work: Path):
        self.home, self.work = home, work
        self.prefect = f"http://127.0.0.1:{prefect_port}"
        self.api = f"{self.prefect}/api"
        self.mlflow = f"http://127.0.0.1:{mlflow_port}"
        self.env = {
            **os.environ,
            "TUNEGATE_HOME": str(home),
            "PREFECT_API_URL": self.api,
            "MLFLOW_TRACKING_URI": self.mlflow,
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",
            "TUNEGATE_ACTOR": "scheduler-bot",
            "COLUMNS": "200",
        }
        self.params = work / "ops.yaml"
        self.data_repo = work / "datarepo"

    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run([TUNEGATE, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"tunegate {' '.join(args)} -> {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def serve(self, *args: str, log: Path) -> subprocess.Popen:
        """`tunegate schedule`, started with SIGINT ignored as a script's `tunegate schedule &` starts it: Ctrl-C
        (SIGINT, :func:`_stop`) must still stop it, and Prefect pause the deployment (the status test)."""
        handle = open(log, "w")
        return subprocess.Popen([TUNEGATE, "schedule", "-p", str(self.params), *args], cwd=REPO, env=self.env,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))

    def flow_runs(self, deployment: str) -> list[dict]:
        deployments = request_json(f"{self.api}/deployments/filter", {"deployments": {"name": {"any_": [deployment]}}})
        if not deployments:
            return []
        return request_json(f"{self.api}/flow_runs/filter", {
            "deployments": {"id": {"any_": [deployments[0]["id"]]}}, "sort": "START_TIME_ASC", "limit": 50,
        })

    def audit(self) -> list[dict]:
        """The audit table (in the server's database, found through its server.json) as `tunegate audit export` writes it."""
        out = self.cli("audit", "export", "-p", str(self.params)).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def mlflow_run(self, run_id: str) -> dict:
        return request_json(f"{self.mlflow}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]


def _stop(process: subprocess.Popen, timeout: float = 60) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait(timeout=10)
    return process.returncode


def _write_params(ops: Ops, eval_path: Path) -> None:
    params = {
        "project": {"name": "tunegate-ops", "seed": 42},
        "model": {"base_model": "../shared/models/stories260K", "registered_name": MODEL, "chat_template": "alpaca"},
        "data": {
            "train": [{"path": str(ops.data_repo / "data" / "extra.jsonl"), "name": "extra"}],
            "eval": [{"path": str(eval_path), "name": "demo_eval"}],
            "dvc_stage": None,
        },
        "validation": {"min_records": 100, "refusal_share": [0.05, 0.5]},
        "train": {"max_steps": 6, "batch_size": 32, "max_length": 128, "lora_r": 32, "lora_alpha": 64, "learning_rate": 0.005},
        "eval": {"ifeval": {"enabled": False}, "safety": {"enabled": False}, "bootstrap_resamples": 200},
        "gate": {"min_improvement": -1, "min_improvement_over_base": None, "max_family_regression": 1},
        "schedule": {"deployment": "ops-retrain", "on_new_data": True, "watch_seconds": 3},
    }
    ops.params.write_text("# Run: tunegate run -p ops.yaml (written by the operations test)\n" + yaml.safe_dump(params))


@pytest.fixture(scope="module")
def ops(tmp_path_factory, base_model_path, demo_data):
    """`tunegate server` on free loopback ports with its own $TUNEGATE_HOME; stopped with Ctrl-C at the end."""
    from tunegate.paths import free_port

    work = tmp_path_factory.mktemp("ops")
    ops = Ops(work / "home", free_port(), free_port(), work)
    # The user's data lives in its own git + DVC repo; version A is every second demo training record.
    demo = demo_data
    ops.data_repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=ops.data_repo, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=ops.data_repo, check=True, env=ops.env)
    lines = (demo / "train.jsonl").read_text().splitlines()
    (ops.data_repo / "data").mkdir()
    (ops.data_repo / "data" / "extra.jsonl").write_text("\n".join(lines[1::2]) + "\n")
    eval_small = work / "eval_small.jsonl"
    eval_small.write_text("\n".join((demo / "eval.jsonl").read_text().splitlines()[::5]) + "\n")
    _write_params(ops, eval_small)

    server_log = open(work / "server.out", "w")
    env = {**ops.env, "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(key)
    server = subprocess.Popen(
        [TUNEGATE, "server", "--prefect-port", ops.prefect.rsplit(":", 1)[1], "--mlflow-port", ops.mlflow.rsplit(":", 1)[1]],
        cwd=REPO, env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: "Ctrl-C stops both" in (work / "server.out").read_text() or server.poll() is not None, 240, "tunegate server to start")
        assert server.poll() is None, (work / "server.out").read_text()
        ops.server = server
        ops.server_out = work / "server.out"
        yield ops
    finally:
        code = _stop(server)
        ops.stop_code = code
        server_log.close()


def test_server_runs_a_flow_and_both_apis_answer(ops):
    out = ops.server_out.read_text()
    assert ops.api in out and ops.mlflow in out  # it prints the URLs to export
    assert request_json(f"{ops.api}/health") is True
    assert urllib.request.urlopen(f"{ops.mlflow}/health", timeout=10).read() == b"OK"
    assert json.loads((ops.home / "server.json").read_text())["mlflow_backend_store"].startswith(f"sqlite:///{ops.home}")

    result = ops.cli("run", "-p", str(ops.params), "--json", "--no-wait-for-approval")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["registered_version"] == "1" and summary["trigger"] == "manual"
    # Prefect's API knows the flow run, MLflow's API the run, its artifacts and the registered version.
    flow_run = request_json(f"{ops.api}/flow_runs/{summary['prefect_flow_run_id']}")
    assert flow_run["state"]["type"] == "COMPLETED"
    run = ops.mlflow_run(summary["run_id"])
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")  # proxied by the server
    version = request_json(f"{ops.mlflow}/api/2.0/mlflow/model-versions/get?name={MODEL}&version=1")["model_version"]
    assert version["run_id"] == summary["run_id"]
    assert (ops.home / "mlflow" / "artifacts").is_dir() and any((ops.home / "mlflow" / "artifacts").rglob("adapter_model.safetensors"))
    ops.cli("approve", "1", "--reviewer", "alice", "--reason", "first model", "-p", str(ops.params))
    alias = request_json(f"{ops.mlflow}/api/2.0/mlflow/registered-models/alias?name={MODEL}&alias=champion")
    assert alias["model_version"]["version"] == "1"


def test_schedule_starts_runs_and_the_second_has_nothing_to_do(ops):
    # Acceptance 1: runs 10 s apart; the scheduled runs use a different learning rate than the champion,
    # so the first trains; the second sees the first's candidate with identical inputs.
    log = ops.work / "serve-schedule.out"
    serve = ops.serve("--set", "schedule.interval_seconds=10", "--set", "schedule.on_new_data=false",
                      "--set", "schedule.deployment=ops-scheduled", "--set", "train.learning_rate=0.004", log=log)
    try:
        def two_finished():
            runs = [r for r in ops.flow_runs("ops-scheduled") if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")]
            return runs if len(runs) >= 2 else None

        runs = wait_for(two_finished, 420, "two scheduled runs to finish", interval=2)
    finally:
        assert _stop(serve) is not None
    first, second = sorted(runs, key=lambda r: r["start_time"])[:2]
    assert first["parameters"]["trigger"] == second["parameters"]["trigger"] == "schedule"
    assert first["state"]["name"] == "Completed", log.read_text()[-3000:]
    assert second["state"]["name"] == "Nothing to do", log.read_text()[-3000:]
    assert "candidate version 2" in second["state"]["message"]
    entries = [e for e in ops.audit() if e["event"] == "nothing_to_do" and e["data"]["flow_run_id"] == second["id"]]
    assert len(entries) == 1 and entries[0]["data"]["matched"]["version"] == "2"
    # The skipped run is an MLflow run too, closed with its outcome; nothing new was registered.
    run = ops.mlflow_run(entries[0]["data"]["run_id"])
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert run["info"]["status"] == "FINISHED" and tags["tunegate.outcome"] == "nothing_to_do"
    versions = request_json(f"{ops.mlflow}/api/2.0/mlflow/model-versions/search?filter=name%3D%27{MODEL}%27")["model_versions"]
    assert sorted(v["version"] for v in versions) == ["1", "2"]
    assert ops.cli("audit", "verify", "-p", str(ops.params)).returncode == 0


def test_new_data_triggers_a_run_evaluated_against_the_champion(ops):
    # Acceptance 2: a new version of the configured data, added with `tunegate data add`.
    log = ops.work / "serve-data.out"
    serve = ops.serve(log=log)  # the params' own deployment: no schedule, the new-data trigger
    try:
        wait_for(lambda: request_json(f"{ops.api}/automations/filter", {}) and "serving" in log.read_text(), 120, "the trigger to be registered")
        time.sleep(5)  # the server's trigger service loads new automations on its next refresh
        extra = ops.data_repo / "data" / "extra.jsonl"
        demo_lines = (REPO / "data" / "demo" / "train.jsonl").read_text().splitlines()
        extra.write_text("\n".join(line for i, line in enumerate(demo_lines) if i % 3 != 0) + "\n")
        added = ops.cli("data", "add", "--repo", str(ops.data_repo), str(extra))
        assert "event tunegate.data.added sent" in added.stdout

        def finished():
            runs = [r for r in ops.flow_runs("ops-retrain") if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")]
            return runs or None

        runs = wait_for(finished, 420, "a data-triggered run to finish", interval=2)
        # `tunegate trigger` starts the served deployment like the schedule would: nothing changed since.
        again = ops.cli("trigger", "-p", str(ops.params), "--wait")
        assert "Nothing to do" in again.stdout, again.stdout
    finally:
        _stop(serve)
    run = runs[0]
    assert run["parameters"]["trigger"].startswith(f"data:tunegate.dataset.{extra}@"), run["parameters"]
    assert run["state"]["name"] == "Completed", log.read_text()[-3000:]
    started = [e for e in ops.audit() if e["event"] == "run_started" and e["data"]["flow_run_id"] == run["id"]]
    mlflow_run = ops.mlflow_run(started[0]["data"]["run_id"])
    tags = {t["key"]: t["value"] for t in mlflow_run["data"]["tags"]}
    assert tags["tunegate.baseline_source"] == "champion" and tags["tunegate.baseline_version"] == "1"
    assert tags["tunegate.outcome"] == "registered" and tags["tunegate.registered_version"] == "3"
    assert "inputs changed" in tags["tunegate.freshness"] and "source extra" in tags["tunegate.freshness"]
    metrics = {m["key"] for m in mlflow_run["data"]["metrics"]}
    assert {"baseline_exact_match", "candidate_exact_match"} <= metrics
    # Issue #15: version 2 (the scheduled run's) was waiting for review: compared on the same suites (its
    # evaluation read back from its own run), the new one is not significantly worse, so it took the alias.
    assert tags["tunegate.waiting_version"] == "2" and tags["tunegate.eval_key.waiting"]
    [registered] = [e for e in ops.audit() if e["event"] == "registered" and e["data"]["version"] == "3"]
    replaced = registered["data"]["replaced_waiting"]
    assert replaced["version"] == "2" and replaced["policy"] == "if_not_worse"
    assert replaced["checks"] and all(c.startswith("PASS exact_match vs the waiting candidate") for c in replaced["checks"])
    assert {"alias": "candidate", "from": "2", "to": "3"} in registered["data"]["moves"]


def test_status_shows_schedule_runs_and_waiting_candidates(ops):
    result = ops.cli("status", "-p", str(ops.params), "--json")
    status = json.loads(result.stdout.strip().splitlines()[-1])
    assert status["champion"]["version"] == "1"
    [pending] = status["pending"]
    assert pending["version"] == "3" and pending["waiting_s"] > 0 and pending["missing_roles"] == ["any"]
    outcomes = [r["outcome"] for r in status["runs"]]
    assert {"registered", "nothing_to_do"} <= set(outcomes)
    assert any(r["trigger"].startswith("data:") for r in status["runs"])
    assert {r["primary_metric"] for r in status["runs"]} == {"exact_match"}
    assert all(r["candidate_primary"] == r["candidate_exact_match"] for r in status["runs"])
    assert status["schedule"]["prefect"]["served"] is True and status["schedule"]["prefect"]["paused"] is True  # served, then stopped
    text = ops.cli("status", "-p", str(ops.params)).stdout
    assert "waiting for approval: version 3" in text and "nothing_to_do" in text


def test_prefect_yaml_deploys_to_a_process_work_pool(ops):
    """prefect.yaml's deployment on a process work pool: deployed with `tunegate deploy`, a worker runs it."""
    prefect = str(Path(sys.executable).parent / "prefect")
    env = dict(ops.env)

    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([prefect, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"prefect {' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    run("work-pool", "create", "tunegate-process", "--type", "process")
    ops.cli("deploy", "--name", "tunegate-retrain")  # `prefect deploy`, with Prefect 3.8.8's worker-listing bug patched
    deployment = request_json(f"{ops.api}/deployments/name/retrain/tunegate-retrain")
    assert deployment["work_pool_name"] == "tunegate-process"
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * 1"]
    assert deployment["parameters"]["trigger"] == "schedule"
    assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
    automations = request_json(f"{ops.api}/automations/filter", {})
    templated = [a for a in automations if a["actions"][0].get("deployment_id") == deployment["id"]]
    assert templated and templated[0]["actions"][0]["parameters"]["trigger"] == "data:{{ event.resource.id }}@{{ event.payload.md5 }}"

    # A run as the schedule starts it, on the ops params: inputs equal candidate 3's, so the worker's run has nothing to do.
    flow_run = request_json(f"{ops.api}/deployments/{deployment['id']}/create_flow_run", {"parameters": {"params_file": str(ops.params)}})
    run("worker", "start", "--pool", "tunegate-process", "--run-once")
    finished = wait_for(lambda: (r := request_json(f"{ops.api}/flow_runs/{flow_run['id']}"))["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED") and r,
                     300, "the worker's flow run to finish", interval=2)
    assert finished["work_pool_name"] == "tunegate-process"
    assert finished["state"]["name"] == "Nothing to do", finished["state"]
    assert "candidate version 3" in finished["state"]["message"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make setup installs it where apt is available)")
def test_screens_of_both_uis(ops):
    """Screenshots of the flow run with its artifacts (Prefect UI) and of the model with its aliases (MLflow UI)."""
    runs = [r for r in ops.flow_runs("ops-retrain") if r["state"]["type"] == "COMPLETED"]
    screens = ops.home / "screens"
    screens.mkdir(exist_ok=True)
    [summary] = request_json(f"{ops.api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}, "key": {"any_": ["run-summary"]}}})
    pages = {
        "prefect-flow-run": (f"{ops.prefect}/runs/flow-run/{runs[0]['id']}", runs[0]["name"]),
        "prefect-run-summary-artifact": (f"{ops.prefect}/artifacts/artifact/{summary['id']}", "Gate: PASSED"),
        "mlflow-registered-model": (f"{ops.mlflow}/#/models/{MODEL}", "champion"),
    }
    for name, (url, expected) in pages.items():
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={ops.work / ('chromium-' + name)}", "--window-size=1400,1000", "--virtual-time-budget=15000"]
        dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180)
        assert expected in dom.stdout, f"{name}: {expected!r} not rendered\n{dom.stderr[-1500:]}"
        shot = screens / f"{name}.png"
        subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=180)
        assert shot.is_file() and shot.stat().st_size > 20_000, name


def test_alias_moves_outside_tunegate_are_recorded_by_the_webhook(ops):
    """Issue #15: `tunegate server` registers an MLflow webhook on alias events. tunegate's own moves (an
    approval through the server) come back as audited; a move made with the MLflow client (what the UI's alias
    pencil does) is recorded in the audit trail as it happens, and `tunegate audit verify` and `status` name it."""
    from mlflow import MlflowClient

    assert "alias webhook: MLflow reports alias moves to http://127.0.0.1:" in ops.server_out.read_text()
    ops.cli("approve", "3", "--reviewer", "bob", "--reason", "the data-triggered model", "-p", str(ops.params))
    for alias, to in (("champion", "version 3"), ("previous", "version 1"), ("candidate", "removed")):
        wait_for(lambda: f"alias {alias} of {MODEL} -> {to}: tunegate's own, audited" in ops.server_out.read_text(), 60,
                 f"the webhook's delivery of the approval's {alias} move")
    assert not [e for e in ops.audit() if e["event"] == "alias_moved_outside"]

    MlflowClient(tracking_uri=ops.mlflow, registry_uri=ops.mlflow).set_registered_model_alias(MODEL, "champion", "2")
    [outside] = wait_for(lambda: [e for e in ops.audit() if e["event"] == "alias_moved_outside"], 60, "the outside move in the audit trail")
    assert (outside["data"]["alias"], outside["data"]["version"], outside["data"]["verified"]) == ("champion", "2", "hmac-sha256")
    assert outside["model"] == MODEL and outside["actor"] == "unknown (MLflow webhook)"
    assert f"alias champion of {MODEL} -> version 2: moved outside tunegate, recorded in the audit trail (entry {outside['seq']})" in ops.server_out.read_text()

    verify = ops.cli("audit", "verify", "-p", str(ops.params), check=False)
    said = " ".join((verify.stdout + verify.stderr).split())
    assert verify.returncode == 1, said
    assert "alias champion -> version 2 was not set by tunegate (last audited move: champion -> version 3, alias_moved by bob" in said
    assert f"the MLflow server reported the outside move at {outside['time']}, audit entry {outside['seq']}" in said
    status = json.loads(ops.cli("status", "-p", str(ops.params), "--json").stdout.strip().splitlines()[-1])
    assert [(d["alias"], d["registry"], d["audited"]) for d in status["alias_drift"]] == [("champion", "2", "3")]


def test_server_stops_both_on_ctrl_c(ops):
    code = _stop(ops.server)
    assert code == 0, ops.server_out.read_text()[-2000:]
    assert "stopped (SIGINT)" in ops.server_out.read_text()
    for url in (f"{ops.api}/health", f"{ops.mlflow}/health"):
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=5)
    assert not (ops.home / "server.json").exists()
