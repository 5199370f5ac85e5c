"""Unattended runs: the ``retrain`` deployment's schedule and new-data trigger, and the data events.

``tunegate schedule`` serves the deployment built here (``flow.serve``); ``prefect.yaml``
defines the same deployment for a work pool. New data announces itself with a Prefect
event: ``tunegate data add`` emits ``tunegate.data.added`` and the watcher inside
``tunegate schedule`` emits ``tunegate.data.new-version`` when a ``.dvc`` file or the
``dvc.lock`` entry of the configured data changes (a ``git pull`` of a new data version).
The deployment's trigger starts a run on either; the run itself then decides whether
anything changed (``tunegate.operations.freshness``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunegate.params import Params
from tunegate.paths import resolve_path

FLOW_NAME = "retrain"
DATA_ADDED = "tunegate.data.added"
DATA_NEW_VERSION = "tunegate.data.new-version"
RESOURCE_PREFIX = "tunegate.dataset."
# The templated parameter a data-triggered run gets: which dataset event started it.
DATA_TRIGGER_TEMPLATE = "data:{{ event.resource.id }}@{{ event.payload.md5 }}"


class ScheduleError(RuntimeError):
    """The schedule cannot be served (no server, bad deployment); the message says what to do."""


def deployment_parameters(params_file: str, params: Params, trigger: str = "schedule", overrides: list[str] | None = None) -> dict[str, Any]:
    """The flow parameters of unattended runs: the params' ``schedule.overrides`` plus ``overrides``."""
    return {
        "params_file": params_file,
        "overrides": [*params.schedule.overrides, *(overrides or [])],
        "trigger": trigger,
        "force": False,
        "wait_for_approval": False,  # a person approves later; a paused run would hold the only slot
    }


def describe(params: Params) -> str:
    s = params.schedule
    parts = []
    if s.cron:
        parts.append(f"cron '{s.cron}' ({s.timezone})")
    elif s.interval_seconds:
        parts.append(f"every {s.interval_seconds:g}s")
    if s.on_new_data:
        parts.append("on new data")
    return ", ".join(parts) or "no schedule, no trigger"


def next_times(params: Params, count: int = 3, after: dt.datetime | None = None) -> list[dt.datetime]:
    """The next scheduled start times (cron or interval), in the schedule's timezone."""
    from zoneinfo import ZoneInfo

    s = params.schedule
    zone = ZoneInfo(s.timezone)
    now = (after or dt.datetime.now(dt.timezone.utc)).astimezone(zone)
    if s.cron:
        from cronsim import CronSim

        it = CronSim(s.cron, now)
        return [next(it) for _ in range(count)]
    if s.interval_seconds:
        return [now + dt.timedelta(seconds=s.interval_seconds * (i + 1)) for i in range(count)]
    return []


def build_deployment(flow, params_file: str, params: Params, version: str | None = None, overrides: list[str] | None = None):
    """The deployment of ``flow`` (the ``retrain`` flow, handed in by the CLI): the params' schedule, a
    trigger on new data, one run at a time.

    ``overrides`` (``--set`` outside the schedule section) reach every run it starts.
    """
    from tunegate.adapters import prefect

    s = params.schedule
    trigger = None
    if s.on_new_data:
        trigger = {
            "name": "new data",
            "description": "tunegate data add, or a new DVC version of the configured data",
            "expect": {DATA_ADDED, DATA_NEW_VERSION},
            "match": {"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
            "parameters": deployment_parameters(params_file, params, DATA_TRIGGER_TEMPLATE, overrides),
        }
    return prefect.to_deployment(
        flow,
        name=s.deployment,
        cron=s.cron,
        interval_seconds=s.interval_seconds,
        timezone=s.timezone,
        trigger=trigger,
        parameters=deployment_parameters(params_file, params, overrides=overrides),
        max_concurrent_runs=s.max_concurrent_runs,
        description=f"tunegate retrain of {params.model.registered_name}: {describe(params)}",
        tags=["tunegate", params.model.registered_name],
        version=version,
    )


# --- data events ---------------------------------------------------------------------------


def resource_id(path: str) -> str:
    return f"{RESOURCE_PREFIX}{path}"


def _announced_file() -> Path:
    from tunegate.paths import tunegate_home

    return tunegate_home() / "data" / "announced.json"


@contextlib.contextmanager
def _announced():
    """The md5 last announced per dataset (shared by `data add` and the watcher: one event per version)."""
    import fcntl

    path = _announced_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text()) if path.is_file() else {}
        yield state
        path.write_text(json.dumps(state, indent=1, sort_keys=True))


def server_configured() -> bool:
    return bool(os.environ.get("PREFECT_API_URL"))


def emit_data_event(event: str, path: str, md5: str, extra: dict[str, Any] | None = None, *, always: bool = False) -> bool:
    """Send one data event to the Prefect server; False (nothing sent) when no server is configured
    or, unless ``always`` (a person's `data add`), this md5 of ``path`` was announced already."""
    if not server_configured():
        return False
    with _announced() as state:
        if state.get(path) == md5 and not always:
            return False
        _send(event, path, md5, extra or {})
        state[path] = md5
    return True


def _send(event: str, path: str, md5: str, extra: dict[str, Any]) -> None:
    from tunegate.adapters.prefect import emit_event
    from tunegate.governance.identity import environment_user

    payload = {"path": path, "md5": md5, "user": environment_user(), **extra}
    resource = {"prefect.resource.id": resource_id(path), "prefect.resource.name": Path(path).name, "tunegate.md5": md5}
    emit_event(event, resource, payload)


# --- the watcher for new DVC versions ------------------------------------------------------


def data_versions(params: Params) -> dict[str, str]:
    """Path -> md5 of the configured data as DVC records it (``.dvc`` file or ``dvc.lock``), else the file's md5."""
    import yaml

    from tunegate.adapters.dvc import file_md5, stage_outputs
    from tunegate.paths import repo_root

    versions: dict[str, str] = {}
    if params.data.dvc_stage:
        with contextlib.suppress(FileNotFoundError, KeyError):
            for out in stage_outputs(repo_root() / "dvc.lock", params.data.dvc_stage):
                versions[out.path] = out.md5
    stage_outs = [resolve_path(p) for p in versions]
    for source in params.data.train + params.data.eval:
        path = resolve_path(source.path)
        if any(path == out or out in path.parents for out in stage_outs):
            continue  # produced by the DVC stage above
        meta = path.with_name(path.name + ".dvc")
        if meta.is_file():
            outs = (yaml.safe_load(meta.read_text()) or {}).get("outs") or [{}]
            versions[source.path] = str(outs[0].get("md5", ""))
        elif path.is_file():
            versions[source.path] = file_md5(path)
    return versions


@dataclass
class DataWatcher:
    """Polls ``data_versions`` and emits DATA_NEW_VERSION for each path whose md5 changed."""

    params: Params
    interval: float
    emit: Callable[[str, str, str], bool] = lambda event, path, md5: emit_data_event(event, path, md5)
    on_error: Callable[[Exception], None] = lambda error: None

    def __post_init__(self) -> None:
        self.last = data_versions(self.params)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> list[str]:
        current = data_versions(self.params)
        changed = [path for path, md5 in current.items() if self.last.get(path) != md5]
        sent = [path for path in changed if self.emit(DATA_NEW_VERSION, path, current[path])]
        self.last = current
        return sent

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as error:  # a watcher hiccup must not stop the served deployment
                self.on_error(error)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tunegate-data-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


# --- prefect.yaml deployments -------------------------------------------------------------


def deploy_prefect_yaml(names: list[str], repo: Path) -> int:
    """``prefect deploy`` of the named deployments in ``repo/prefect.yaml``, from ``repo`` (the entrypoints
    in prefect.yaml are relative to the repo root); returns its exit code
    (:func:`tunegate.adapters.prefect.deploy`, which works around a Prefect client bug)."""
    from tunegate.adapters.prefect import deploy

    os.environ.setdefault("TUNEGATE_REPO", str(repo))
    return deploy(repo / "prefect.yaml", names, cwd=repo)
