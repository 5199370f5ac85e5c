"""Two processes opening a fresh $TUNEGATE_HOME's MLflow store at once (two `tunegate run`s started
together): the schema is created once, neither fails."""

from __future__ import annotations

import json
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
from tunegate.adapters import mlflow as tracking
from tunegate.governance import audit
run_id = tracking.start_run("fresh", "r", {})
audit.record("opened", {"run_id": run_id})
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


def test_a_new_home_starts_its_prefect_server_from_the_migrated_template(tmp_path, monkeypatch):
    """`make setup` keeps a migrated, empty Prefect database in the user's cache; `tunegate run`'s temporary
    server on a new $TUNEGATE_HOME starts from a copy of it (no migration), and works."""
    import sqlite3
    import urllib.request

    from tunegate.adapters import prefect as ephemeral

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    template = ephemeral.make_template()
    assert template == tmp_path / "cache" / "tunegate" / template.name and oct(template.stat().st_mode & 0o777) == "0o600"
    with sqlite3.connect(template) as db:
        revisions = db.execute("SELECT version_num FROM alembic_version").fetchall()
        assert revisions and db.execute("SELECT count(*) FROM flow_run").fetchone() == (0,)

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home" / "prefect"))
    assert ephemeral.seed_database() is True
    assert (tmp_path / "home" / "prefect" / "prefect.db").read_bytes() == template.read_bytes()
    assert ephemeral.seed_database() is False  # a home's own database is never replaced
    server = ephemeral.TemporaryPrefectServer().start_in_background()
    try:
        url = server.wait()
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            assert response.status == 200
        request = urllib.request.Request(f"{url}/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read()) == []
    finally:
        server.stop()
    with sqlite3.connect(tmp_path / "home" / "prefect" / "prefect.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == revisions

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "other" / "prefect"))
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://nobody@127.0.0.1/none")
    assert ephemeral.seed_database() is False  # a database of the user's own: left alone
