"""Runs as an operator meets them, on a new $TUNEGATE_HOME with the embedded default (no servers):

* two `tunegate run` started 1 s apart: the second waits in the project's queue (an OS file lock under
  $TUNEGATE_HOME), names the run it waits for, and no traceback or DVC lock error appears;
* the first, killed with SIGKILL during training, frees the slot at once, leaves none of its children (the
  temporary Prefect server, the preflight child) running a few seconds later, shows as `crashed` in
  `tunegate status` with the resume command, and `tunegate run --resume` ends with the same metrics as
  the uninterrupted second run, with the default checkpoint settings (no `train.save_steps` override).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TUNEGATE = str(Path(sys.executable).parent / "tunegate")
# 100 steps: the default checkpoint every 50 steps falls in the middle of training.
SETS = ["train.max_steps=100", "train.batch_size=8", "eval.ifeval.enabled=false", "eval.safety.enabled=false", "eval.capability.enabled=false", "eval.judge.enabled=false", "gate.capability_may_not_drop=null", "gate.min_win_rate=null", "eval.bootstrap_resamples=200",
        "eval.max_new_tokens=16", "gate.rules=[{metric: response_loss, max_regression: 0.5}]"]  # the demo's ifeval rule: off with its suite


def _args(params: Path, *extra: str) -> list[str]:
    args = [TUNEGATE, "run", "--json", "-p", str(params), *extra]
    for item in SETS:
        args += ["--set", item]
    return args


def _summary(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture()
def operator(tmp_path, demo_data, base_model_path):
    home = tmp_path / "home"  # new: no Prefect database, no MLflow store yet
    eval_small = tmp_path / "eval_small.jsonl"
    eval_small.write_text("\n".join((demo_data / "eval.jsonl").read_text().splitlines()[::10]) + "\n")
    demo = (REPO / "params" / "demo.yaml").read_text()
    text = demo.replace("registered_name: tunegate-demo-assistant", "registered_name: queue-assistant")
    text = text.replace("  name: tunegate-demo\n", "  name: tunegate-queue\n")
    text = text.replace("- {path: data/demo/eval.jsonl, name: demo_eval}", f"- {{path: {eval_small}, name: demo_eval}}")
    assert "queue-assistant" in text and "tunegate-queue" in text and str(eval_small) in text, "params/demo.yaml changed shape"
    params = tmp_path / "queue.yaml"
    params.write_text(text)
    env = {**os.environ, "TUNEGATE_HOME": str(home), "COLUMNS": "200"}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "TUNEGATE_AUDIT_DB"):
        env.pop(key, None)
    return home, params, env


def _checkpoint_50(home: Path, proc: subprocess.Popen) -> Path | None:
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        found = list((home / "runs").glob("*/checkpoints/checkpoint-50/trainer_state.json"))
        if found:
            return found[0]
        time.sleep(0.05)
    return None


def _descendants(pid: int) -> dict:
    """The processes under ``pid`` now, with their command lines."""
    import psutil

    found = {}
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found[child] = " ".join(child.cmdline())
    return found


def _still_running(processes: dict, within_s: float) -> list[str]:
    """Of ``processes``, those still running (not gone, not a zombie) after ``within_s`` seconds."""
    import psutil

    def running(process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + within_s
    while any(running(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [f"{p.pid} {cmdline[:200]}" for p, cmdline in processes.items() if running(p)]


def test_a_second_run_queues_behind_the_first_which_is_killed_and_resumes_to_the_same_metrics(operator):
    """Two runs 1 s apart on a new home: the second waits for the first. The first is killed with SIGKILL
    during training: the second gets the slot at once and finishes; `tunegate status` calls the first
    `crashed` with its resume command; resumed, it finishes with the second's metrics."""
    home, params, env = operator
    first = subprocess.Popen(_args(params), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    time.sleep(1)
    second = subprocess.Popen(_args(params), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = _checkpoint_50(home, first)
    children = _descendants(first.pid)
    os.kill(first.pid, signal.SIGKILL)  # a real crash, `kill -9` of the command alone: no cleanup, no failure hook
    first.wait()
    left = _still_running(children, within_s=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(first.pid, signal.SIGKILL)  # what leaked, if anything, goes now
    out, err = second.communicate(timeout=900)
    (home.parent / "second.log").write_text(out + "\n" + err)
    assert checkpoint is not None, "the first run never wrote its step-50 checkpoint"
    assert any("uvicorn" in cmdline for cmdline in children.values()), children  # its temporary Prefect server
    assert not left, f"children of the killed run still running: {left}"
    run_id = checkpoint.parts[-4]
    assert not (home / "runs" / run_id / "model").exists(), "the first run finished before it could be killed"

    assert second.returncode == 0, f"exit {second.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    log = out + err
    assert "Traceback" not in log and "is busy" not in log, err[-4000:]
    # Issue #15: a quiet terminal. No trainer dicts between the bars, tunegate's own step lines instead; the
    # libraries' warnings are in the home's warnings log, not on the console.
    assert not re.search(r"^\s*\{'", log, re.M) and "{'loss'" not in log and "'train_runtime'" not in log, log[-3000:]
    assert re.search(r"step \d+/100: loss \d", log) and "step 100/100: loss" in log, log[-3000:]
    assert not re.search(r"\b(Future|User|Deprecation)Warning\b", log), log[-3000:]
    assert "FutureWarning" in (home / "logs" / "warnings.log").read_text()
    reference = _summary(out)
    assert reference["run_id"] != run_id
    assert "waiting for the run slot of queue-assistant" in log, log[-3000:]
    assert f"held by run {run_id}, trigger manual" in log, log[-3000:]  # who, named by its MLflow run
    assert "after waiting" in log and "for run(s) " + run_id in log
    assert reference["train"]["resumed_from"] is None and reference["train"]["global_step"] == 100
    assert {"server_start", "params", "data", "validation", "tuning", "evaluation_baseline", "evaluation_candidate",
            "compare", "gate", "total_wall"} <= set(reference["timings"]), reference["timings"]
    assert reference["timings"]["queue_wait"] > 1.0, reference["timings"]  # the wait for the first run's slot, counted

    status = subprocess.run([TUNEGATE, "status", "--json", "-p", str(params)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr[-3000:]
    row = next(r for r in json.loads(status.stdout)["runs"] if r["run_id"] == run_id)
    assert row["outcome"] == "crashed" and row["resume_command"].endswith(f"--resume {run_id}"), row
    text = subprocess.run([TUNEGATE, "status", "-p", str(params)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300).stdout
    assert "crashed" in text and f"--resume {run_id}" in text

    resumed = subprocess.run(_args(params, "--resume", run_id), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming training from step 50" in resumed.stdout + resumed.stderr
    again = _summary(resumed.stdout)
    assert again["run_id"] == run_id and again["train"]["resumed_from"].endswith("checkpoint-50")
    assert again["train"]["global_step"] == 100
    assert abs(again["train"]["final_loss"] - reference["train"]["final_loss"]) <= 1e-4
    assert again["candidate"]["metrics"]["exact_match"] == reference["candidate"]["metrics"]["exact_match"]
    assert abs(again["candidate"]["metrics"]["response_loss"] - reference["candidate"]["metrics"]["response_loss"]) <= 1e-4
    assert again["gate"]["passed"] == reference["gate"]["passed"]
