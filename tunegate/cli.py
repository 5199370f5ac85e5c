"""The ``tunegate`` command line.

Imports of prefect, mlflow, torch and friends happen inside the commands so
that ``tunegate --help`` answers in well under a second.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer

app = typer.Typer(
    name="tunegate",
    help="Instruction tuning as an operated, auditable pipeline: validate -> tune -> evaluate -> gate -> promote.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_PARAMS = "params/demo.yaml"
# Options several commands share.
ParamsOption = Annotated[str, typer.Option("--params", "-p", help="params YAML file")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="override: section.key=value (repeatable)")]
ReasonOption = Annotated[str, typer.Option("--reason", help="why (recorded in the audit trail)")]


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def _fail(message: str, code: int = 1, json_out: bool = False) -> NoReturn:
    """Print ``error: message`` to stderr and exit ``code``; with ``json_out`` stdout ends with
    ``{"outcome": "failed", "error": message}`` (the ``--json`` contract holds on failure too)."""
    from rich.markup import escape

    # soft_wrap: long paths and rule names stay on one line, so logs can be grepped.
    _console(stderr=True).print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True, markup=True)
    if json_out:
        print(json.dumps({"outcome": "failed", "error": message}), flush=True)
    raise typer.Exit(code)


def _load(params: str, overrides: list[str], json_out: bool = False):
    """The params validated, else exit 2 naming the key and the fix."""
    from tunegate.operations.launcher import load_checked

    with _refusals(json_out):
        return load_checked(params, overrides)


@contextlib.contextmanager
def _refusals(json_out: bool = False) -> Iterator[None]:
    """A command body (tunegate.operations) that raises CommandError: ``error: ...`` and its exit code."""
    from tunegate.operations.launcher import CommandError

    try:
        yield
    except CommandError as error:
        _fail(error.message, code=error.code, json_out=json_out)


@app.command("run")
def run_command(
    params: ParamsOption = DEFAULT_PARAMS,
    set_: SetOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object on the last line: the summary, or {outcome: failed, error}")] = False,
    resume: Annotated[str | None, typer.Option("--resume", help="MLflow run id of a run that died: continue it from its last checkpoint")] = None,
    wait_for_approval: Annotated[bool | None, typer.Option("--wait-for-approval/--no-wait-for-approval", help="pause for a review form in the Prefect UI (default: when PREFECT_API_URL points at a server)")] = None,
    accept_unaudited_champion: Annotated[bool, typer.Option("--accept-unaudited-champion", help="evaluate against a champion alias that was moved outside tunegate (the audit trail records that you did)")] = False,
) -> None:
    """Run the retrain flow: validate, tune, evaluate against the baseline, gate, register.

    Params, data and eval files, the base model, its tokenizer and template and the hardware are
    checked first (the preflight): any problem stops the command (exit 2) before anything starts.
    A champion alias moved outside tunegate (not in the audit trail) stops the run (exit 1) before
    anything is trained, unless --accept-unaudited-champion.
    """
    from tunegate.operations import launcher

    with _refusals(json_out):
        launcher.run(params, list(set_ or []), json_out, resume, wait_for_approval, accept_unaudited_champion,
                     own=_own_process(), flow_loader=_retrain_flow)


def _retrain_flow():
    """The ``retrain`` flow, imported when the launcher is ready for it (it imports the whole pipeline)."""
    from flows.retrain import retrain

    return retrain


def main() -> None:
    """The ``tunegate`` command: the app, then :func:`_exit_fast` with its exit code. Libraries' Python
    warnings go to ``$TUNEGATE_HOME/logs/warnings.log``, not the terminal (:mod:`tunegate.operations.quiet`)."""
    from tunegate.operations.quiet import warnings_to_log

    warnings_to_log()
    try:
        app()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if not isinstance(done.code, (int, type(None))):
            print(done.code, file=sys.stderr)
    _exit_fast(code)


def _own_process() -> bool:
    """Whether this process was started to run the command (not a program calling it, like CliRunner)."""
    argv0 = Path(sys.argv[0])  # the console script, or `python -m tunegate[.cli]` (not `python -m pytest`'s __main__.py)
    return argv0.name == "tunegate" or (argv0.name in ("cli.py", "__main__.py") and argv0.resolve().parent == Path(__file__).resolve().parent)


def _exit_fast(code: int) -> NoReturn:
    """End the process once the atexit handlers ran (Prefect stops its temporary server, logs flush):
    the interpreter's own teardown of the loaded stack takes ~8 s and does nothing a run needs.
    Inside another program (tests' CliRunner) it just raises ``typer.Exit``."""
    import atexit
    import os

    if not _own_process():
        raise typer.Exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    if "prefect" in sys.modules:  # ship the last logs and events while the temporary server still runs
        from tunegate.adapters.prefect import drain_workers  # (atexit stops it first)

        drain_workers(timeout=5)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="training data files (JSON list or JSONL, any supported format)")],
    eval_paths: Annotated[list[Path] | None, typer.Option("--eval", help="eval data files; enables the train/eval overlap check")] = None,
    params: Annotated[str | None, typer.Option("--params", "-p", help="params file whose validation rules, model, template and token limit apply (default: the demo's model, template and limit with default rules); with --kind preference its preference.validation rules")] = None,
    kind: Annotated[str, typer.Option("--kind", help="chat: instruction (SFT) records; preference: chosen/rejected pairs (DPO) or labelled KTO records")] = "chat",
    fmt: Annotated[str, typer.Option("--format", help="auto, alpaca, sharegpt, openai, prompt_completion or self_instruct; with --kind preference: auto, trl, ranking_alpaca, ranking_sharegpt, hh or kto")] = "auto",
    max_length: Annotated[int | None, typer.Option("--max-length", min=8, help="token limit with the chat template (default: validation.max_length, else train.max_length of the params); --kind chat only")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="write report.md, report.json and Data Docs here")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the reports as one JSON object")] = False,
) -> None:
    """Validate data files alone: the same conversion and expectation suite as `run`."""
    from tunegate.operations.commands import validate_files

    with _refusals():
        validate_files(paths, eval_paths, params, fmt, max_length, report_dir, json_out, kind=kind)


data_app = typer.Typer(help="Put data under DVC and inspect it.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("add")
def data_add(
    paths: Annotated[list[Path], typer.Argument(help="files to version; files outside the repo are copied into --to first")],
    to: Annotated[str, typer.Option("--to", help="repo folder for files that live outside the repo")] = "data/sources",
    repo: Annotated[Path | None, typer.Option("--repo", help="the git + DVC repo that keeps the data (default: this project)")] = None,
    event: Annotated[bool, typer.Option("--event/--no-event", help="announce the new data to the Prefect server (starts the served deployment)")] = True,
) -> None:
    """`dvc add` user data files, print their md5s and emit a `tunegate.data.added` Prefect event."""
    from tunegate.operations.commands import data_add as add

    with _refusals():
        add(paths, to, repo, event)


def _need_server(command: str) -> None:
    import os

    if not os.environ.get("PREFECT_API_URL"):
        _fail(f"`tunegate {command}` needs a Prefect server that outlives this command: start `tunegate server` "
              "and export the PREFECT_API_URL and MLFLOW_TRACKING_URI it prints", code=2)


@app.command()
def schedule(
    params: Annotated[str, typer.Option("--params", "-p", help="params YAML file (its schedule section)")] = DEFAULT_PARAMS,
    set_: SetOption = None,
    limit: Annotated[int | None, typer.Option("--limit", help="most flow runs this process executes at once")] = None,
) -> None:
    """Serve the `retrain` deployment: its schedule and new-data trigger start runs until Ctrl-C."""
    from tunegate.paths import configure_environment

    overrides = list(set_ or [])
    loaded = _load(params, overrides)
    configure_environment()
    _need_server("schedule")
    from prefect import serve

    from flows.retrain import retrain
    from tunegate.operations.commands import serve_schedule

    with _refusals():
        serve_schedule(retrain, serve, params, loaded, overrides, limit)


@app.command()
def deploy(
    name: Annotated[list[str] | None, typer.Option("--name", "-n", help="deployment(s) of prefect.yaml (default: tunegate-retrain)")] = None,
) -> None:
    """`prefect deploy` the work-pool deployments in prefect.yaml (TUNEGATE_REPO: where workers find this checkout)."""
    from tunegate.paths import configure_environment, repo_root

    configure_environment()
    _need_server("deploy")
    from tunegate.operations.scheduling import deploy_prefect_yaml

    code = deploy_prefect_yaml(name or ["tunegate-retrain"], repo_root())
    if code:
        _fail(f"prefect deploy exited {code}", code=code)


@app.command()
def trigger(
    params: Annotated[str, typer.Option("--params", "-p", help="params YAML file (its schedule.deployment)")] = DEFAULT_PARAMS,
    force: Annotated[bool, typer.Option("--force", help="train even when data, params and code equal the champion's")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the run to end and exit non-zero if it failed")] = False,
) -> None:
    """Start a run of the served deployment now, as the schedule would (it skips when nothing changed, unless --force)."""
    from tunegate.paths import configure_environment

    loaded = _load(params, [])
    configure_environment()
    _need_server("trigger")
    from prefect.deployments import run_deployment

    from tunegate.governance.identity import environment_user
    from tunegate.operations import scheduling

    name = f"{scheduling.FLOW_NAME}/{loaded.schedule.deployment}"
    try:
        run = run_deployment(
            name, parameters={"trigger": f"cli:{environment_user()}", "force": force},
            timeout=None if wait else 0, as_subflow=False,
        )
    except Exception as error:
        _fail(f"could not start {name} (is `tunegate schedule` serving it?): {type(error).__name__}: {error}")
    state = run.state
    _console().print(f"flow run {run.name} ({run.id}) of {name}: {state.name if state else 'scheduled'}", highlight=False)
    if wait and state is not None and not state.is_completed():
        _fail(f"flow run {run.id} ended {state.name}: {state.message or ''}")


@app.command()
def server(
    host: Annotated[str, typer.Option("--host", help="address both servers bind to; loopback unless you put a proxy with auth in front")] = "127.0.0.1",
    prefect_port: Annotated[int, typer.Option("--prefect-port", help="Prefect UI and API port")] = 4200,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port", help="MLflow UI and API port")] = 5000,
    prefect_database_url: Annotated[str | None, typer.Option("--prefect-database-url", envvar="TUNEGATE_PREFECT_DATABASE_URL", help="e.g. postgresql+asyncpg://user@db:5432/prefect (default: SQLite under $TUNEGATE_HOME/prefect)")] = None,
    mlflow_backend_store_uri: Annotated[str | None, typer.Option("--mlflow-backend-store-uri", envvar="TUNEGATE_MLFLOW_BACKEND_STORE_URI", help="e.g. postgresql://user@db:5432/mlflow (default: sqlite:///$TUNEGATE_HOME/mlflow/mlflow.db)")] = None,
    mlflow_artifacts_destination: Annotated[str | None, typer.Option("--mlflow-artifacts-destination", envvar="TUNEGATE_MLFLOW_ARTIFACTS_DESTINATION", help="where the MLflow server stores artifacts it proxies, e.g. s3://bucket/mlflow (default: $TUNEGATE_HOME/mlflow/artifacts)")] = None,
    mlflow_workers: Annotated[int, typer.Option("--mlflow-workers", help="MLflow server worker processes")] = 1,
    auth: Annotated[bool, typer.Option("--auth/--no-auth", envvar="TUNEGATE_MLFLOW_AUTH", help="MLflow basic authentication: users log in, permissions per registered model (admin user `admin`, password in $TUNEGATE_HOME/mlflow/admin-password or $MLFLOW_AUTH_ADMIN_PASSWORD)")] = False,
    auth_database_url: Annotated[str | None, typer.Option("--auth-database-url", envvar="TUNEGATE_MLFLOW_AUTH_DATABASE_URL", help="where MLflow keeps users and permissions, e.g. postgresql://user@db:5432/mlflow_auth (default: sqlite:///$TUNEGATE_HOME/mlflow/basic_auth.db)")] = None,
    auth_default_permission: Annotated[str, typer.Option("--auth-default-permission", envvar="TUNEGATE_MLFLOW_AUTH_DEFAULT_PERMISSION", help="READ, USE, EDIT, MANAGE or NO_PERMISSIONS: what an authenticated user may do with an experiment or model nobody granted them anything on")] = "READ",
) -> None:
    """Start a Prefect server and an MLflow tracking server together and keep them up; Ctrl-C stops both.

    A server that exits is restarted on the same port (backoff 1 s doubling to 30 s) while the other keeps
    serving; after 5 exits within 5 minutes both are stopped and the command exits 1. Flows run against
    them once PREFECT_API_URL and MLFLOW_TRACKING_URI point there (printed on start).
    """
    from tunegate.operations.commands import serve

    with _refusals():
        serve(host, prefect_port, mlflow_port, prefect_database_url, mlflow_backend_store_uri, mlflow_artifacts_destination,
              mlflow_workers, auth, auth_database_url, auth_default_permission)


@app.command()
def status(
    params: ParamsOption = DEFAULT_PARAMS,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    last: Annotated[int, typer.Option("--last", help="how many recent runs to list")] = 10,
) -> None:
    """The schedule, the champion, candidates waiting for approval (and for how long), the last runs and their outcome."""
    from tunegate.paths import configure_environment

    loaded = _load(params, [])
    configure_environment()
    from tunegate.adapters.mlflow import tracking_uri
    from tunegate.operations.status import collect_status, render_status

    try:
        result = collect_status(loaded, last=last)
    except Exception as error:  # the tracking server or registry not answering
        _fail(f"cannot read the status from {tracking_uri()}: {type(error).__name__}: {error}")
    if json_out:
        print(json.dumps(result, default=str))
        return
    render_status(result, _console())


def _promotion(params: str):
    from tunegate.governance import audit
    from tunegate.paths import configure_environment

    loaded = _load(params, [])
    configure_environment()
    audit.set_params_url(loaded.audit.database_url)
    return loaded


def _run_promotion(action) -> None:
    from tunegate.governance.audit import AuditError
    from tunegate.governance.promotion import PromotionError

    try:
        outcome = action()
    except (PromotionError, AuditError) as error:
        _fail(str(error))
    _console().print(outcome.message)


ReviewerOption = Annotated[str | None, typer.Option(
    "--reviewer",
    help="who acts; with an MLflow server that authenticates users it is the authenticated user (the default; any other name is refused)",
)]


@app.command()
def approve(
    version: Annotated[str, typer.Argument(help="the candidate version to approve")],
    reason: ReasonOption,
    reviewer: ReviewerOption = None,
    params: Annotated[str, typer.Option("--params", "-p", help="params YAML file (its gate.approvals policy applies)")] = DEFAULT_PARAMS,
    key: Annotated[Path | None, typer.Option("--key", envvar="TUNEGATE_SIGNING_KEY", help="your ed25519 private key (`tunegate keygen`): signs the approval")] = None,
) -> None:
    """Approve the candidate VERSION; when the policy's roles are covered, it becomes ``champion``."""
    loaded = _promotion(params)
    from tunegate.governance import promotion

    _run_promotion(lambda: promotion.approve(loaded.model.registered_name, version, reviewer, reason, loaded.gate.approvals, signing_key=key))


@app.command()
def reject(
    version: Annotated[str, typer.Argument(help="the candidate version to reject")],
    reason: ReasonOption,
    reviewer: ReviewerOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Reject a candidate: it loses alias ``candidate`` and can never become champion."""
    loaded = _promotion(params)
    from tunegate.governance import promotion

    _run_promotion(lambda: promotion.reject(loaded.model.registered_name, version, reviewer, reason, loaded.gate.approvals))


@app.command()
def rollback(
    reason: ReasonOption,
    reviewer: ReviewerOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Move ``champion`` back to the ``previous`` version."""
    loaded = _promotion(params)
    from tunegate.governance import promotion

    _run_promotion(lambda: promotion.rollback(loaded.model.registered_name, reviewer, reason, loaded.gate.approvals))


audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    params: Annotated[str, typer.Option("--params", "-p", help="params YAML file (whose model holds the head hash, whose policy lists the public keys)")] = DEFAULT_PARAMS,
) -> None:
    """Check every row's hash, link and place, the trail's length against the registry's heads, approval
    signatures, and that the registry's aliases are where the trail's last moves put them."""
    loaded = _promotion(params)
    from tunegate.governance import promotion
    from tunegate.governance.audit import AuditError

    try:
        ok, message = promotion.verify(loaded.model.registered_name, loaded.gate.approvals)
    except AuditError as error:
        _fail(str(error))
    if not ok:
        _fail(f"audit trail broken at {message}" if message.startswith("entry ") else f"audit check failed: {message}")
    _console().print(f"audit trail intact: {message}", highlight=False, soft_wrap=True)


def _audit_entries(params: str) -> list[dict]:
    _promotion(params)
    from tunegate.operations.commands import audit_entries

    with _refusals():
        return audit_entries()


@audit_app.command("log")
def audit_log_command(
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    last: Annotated[int, typer.Option("--last", help="only the last N events (0: all)")] = 0,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """List audit events: time, event, actor (authenticated or not), host and the essentials."""
    entries = _audit_entries(params)
    from tunegate.operations.commands import audit_log

    audit_log(entries[-last:] if last else entries, json_out)


@audit_app.command("import")
def audit_import(
    path: Annotated[Path, typer.Argument(help="a JSONL trail of an earlier tunegate (events.jsonl)")],
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Bring an earlier JSONL trail in once: as-is into an empty table, else attached by one entry (its head and sha256)."""
    _promotion(params)
    from tunegate.operations.commands import audit_import as bring_in

    with _refusals():
        bring_in(path)


@audit_app.command("export")
def audit_export(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="file to write (default: stdout)")] = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Write the trail as JSONL, one entry per line exactly as hashed (for an archive or an auditor)."""
    entries = _audit_entries(params)
    from tunegate.operations.commands import audit_export as export

    export(entries, out)


@app.command()
def history(
    alias: Annotated[str | None, typer.Option("--alias", help="only moves of this alias (champion, candidate, previous)")] = None,
    params: ParamsOption = DEFAULT_PARAMS,
    json_out: Annotated[bool, typer.Option("--json", help="print the moves as a JSON list")] = False,
) -> None:
    """Every alias move of the params' model: version, from -> to, who (authenticated or not), when, why."""
    loaded = _promotion(params)
    from tunegate.governance.audit import AuditError
    from tunegate.governance.lineage import alias_history, render_history

    try:
        rows = alias_history(loaded.model.registered_name, alias)
    except AuditError as error:
        _fail(str(error))
    if json_out:
        print(json.dumps(rows))
        return
    _console().print(render_history(loaded.model.registered_name, rows, alias), highlight=False, soft_wrap=True, markup=False)


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write your private key (mode 0600; never overwritten)")],
    reviewer: Annotated[str | None, typer.Option("--reviewer", help="your reviewer name, for the params line printed")] = None,
) -> None:
    """Make an ed25519 key for signing approvals; prints the public key line for gate.approvals.public_keys."""
    from tunegate.operations.commands import keygen as make_key

    with _refusals():
        make_key(out, reviewer)


@app.command()
def lineage(
    version: Annotated[str, typer.Argument(help="registered model version")],
    params: ParamsOption = DEFAULT_PARAMS,
    json_out: Annotated[bool, typer.Option("--json", help="print the lineage as JSON")] = False,
) -> None:
    """Data md5s -> validation -> run, params and commit -> evaluation vs baseline -> gate -> approvals -> aliases."""
    loaded = _promotion(params)
    from tunegate.governance.lineage import build_lineage, render_lineage

    try:
        chain = build_lineage(loaded.model.registered_name, version)
    except LookupError as error:
        _fail(str(error))
    if json_out:
        print(json.dumps(chain, default=str))
    else:
        _console().print(render_lineage(chain), highlight=False, soft_wrap=True, markup=False)


if __name__ == "__main__":  # pragma: no cover
    main()
