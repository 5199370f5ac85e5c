"""The run queue's parts: file slots a killed process releases, the thread budget, process liveness, stage timings."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tunegate.operations import runqueue, timings
from tunegate.operations.status import process_gone, process_tags

REPO = Path(__file__).resolve().parents[2]

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tunegate.operations import runqueue
    info = runqueue.holder_info(run_id=sys.argv[3], trigger="schedule", initiator="scheduler-bot")
    with runqueue.file_slot(Path(sys.argv[1]), sys.argv[2], 1, info, timeout_s=30):
        print("held", flush=True)
        time.sleep(120)
""")


def _hold(directory: Path, name: str, run_id: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), name, run_id], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_waits_names_the_holder_and_gives_up_after_its_timeout(tmp_path):
    holder = _hold(tmp_path, "tunegate-m", "run-aaa")
    try:
        seen = []
        with pytest.raises(runqueue.QueueTimeout) as error:
            with runqueue.file_slot(tmp_path, "tunegate-m", 1, runqueue.holder_info(run_id="run-bbb"), timeout_s=1.5,
                                    on_wait=lambda holders, waited: seen.append(holders)):
                pytest.fail("got a slot another process holds")
        message = str(error.value)
        assert "run run-aaa" in message and "trigger schedule" in message and "scheduler-bot" in message
        assert "runs.queue_timeout_s" in message and "Nothing was trained" in message
        assert seen and seen[0][0]["run_id"] == "run-aaa" and seen[0][0]["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_frees_its_slot_at_once(tmp_path):
    holder = _hold(tmp_path, "tunegate-m", "run-aaa")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    start = time.monotonic()
    with runqueue.file_slot(tmp_path, "tunegate-m", 1, runqueue.holder_info(run_id="run-bbb"), timeout_s=5) as waited:
        assert waited < 1.0
        assert runqueue.slot_holders(tmp_path, "tunegate-m")[0]["run_id"] == "run-bbb"
    assert time.monotonic() - start < 2.0
    assert runqueue.slot_holders(tmp_path, "tunegate-m") == []  # released on exit


def test_two_slots_admit_two_holders_and_no_third(tmp_path):
    holder = _hold(tmp_path, "compute", "run-1")
    try:
        with runqueue.file_slot(tmp_path, "compute", 2, runqueue.holder_info(run_id="run-2"), timeout_s=2):
            assert {h["run_id"] for h in runqueue.slot_holders(tmp_path, "compute")} == {"run-1", "run-2"}
            with pytest.raises(runqueue.QueueTimeout):
                with runqueue.file_slot(tmp_path, "compute", 2, runqueue.holder_info(run_id="run-3"), timeout_s=1):
                    pass
    finally:
        holder.kill()
        holder.wait()


def test_thread_budget_divides_the_cores_and_keeps_the_users_settings(monkeypatch):
    for key in (*runqueue.THREAD_VARIABLES, "OMP_WAIT_POLICY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(runqueue, "cores", lambda: 8)
    budget = runqueue.apply_thread_budget(1)  # the cores to itself: all threads, OpenMP's own waiting
    assert budget.threads == 8 and os.environ["OMP_NUM_THREADS"] == "8" and "OMP_WAIT_POLICY" not in os.environ
    for key in runqueue.THREAD_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    budget = runqueue.apply_thread_budget(4)
    assert budget.threads == 2 and os.environ["OMP_NUM_THREADS"] == "2" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert budget.set_here["MKL_NUM_THREADS"] == "2"
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    try:
        budget = runqueue.apply_thread_budget(8)
        assert budget.threads == 1 and os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and "OMP_NUM_THREADS" not in budget.set_here
        assert torch.get_num_threads() == 1  # torch imported already: its pool follows the budget
    finally:
        torch.set_num_threads(before)


def test_machine_slots_from_env_params_or_gpus(monkeypatch):
    monkeypatch.setenv(runqueue.SLOTS_ENV, "3")
    assert runqueue.machine_slots(2) == 3
    monkeypatch.setenv(runqueue.SLOTS_ENV, "two")
    with pytest.raises(ValueError, match="TUNEGATE_MACHINE_SLOTS='two'"):
        runqueue.machine_slots()
    monkeypatch.delenv(runqueue.SLOTS_ENV)
    assert runqueue.machine_slots(2) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert runqueue.machine_slots() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runqueue.machine_slots() == 1  # no GPU: one slot


def test_a_run_whose_process_is_gone_is_told_apart_from_a_live_one():
    assert process_gone(process_tags()) is False
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert process_gone({**process_tags(), "tunegate.pid": str(dead.pid)}) is True
    assert process_gone({**process_tags(), "tunegate.pid_started": "12.00"}) is True  # the pid now names another process
    assert process_gone({**process_tags(), "tunegate.host": socket.gethostname() + "-elsewhere"}) is None
    assert process_gone({}) is None


def test_stage_timings_add_up_carry_into_the_next_run_and_keep_pipeline_order():
    timings.reset()
    timings.add("tuning", 1.0)
    timings.reset({"server_start": 3.0})  # the run begins: the stage measured before it joins, the old one is gone
    with timings.stage("data"):
        pass
    timings.add("validation", 0.5)
    timings.add("validation", 0.25)
    snap = timings.snapshot()
    assert list(snap) == ["server_start", "data", "validation"] and snap["validation"] == 0.75 and "tuning" not in snap
    assert timings.as_metrics({"data": 1.0}) == {"timing_data_s": 1.0}


def test_timed_names_the_stage_from_the_arguments():
    from tasks.common import timed

    @timed("evaluation_{role}")
    def evaluate(params, role, model_dir=None):
        return role

    timings.reset()
    assert evaluate(None, "baseline") == "baseline"
    assert "evaluation_baseline" in timings.snapshot()


def test_how_runs_share_a_machine_is_not_part_of_the_params_fingerprint():
    from tunegate.params import load_params

    demo = REPO / "params" / "demo.yaml"
    base = load_params(demo).fingerprint()
    assert load_params(demo, ["runs.machine_slots=2", "runs.queue_timeout_s=60", "train.save_steps=7",
                              "train.checkpoint_minutes=1"]).fingerprint() == base
    assert load_params(demo, ["train.learning_rate=0.001"]).fingerprint() != base
