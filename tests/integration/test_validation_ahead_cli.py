"""A real `tunegate run` process validates its data ahead, beside its start-up (tunegate.operations.validation_ahead):
bad data still stops the run with the file, the record and the rule, exit 1, nothing trained or registered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TUNEGATE = str(Path(sys.executable).parent / "tunegate")


def test_bad_data_found_ahead_stops_the_run_naming_file_record_and_rule(tmp_path, demo_data):
    train = tmp_path / "train.jsonl"
    lines = (demo_data / "train.jsonl").read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[41])
    bad["messages"][-1]["content"] = ""  # an empty response: an error rule
    lines[41] = json.dumps(bad, ensure_ascii=False)
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = yaml.safe_load((REPO / "params" / "demo.yaml").read_text())
    raw["model"]["registered_name"] = "ahead-assistant"
    raw["data"]["train"] = [{"path": str(train), "name": "demo"}]
    raw["data"]["eval"] = [{"path": str(demo_data / "eval.jsonl"), "name": "demo_eval"}]
    raw["data"]["dvc_stage"] = None
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    home = tmp_path / "home"
    env = {**os.environ, "TUNEGATE_HOME": str(home), "COLUMNS": "200"}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "TUNEGATE_AUDIT_DB"):
        env.pop(key, None)
    done = subprocess.run([TUNEGATE, "run", "--json", "-p", str(params)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "validation computed ahead beside start-up" in log, log[-3000:]
    error = json.loads(done.stdout.strip().splitlines()[-1])["error"]
    assert "ERROR non_empty" in error and f"{train} record 41 " in error, error
    assert not list((home / "runs").glob("*/model")), "a model was trained"
