"""Two processes opening a fresh $TUNEGATE_HOME's MLflow store at once (two `tunegate run`s started
together): the schema is created once, neither fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
OPEN = """
from tunegate.paths import configure_environment
configure_environment()
from tunegate import promotion, tracking
run_id = tracking.start_run("fresh", "r", {})
promotion.record("opened", {"run_id": run_id})
print(run_id)
"""


def test_two_processes_create_the_store_of_a_fresh_home_together(tmp_path):
    for attempt in range(3):  # MLflow's migration race showed every time before the lock; three tries make sure
        home = tmp_path / f"home{attempt}"
        env = {**os.environ, "TUNEGATE_HOME": str(home)}
        env.pop("MLFLOW_TRACKING_URI", None)
        procs = [subprocess.Popen([sys.executable, "-c", OPEN], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [p.communicate(timeout=180) + (p.returncode,) for p in procs]
        assert [r[2] for r in results] == [0, 0], [r[1][-2000:] for r in results]
        assert len({r[0].strip() for r in results}) == 2
