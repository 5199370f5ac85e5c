"""The run launcher's pieces without a run: children that die with their parent however it dies
(tunegate.adapters.lifeline), and the flow's first task taking the launcher's params as a value or,
for a served run, loading and checking them itself (tunegate.operations.launcher.flow_params)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunegate.operations import launcher, preflight, timings
from tunegate.params import load_params

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "params" / "demo.yaml"

# A parent that starts a sleeping child on a thread that ends at once (the server's start-up thread does),
# prints the child's pid, then waits to be killed.
PARENT = """
import sys, threading, time
from tunegate.adapters import lifeline
started = []
thread = threading.Thread(target=lambda: started.append(lifeline.spawn([sys.executable, "-c", "import time; time.sleep(600)"])))
thread.start()
thread.join()
print(started[0].pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_child_outlives_the_thread_that_started_it_and_dies_with_a_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        child = int(parent.stdout.readline())
        time.sleep(0.5)
        assert not _gone(child), "the child died with the thread that forked it"
        os.kill(parent.pid, signal.SIGKILL)  # no atexit, no cleanup
        parent.wait()
        deadline = time.monotonic() + 5
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child), "the child outlived its killed parent"
    finally:
        parent.kill()


def test_the_flow_takes_the_launchers_params_without_loading_or_checking_again(monkeypatch):
    params = load_params(DEMO)
    launch = launcher.Launch(params=params, params_sha256=launcher.params_sha256(params), preflight_passed_at=time.time(),
                             thread_budget="4 thread(s) per run: 4 core(s) / 1 machine slot(s)", server_start_s=1.5)
    monkeypatch.setattr(launcher, "load_params", lambda *a, **k: pytest.fail("loaded again"))
    monkeypatch.setattr(preflight, "run_preflight", lambda *a, **k: pytest.fail("checked again"))
    got = launcher.flow_params(str(DEMO), [], launch)
    assert got.params is params and got.thread_budget.startswith("4 thread(s)")
    assert timings.snapshot() == {"server_start": 1.5}
    assert launcher.flow_run_params({"params_file": "elsewhere.yaml", "launch": launch.model_dump(mode="json")}) == params


def test_a_stale_or_altered_launch_is_checked_again_and_a_served_run_checks_once(monkeypatch):
    params = load_params(DEMO)
    checked: list[str] = []
    monkeypatch.setattr(preflight, "run_preflight", lambda p, params_file: checked.append(str(params_file)) or [])
    monkeypatch.setattr(launcher, "apply_thread_budget", lambda p: "2 thread(s) per run: 2 core(s) / 1 machine slot(s)")
    stale = launcher.Launch(params=params, params_sha256=launcher.params_sha256(params),
                            preflight_passed_at=time.time() - preflight.RECHECK_AFTER_S - 1, thread_budget="b")
    assert launcher.flow_params(str(DEMO), [], stale).params is params and checked == [str(DEMO)]  # waited in the queue
    altered = stale.model_copy(update={"params_sha256": "0" * 64})
    served = launcher.flow_params(str(DEMO), ["train.max_steps=3"], altered)  # not trusted: loaded from the file
    assert served.params.train.max_steps == 3 and "thread(s) per run" in served.thread_budget and len(checked) == 2
    assert launcher.flow_params(str(DEMO), [], None).params == params and len(checked) == 3
    assert "server_start" not in timings.snapshot()
