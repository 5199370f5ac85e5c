"""The temporary Prefect server `tunegate run` starts for itself when no PREFECT_API_URL is set.

The same server Prefect's ephemeral mode starts (uvicorn on ``prefect.server.api.server:create_app``
with the UI off, the database under ``$PREFECT_HOME``), started by ``tunegate run`` on a thread while
it checks and imports the pipeline: this process never imports Prefect's server API (1.7 s here),
and a new home's database is created while the run does other work. The flow then runs with
``PREFECT_API_URL`` pointing at it (as a Prefect setting, not in the environment, :func:`temporary_api`)
and the server stops when the process ends: at exit, or, when the process is killed, by the kernel
(the server is started by :func:`tunegate.adapters.lifeline.spawn`, with the parent-death signal).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tunegate.adapters import lifeline
from tunegate.paths import free_port

TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
PORT_IN_USE = 3  # uvicorn's exit code when the port was taken between our check and its bind


def _prefect_parent() -> str:
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.submodule_search_locations, "prefect is not installed"
    return str(Path(list(spec.submodule_search_locations)[0]).parent)


class TemporaryPrefectServer:
    """Start with :meth:`start_in_background`, then :meth:`wait` for its API URL (raises what start-up raised)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.seconds = 0.0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start_in_background(self) -> TemporaryPrefectServer:
        self._thread = threading.Thread(target=self._start, name="prefect-server-start", daemon=True)
        self._thread.start()
        return self

    def wait(self) -> str:
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error
        return self.api_url

    def _spawn(self) -> subprocess.Popen:
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        return lifeline.spawn(  # dies with this process, kill -9 included
            [sys.executable, "-m", "uvicorn", "--app-dir", _prefect_parent(), "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env,
        )

    def _start(self) -> None:
        begin = time.perf_counter()
        timeout = float(os.environ.get(TIMEOUT_ENV) or 180)
        try:
            seed_database()
            self.port = free_port()
            self.process = self._spawn()
            atexit.register(self.stop)
            while True:
                if self.process.poll() == PORT_IN_USE:
                    self.port = free_port()
                    self.process = self._spawn()
                    continue
                if self.process.poll() is not None:
                    raise RuntimeError(f"Timed out while attempting to connect to ephemeral Prefect API server: "
                                       f"the server process exited with code {self.process.returncode}")
                if self._healthy():
                    break
                if time.perf_counter() - begin > timeout:
                    raise RuntimeError(f"Timed out while attempting to connect to ephemeral Prefect API server after {timeout:g} s")
                time.sleep(0.1)
        except BaseException as error:  # raised by wait(), where `tunegate run` explains it
            self.error = error
        self.seconds = time.perf_counter() - begin

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


# --- a new home's Prefect database, migrated once per machine and Prefect version ---------------------


def database_path() -> Path | None:
    """The SQLite database the temporary server uses (Prefect's default under $PREFECT_HOME), or ``None``
    when the user set a database URL of their own."""
    if os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or not os.environ.get("PREFECT_HOME"):
        return None
    return Path(os.environ["PREFECT_HOME"]) / "prefect.db"


def template_path() -> Path:
    """This user's copy of a freshly migrated, empty Prefect database, one per Prefect version (in the
    user's cache, not a shared directory: a database another user could write is not trusted)."""
    from importlib.metadata import version

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunegate"
    return cache / f"prefect-{version('prefect')}-empty.db"


def seed_database() -> bool:
    """Before the server starts: a new home gets a copy of the migrated template, when this user has
    one (``make setup`` makes it), and Prefect finds nothing to migrate (creating the schema took
    7-20 s). Returns whether it did."""
    database = database_path()
    if database is None or database.exists():
        return False
    template = template_path()
    if not template.is_file():
        return False
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(database.name + f".{os.getpid()}.partial")
    shutil.copyfile(template, partial)
    try:  # created only if still absent: a second run starting on this home at once keeps the first's
        os.link(partial, database)
    except FileExistsError:
        return False
    finally:
        partial.unlink()
    return True


def make_template() -> Path:
    """Start a temporary server on a new, empty Prefect home, stop it, and keep its database (read with
    SQLite's backup API once the server has stopped) as the template; returns its path."""
    import sqlite3
    import tempfile

    from tunegate.paths import TELEMETRY_OFF, environment

    template = template_path()
    with tempfile.TemporaryDirectory(prefix="tunegate-prefect-template-") as home, \
            environment({**TELEMETRY_OFF, "PREFECT_HOME": home}, unset=("PREFECT_API_DATABASE_CONNECTION_URL",)):
        server = TemporaryPrefectServer().start_in_background()
        try:
            server.wait()
        finally:
            server.stop()
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_name(template.name + f".{os.getpid()}.partial")
        source, target = sqlite3.connect(Path(home) / "prefect.db"), sqlite3.connect(partial)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        os.chmod(partial, 0o600)
        os.replace(partial, template)
    return template


# --- the Prefect client, for the CLI, the run launcher and operations ----------------------------
# (tunegate/operations reaches Prefect only through these; Prefect is imported when one is called)


def temporary_api(api_url: str | None):
    """A context manager pointing Prefect's client at ``api_url`` (a Prefect setting: the environment's
    PREFECT_API_URL keeps meaning "a real server", e.g. for the run queue), without flow-run heartbeats:
    they let a lasting server call a silent run crashed, and the temporary server ends with this process
    (tunegate status finds a crashed run by its process); their thread held the flow's end up to 1 s.
    ``None``: nothing changes."""
    import contextlib

    if api_url is None:
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def drain_workers(timeout: float = 5) -> None:
    """Ship the logs and events Prefect's workers still hold (when Prefect was loaded at all), while the
    temporary server still runs: flushing to a stopped one waits out a 5 s timeout. Never raises:
    nothing of a run depends on it."""
    if "prefect" not in sys.modules:
        return
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=timeout)
        EventsWorker.drain_all(timeout=timeout)
    except Exception:
        pass


def ensure_global_limit(name: str, slots: int) -> None:
    """Create the global concurrency limit ``name`` with ``slots`` (or set its size to ``slots``, active)."""
    import contextlib

    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(Exception):  # another run created it a moment ago
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots, active=True))
            return
        if existing.limit != slots or not existing.active:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=slots, active=True))


def global_limit_full(name: str) -> bool:
    """Whether every slot of the global concurrency limit ``name`` is taken now (False when unknown)."""
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
    except Exception:  # unknown: the attempt itself tells
        return False
    return limit.active_slots >= limit.limit


def global_limit_slot(name: str, flow_run_id: str | None, timeout_seconds: float):
    """A context manager that occupies one slot of the global concurrency limit ``name`` for the flow run
    ``flow_run_id`` (the lease's holder), raising TimeoutError on entry when none frees in ``timeout_seconds``."""
    from uuid import UUID

    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.sync import concurrency

    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run_id)) if flow_run_id else None
    return concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True, holder=holder)


def served_deployment(name: str, upcoming: int = 3, recent: int = 5):
    """Deployment ``name`` ("flow/deployment") on the Prefect server and its next scheduled and latest other
    flow runs: ``(deployment, upcoming runs, recent runs)``, or None when the server has no such deployment."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None
        by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        scheduled = client.read_flow_runs(
            deployment_filter=by_deployment,
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=upcoming,
        )
        latest = client.read_flow_runs(
            deployment_filter=by_deployment,
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=[StateType.SCHEDULED]))),
            sort=FlowRunSort.START_TIME_DESC, limit=recent,
        )
    return deployment, scheduled, latest


def to_deployment(flow, *, name: str, cron: str | None, interval_seconds: float | None, timezone: str | None,
                  trigger: dict | None, parameters: dict, max_concurrent_runs: int, description: str, tags: list[str],
                  version: str | None):
    """``flow.to_deployment``: scheduled by ``cron``, else every ``interval_seconds`` (neither: unscheduled),
    started by ``trigger`` (the fields of a ``DeploymentEventTrigger``) when given, at most
    ``max_concurrent_runs`` at once with the rest enqueued; not paused."""
    import datetime as dt

    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron, Interval

    schedules = []
    if cron:
        schedules.append(Cron(cron, timezone=timezone))
    elif interval_seconds:
        schedules.append(Interval(dt.timedelta(seconds=interval_seconds), timezone=timezone))
    return flow.to_deployment(
        name=name,
        schedules=schedules,
        triggers=[DeploymentEventTrigger(**trigger)] if trigger else [],
        parameters=parameters,
        concurrency_limit=ConcurrencyLimitConfig(limit=max_concurrent_runs, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        description=description,
        tags=tags,
        version=version,
        paused=False,
    )


def emit_event(event: str, resource: dict[str, str], payload: dict) -> None:
    """Send one event to the Prefect server (``PREFECT_API_URL``) and wait until it is sent."""
    import asyncio

    from prefect.events import Event
    from prefect.events.clients import get_events_client

    message = Event(event=event, resource=resource, payload=payload)

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(message)

    asyncio.run(send())


def deploy(prefect_file: Path, names: list[str], cwd: Path) -> int:
    """``prefect deploy`` of the named deployments in ``prefect_file``, run from ``cwd`` (where its entrypoints
    are relative to); returns its exit code.

    Works around a Prefect 3.8.8 client bug under the pinned ``fastapi<0.155``: after creating the
    deployment, ``prefect deploy`` asks for the pool's workers with ``limit: null``, which the
    server rejects with 422, so the command exits 1 although the deployment exists. The patch
    sends the server's own defaults instead; nothing else changes.
    """
    from prefect.cli import app as prefect_cli
    from prefect.client.orchestration._work_pools.client import WorkPoolAsyncClient

    original = WorkPoolAsyncClient.read_workers_for_work_pool

    async def read_workers(self, work_pool_name, worker_filter=None, offset=None, limit=None):
        return await original(self, work_pool_name, worker_filter, 0 if offset is None else offset, 200 if limit is None else limit)

    argv = ["--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    for name in names:
        argv += ["--name", name]
    WorkPoolAsyncClient.read_workers_for_work_pool = read_workers
    saved_cwd, saved_argv = os.getcwd(), sys.argv
    try:
        os.chdir(cwd)
        sys.argv = ["prefect", *argv]  # Prefect's CLI entry point reads its arguments from sys.argv
        prefect_cli()
        return 0
    except SystemExit as done:
        return int(done.code or 0) if not isinstance(done.code, str) else 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        WorkPoolAsyncClient.read_workers_for_work_pool = original


def main() -> None:
    """``python -m tunegate.adapters.prefect --template``: make this user's template (``make setup`` does)."""
    if sys.argv[1:] != ["--template"]:
        sys.exit("usage: python -m tunegate.adapters.prefect --template")
    if template_path().is_file():
        print(f"Prefect database template: {template_path()} (already there)")
        return
    print(f"Prefect database template: {make_template()}")


if __name__ == "__main__":
    main()
