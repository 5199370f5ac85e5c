"""Training as an operation: a killed run resumes from its checkpoint; DDP over 2 CPU processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunegate.data.demo import generate_demo_records
from tunegate.data.sources import write_jsonl

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SETTINGS = ["train.max_steps=40", "train.save_steps=10", "train.batch_size=16", "train.logging_steps=1"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    train, _ = generate_demo_records(11, 60, 5, ["story_start", "refusal", "json_color", "compare"])
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_jsonl(path, train)
    return path


def _command(data: Path, out: Path, settings: list[str] = SETTINGS) -> list[str]:
    cmd = [sys.executable, "-m", "tunegate.tuning.training", "--params", str(REPO / "params" / "demo.yaml"), "--data", str(data), "--out", str(out)]
    for item in settings:
        cmd += ["--set", item]
    return cmd


def _run(cmd: list[str], env=None) -> dict:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_killed_training_resumes_from_its_checkpoint(tmp_path, data_file, base_model_path):
    uninterrupted = _run(_command(data_file, tmp_path / "straight"))
    assert uninterrupted["global_step"] == 40 and uninterrupted["resumed_from"] is None

    out = tmp_path / "crashy"
    proc = subprocess.Popen(_command(data_file, out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    first = out / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # a real crash: no cleanup, no final save
    proc.wait()
    assert first.exists(), "training never wrote its first checkpoint"
    assert not (out / "model").exists(), "the run finished before it could be killed"
    done = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").exists())
    assert done and max(done) < 40

    resumed = _run(_command(data_file, out))
    assert resumed["resumed_from"].endswith(f"checkpoint-{max(done)}")
    assert resumed["steps_run_here"] and min(resumed["steps_run_here"]) > max(done), "steps already done were redone"
    assert resumed["global_step"] == 40
    assert abs(resumed["final_loss"] - uninterrupted["final_loss"]) <= 1e-4, (resumed["final_loss"], uninterrupted["final_loss"])


def test_ddp_over_two_cpu_processes(tmp_path, data_file, base_model_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    settings = ["train.max_steps=12", "train.batch_size=16", "train.logging_steps=1"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    cmd = torchrun + _command(data_file, tmp_path / "ddp", settings)[1:]
    result = _run(cmd, env=env)
    assert result["world_size"] == 2
    assert result["global_step"] == 12
    losses = result["losses"]
    assert losses[-1] < losses[0], losses
    assert (tmp_path / "ddp" / "model" / "adapter_model.safetensors").is_file()
