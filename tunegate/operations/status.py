"""`tunegate status`: the operational view of one registered model.

Reads the registry and runs from MLflow and, when a Prefect server is configured,
the served deployment's schedule and flow runs from Prefect.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from tunegate import tags
from tunegate.adapters import mlflow as tracking
from tunegate.params import Params


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _iso(ms: int | None) -> str | None:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds") if ms else None


def process_tags() -> dict[str, str]:
    """This process, so that ``tunegate status`` can tell a running run from one whose process died."""
    import socket

    import psutil

    return {
        tags.HOST: socket.gethostname(),
        tags.PID: str(os.getpid()),
        tags.PID_STARTED: f"{psutil.Process().create_time():.2f}",
    }


def process_gone(run_tags: dict[str, str]) -> bool | None:
    """True when the run's process is gone from this host (or the pid now belongs to another process);
    None when the run ran on another host or recorded no process."""
    import socket

    import psutil

    pid, host = run_tags.get(tags.PID), run_tags.get(tags.HOST)
    if not pid or host != socket.gethostname():
        return None
    try:
        process = psutil.Process(int(pid))
        started = run_tags.get(tags.PID_STARTED)
        return bool(started) and abs(process.create_time() - float(started)) > 1.0
    except (psutil.NoSuchProcess, ValueError):
        return True
    except psutil.AccessDenied:
        return False


def resume_command(run: Any) -> str:
    params_file = run.data.tags.get(tags.PARAMS_FILE) or "params/demo.yaml"
    return f"tunegate run --params {params_file} --resume {run.info.run_id}"


def _outcome(run: Any) -> str:
    run_tags = run.data.tags
    if run_tags.get(tags.OUTCOME):
        return run_tags[tags.OUTCOME]
    if run.info.status == "RUNNING":
        if process_gone(run_tags):
            return "crashed"
        if run_tags.get(tags.QUEUE) == "waiting":
            return "queued"
        return "running"
    if run.info.status == "FAILED":
        return "failed"
    return run.info.status.lower()


PRIMARY_HEADERS = {"exact_match": "EM", "response_loss": "loss"}  # the status table's column for a primary metric


def run_rows(params: Params, last: int) -> list[dict[str, Any]]:
    rows = []
    for r in tracking.recent_runs(params.project.name, limit=last):
        end = r.info.end_time
        primary = r.data.params.get("gate.primary_metric") or params.gate.primary_metric  # as that run was gated
        rows.append({
            "run_id": r.info.run_id,
            "status": r.info.status,
            "outcome": _outcome(r),
            "trigger": r.data.tags.get(tags.TRIGGER, "manual"),
            "start_time": r.info.start_time,
            "started": _iso(r.info.start_time),
            "duration_s": round((end - r.info.start_time) / 1000, 1) if end and r.info.start_time else None,
            "gate": r.data.tags.get(tags.GATE),
            "registered_version": r.data.tags.get(tags.REGISTERED_VERSION),
            "baseline": r.data.tags.get(tags.BASELINE_SOURCE),
            "candidate_exact_match": r.data.metrics.get("candidate_exact_match"),
            "primary_metric": primary,
            "candidate_primary": r.data.metrics.get(f"candidate_{primary}"),
            "failure": r.data.tags.get(tags.FAILURE),
            "reason": r.data.tags.get(tags.FRESHNESS),
            "host": r.data.tags.get(tags.HOST),
        })
        if rows[-1]["outcome"] in ("crashed", "failed"):
            rows[-1]["resume_command"] = resume_command(r)
    return rows


def pending_candidates(params: Params, now_ms: int | None = None) -> list[dict[str, Any]]:
    """The candidate waiting for approval, its approvals so far, the roles still missing and its wait."""
    from tunegate.governance.promotion import approvals_of, missing_roles

    now_ms = now_ms or int(time.time() * 1000)
    ref = tracking.alias_version(params.model.registered_name, tracking.CANDIDATE)
    if ref is None or ref.tags.get(tags.STATE) in ("rejected", "champion", "failed_run"):
        return []
    approvals = approvals_of(ref)
    waited = (now_ms - ref.created_ms) / 1000 if ref.created_ms else None
    return [{
        "version": ref.version,
        "run_id": ref.run_id,
        "registered": _iso(ref.created_ms),
        "waiting_s": round(waited, 1) if waited is not None else None,
        "waiting": human_duration(waited),
        "approvals": sorted(approvals),
        "missing_roles": missing_roles(params.gate.approvals, approvals),
        "baseline_version": ref.tags.get(tags.BASELINE_VERSION) or None,
    }]


def schedule_view(params: Params) -> dict[str, Any]:
    from tunegate.operations import scheduling

    s = params.schedule
    view: dict[str, Any] = {
        "deployment": f"{scheduling.FLOW_NAME}/{s.deployment}",
        "description": scheduling.describe(params),
        "cron": s.cron,
        "timezone": s.timezone,
        "interval_seconds": s.interval_seconds,
        "on_new_data": s.on_new_data,
        "next": [t.isoformat() for t in scheduling.next_times(params)],
        "prefect": None,
    }
    if os.environ.get("PREFECT_API_URL"):
        view["prefect"] = _prefect_view(view["deployment"])
    return view


def _prefect_view(name: str) -> dict[str, Any]:
    """The served deployment as the Prefect server sees it: paused or not, upcoming and recent runs."""
    try:
        from tunegate.adapters import prefect

        served = prefect.served_deployment(name, upcoming=3, recent=5)
        if served is None:
            return {"served": False, "message": f"no deployment {name} on {os.environ['PREFECT_API_URL']}: run `tunegate schedule`"}
        deployment, upcoming, recent = served
        return {
            "served": True,
            "paused": bool(deployment.paused),
            "status": str(getattr(deployment, "status", "") or ""),
            "upcoming": [{"name": r.name, "expected_start": r.expected_start_time.isoformat() if r.expected_start_time else None} for r in upcoming],
            "recent": [
                {"name": r.name, "state": r.state.name if r.state else None, "start": r.start_time.isoformat() if r.start_time else None,
                 "trigger": (r.parameters or {}).get("trigger")}
                for r in recent
            ],
        }
    except Exception as error:  # the server not answering is a status worth showing, not a crash
        return {"served": None, "message": f"Prefect server not answering: {type(error).__name__}: {error}"}


def collect_status(params: Params, last: int = 10) -> dict[str, Any]:
    name = params.model.registered_name
    champion = tracking.alias_version(name, tracking.CHAMPION)
    candidate = tracking.alias_version(name, tracking.CANDIDATE)

    def version(ref: tracking.VersionRef | None) -> dict[str, Any] | None:
        if ref is None:
            return None
        return {"version": ref.version, "run_id": ref.run_id, "tags": ref.tags, "registered": _iso(ref.created_ms)}

    return {
        "model_name": name,
        "tracking_uri": tracking.tracking_uri(),
        "schedule": schedule_view(params),
        "champion": version(champion),
        "candidate": version(candidate),
        "pending": pending_candidates(params),
        "runs": run_rows(params, last),
        "server": server_view(),
        "alias_drift": _alias_drift(name),
    }


def _alias_drift(name: str) -> list[dict[str, Any]]:
    """tunegate's aliases that the registry holds elsewhere than the audit trail's last move put them."""
    from tunegate.governance.lineage import alias_drift

    try:
        return [d.to_dict() for d in alias_drift(name)]
    except Exception as error:  # a status line, never a crash
        return [{"alias": "?", "message": f"could not compare the aliases with the audit trail: {type(error).__name__}: {error}"}]


def server_view() -> dict[str, Any] | None:
    """The `tunegate server` of this $TUNEGATE_HOME as its supervisor records it in server.json: per server
    pid, state, restarts, last restart and last exit code. None when no server runs from this home."""
    try:
        from tunegate.operations.server import supervisor_view
        from tunegate.paths import tunegate_home

        return supervisor_view(tunegate_home())
    except Exception as error:  # a status line, never a crash
        return {"error": f"{type(error).__name__}: {error}", "components": {}}


def _render_server(server: dict[str, Any] | None, console: Any) -> None:
    if not server:
        return
    if server.get("error"):
        console.print(f"server: cannot read server.json: {server['error']}", highlight=False)
        return
    alive = " [bold red](supervisor not running: stale server.json)[/bold red]" if server.get("supervisor_alive") is False else ""
    console.print(f"server: supervisor pid {server.get('supervisor_pid') or '?'} since {server.get('started') or '?'}{alive}", highlight=False)
    for name, c in (server.get("components") or {}).items():
        last = f", last at {c['last_restart']}" if c.get("last_restart") else ""
        exited = f", last exit code {c['last_exit_code']}" if c.get("last_exit_code") is not None else ""
        console.print(f"  {name}: {c.get('state') or '?'}, pid {c.get('pid') or '-'}, restarts {c.get('restarts', 0)}{last}{exited}"
                      f"{'  ' + c['url'] if c.get('url') else ''}", highlight=False, soft_wrap=True)


OUTCOME_STYLE = {"registered": "green", "nothing_to_do": "cyan", "gate_failed": "yellow", "waiting_better": "yellow", "failed": "red", "crashed": "red",
                 "running": "blue", "queued": "blue"}


def render_status(result: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    console.print(f"model [bold]{result['model_name']}[/bold] at {result['tracking_uri']}", highlight=False)
    _render_server(result.get("server"), console)
    sched = result["schedule"]
    console.print(f"schedule: {sched['deployment']}: {sched['description']}", highlight=False)
    if sched["next"]:
        console.print(f"  next (from params): {', '.join(sched['next'][:3])}", highlight=False)
    prefect = sched.get("prefect")
    if prefect:
        if prefect.get("served"):
            console.print(f"  served: {'PAUSED' if prefect['paused'] else 'active'}; upcoming: "
                          + (", ".join((u["expected_start"] or "?")[:19] for u in prefect["upcoming"]) or "none"), highlight=False)
        else:
            console.print(f"  {prefect.get('message')}", highlight=False)
    for drift in result.get("alias_drift") or []:
        console.print(f"[bold red]warning:[/bold red] {drift['message']}", highlight=False, soft_wrap=True)
    champion = result["champion"]
    console.print(f"champion: {champion['version'] + ' (registered ' + (champion['registered'] or '?') + ')' if champion else '-'}", highlight=False)
    if result["pending"]:
        for p in result["pending"]:
            missing = ", ".join(p["missing_roles"]) or "none"
            console.print(
                f"[bold yellow]waiting for approval:[/bold yellow] version {p['version']} for {p['waiting']} "
                f"(approvals: {', '.join(p['approvals']) or 'none'}; still needed: {missing}) -> "
                f"tunegate approve {p['version']} --reviewer NAME --reason TEXT",
                highlight=False, soft_wrap=True,
            )
    else:
        console.print("waiting for approval: none", highlight=False)
    table = Table(title="last runs", title_justify="left")
    # The figure each run was gated on (gate.primary_metric as that run had it; named where it differs).
    shown = result["runs"][0]["primary_metric"] if result["runs"] else "exact_match"
    for header in ("run", "started UTC", "took", "trigger", "outcome", "ver", "baseline", PRIMARY_HEADERS.get(shown, shown)):
        table.add_column(header, no_wrap=True)
    table.add_column("why", no_wrap=True, overflow="ellipsis", max_width=40)
    for r in result["runs"]:
        value = r["candidate_primary"]
        figure = f"{value:.3f}" if value is not None else "-"
        if r["primary_metric"] != shown:
            figure = f"{r['primary_metric']} {figure}"
        style = OUTCOME_STYLE.get(r["outcome"], "")
        why = r["failure"] if r["outcome"] == "failed" else (r["reason"] if r["outcome"] == "nothing_to_do" else "")
        table.add_row(
            r["run_id"][:8], (r["started"] or "-")[5:16].replace("T", " "), human_duration(r["duration_s"]), (r["trigger"] or "-")[:24],
            f"[{style}]{r['outcome']}[/{style}]" if style else r["outcome"], r["registered_version"] or "-",
            r["baseline"] or "-", figure, why or "",
        )
    console.print(table)
    for r in result["runs"]:
        if r["outcome"] == "crashed":
            console.print(f"[bold red]crashed:[/bold red] run {r['run_id']} (its process on {r['host']} is gone); continue it from "
                          f"its last checkpoint: {r['resume_command']}", highlight=False, soft_wrap=True)
