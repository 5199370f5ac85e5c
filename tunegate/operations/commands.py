"""The bodies of the longer ``tunegate`` commands besides ``run`` (:mod:`tunegate.operations.launcher`):
``validate``, ``data add``, ``server``, ``schedule``, ``audit log / import / export`` and ``keygen``.

``tunegate/cli.py`` declares each command, its options and help, and calls the body here; a body that
must stop raises :class:`~tunegate.operations.launcher.CommandError`, which the CLI prints as
``error: message`` and exits with its code. What they print and their exit codes are the commands'.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tunegate.operations.launcher import CommandError, load_checked

DEFAULT_PARAMS = "params/demo.yaml"


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


# --- tunegate validate -------------------------------------------------------------------------


KINDS = ("chat", "preference")


def check_format(fmt: str, kind: str = "chat") -> None:
    """Exit 2 naming the allowed values when ``--kind`` or ``--format`` is not one of them."""
    from tunegate.data.formats import FORMATS
    from tunegate.data.preference import PREFERENCE_FORMATS

    if kind not in KINDS:
        raise CommandError(f"--kind {kind!r}: allowed: {', '.join(KINDS)}", code=2)
    allowed = ("auto", *(PREFERENCE_FORMATS if kind == "preference" else FORMATS))
    if fmt not in allowed:
        raise CommandError(f"--format {fmt!r} with --kind {kind}: allowed: {', '.join(allowed)}", code=2)


def _unreadable(error: Exception) -> CommandError:
    """A file that cannot be read as the kind asked for: the reader's message, plus the other --kind where the
    records are of the other kind."""
    from tunegate.data.formats import PREFERENCE_IN_SFT
    from tunegate.data.preference import CHAT_IN_PREFERENCE

    message = str(error)
    if PREFERENCE_IN_SFT in message:
        message += "; to validate preference pairs: tunegate validate --kind preference"
    elif CHAT_IN_PREFERENCE in message:
        message += "; to validate chat records: tunegate validate --kind chat"
    return CommandError(message)


def _print_reports(reports, report_dir: Path | None, json_out: bool, console) -> None:
    """The reports on stdout (markdown, or one JSON object), warnings on stderr, report files; exit 1 on an error rule."""
    from tunegate.data.validation import error_message, save_report

    if report_dir:
        save_report(reports, report_dir)
    if json_out:
        print(json.dumps({"passed": all(r.passed for r in reports), "reports": [r.to_dict() for r in reports]}, default=str))
    else:
        from rich.markdown import Markdown

        console.print(Markdown("\n".join(r.to_markdown() for r in reports)))
    warnings = _console(stderr=True)
    for report in reports:
        for rule in report.warnings():
            warnings.print(f"warning: {report.split}: {rule.describe()}", highlight=False, soft_wrap=True, markup=False)
    if not all(r.passed for r in reports):
        raise CommandError(error_message(reports))


def validate_files(paths: list[Path], eval_paths: list[Path] | None, params: str | None, fmt: str, max_length: int | None,
                   report_dir: Path | None, json_out: bool, kind: str = "chat") -> None:
    """``tunegate validate``: the same conversion and expectation suite as ``run``, on files alone."""
    from tunegate.paths import configure_environment

    check_format(fmt, kind)
    if kind == "preference":
        if max_length is not None:
            raise CommandError("--max-length is for --kind chat: preference pairs are checked without a tokenizer", code=2)
        validate_preference_files(paths, eval_paths, params, fmt, report_dir, json_out)
        return
    loaded = load_checked(params or DEFAULT_PARAMS, [])
    if params is None:
        # Without --params only the model, template and token limit come from the demo; the rules are the defaults.
        from tunegate.params import ValidationParams

        loaded = loaded.model_copy(update={"validation": ValidationParams()})
    if max_length is not None:
        loaded = loaded.model_copy(update={"validation": loaded.validation.model_copy(update={"max_length": max_length})})
    _console(stderr=True).print(validate_settings(loaded, params, max_length), highlight=False, soft_wrap=True, markup=False)
    configure_environment()
    from tunegate.data.dataset import load_sources, validate_splits
    from tunegate.data.sources import DataError
    from tunegate.params import ParamsError, SourceParams
    from tunegate.tuning.modeling import load_tokenizer

    console = _console(stderr=json_out)
    train_specs = [SourceParams(path=str(p.resolve()), format=fmt) for p in paths]
    eval_specs = [SourceParams(path=str(p.resolve()), format=fmt) for p in eval_paths or []]
    try:
        train_sources = load_sources(train_specs)
        eval_sources = load_sources(eval_specs)
    except (DataError, ParamsError) as error:
        raise _unreadable(error) from None
    for source in train_sources + eval_sources:
        console.print(f"{source.path}: {source.counts['records']} records ({source.records[0]['source']['format'] if source.records else 'empty'}), md5 {source.md5}")
    train = [r for s in train_sources for r in s.records]
    evaluation = [r for s in eval_sources for r in s.records]
    try:
        tokenizer = load_tokenizer(loaded.base_model_path(), loaded.model.chat_template)
    except Exception as error:  # a missing or broken model: say which, no traceback
        raise CommandError(f"model.base_model {loaded.model.base_model!r}: its tokenizer does not load ({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}); pass --params with a usable model", code=2) from None
    docs = report_dir / "data_docs" if report_dir else None
    train_report, eval_report = validate_splits(loaded, train, evaluation, tokenizer, docs_dir=docs)
    _print_reports([train_report] + ([eval_report] if eval_report else []), report_dir, json_out, console)


def validate_preference_files(paths: list[Path], eval_paths: list[Path] | None, params: str | None, fmt: str,
                              report_dir: Path | None, json_out: bool) -> None:
    """``tunegate validate --kind preference``: the files read as preference sources and checked with the
    preference rules (``preference.validation`` of ``--params``, else the defaults). With ``--params``, the
    SFT eval files of its ``data.eval`` count for the overlap rule too, as in a run."""
    from tunegate.paths import configure_environment

    configure_environment()
    from tunegate.data.dataset import load_sources
    from tunegate.data.preference import load_preference_sources
    from tunegate.data.preference_validation import eval_preference_validation, validate_preference
    from tunegate.data.sources import DataError
    from tunegate.params import ParamsError, PreferenceSource, PreferenceValidation

    rules = PreferenceValidation()
    origin = "the default preference rules (pass --params FILE for yours)"
    sft_eval_specs = []
    if params is not None:
        loaded = load_checked(params, [])
        if loaded.preference is not None:
            rules, origin = loaded.preference.validation, f"preference.validation of --params {params}"
        else:
            origin = f"the default preference rules (--params {params} has no preference section)"
        sft_eval_specs = list(loaded.data.eval)
    info = _console(stderr=True)
    info.print(f"validate --kind preference: {origin}", highlight=False, soft_wrap=True, markup=False)
    console = _console(stderr=json_out)
    try:
        train_sources = load_preference_sources([PreferenceSource(path=str(p.resolve()), format=fmt) for p in paths])
        eval_sources = load_preference_sources([PreferenceSource(path=str(p.resolve()), format=fmt) for p in eval_paths or []])
    except (DataError, ParamsError) as error:
        raise _unreadable(error) from None
    try:
        sft_eval = [r for s in load_sources(sft_eval_specs) for r in s.records]
    except (DataError, ParamsError) as error:
        raise CommandError(f"{error} (data.eval of --params {params}: the SFT eval records no training pair's prompt "
                           "may be in)") from None
    for source in train_sources + eval_sources:
        formats = sorted({r["source"]["format"] for r in source.records}) or ["empty"]
        console.print(f"{source.path}: {source.counts['converted']} records ({', '.join(formats)}), md5 {source.md5}",
                      highlight=False, soft_wrap=True, markup=False)
    if sft_eval:
        info.print(f"eval_overlap also against {len(sft_eval)} SFT eval records (data.eval of --params {params})",
                   highlight=False, soft_wrap=True, markup=False)
    train = [r for s in train_sources for r in s.records]
    evaluation = [r for s in eval_sources for r in s.records]
    docs = report_dir / "data_docs" if report_dir else None
    reports = [validate_preference(rules, train, evaluation or None, sft_eval or None,
                                   docs / "train" if docs else None, split="train")]
    if evaluation:
        reports.append(validate_preference(eval_preference_validation(rules), evaluation, None, None,
                                           docs / "eval" if docs else None, split="eval"))
    _print_reports(reports, report_dir, json_out, console)


def validate_settings(loaded, params: str | None, max_length: int | None) -> str:
    """One line: the model, template and token limit `tunegate validate` uses, and where each comes from."""
    origin = f"--params {params}" if params else f"{DEFAULT_PARAMS} (the demo's; pass --params FILE for yours)"
    if max_length is not None:
        limit, limit_origin = max_length, "--max-length"
    elif loaded.validation.max_length:
        limit, limit_origin = loaded.validation.max_length, "validation.max_length"
    else:
        limit, limit_origin = loaded.train.max_length, "train.max_length"
    template = loaded.model.chat_template or "the tokenizer's own (alpaca when it has none)"
    return (
        f"validate: model {loaded.model.base_model}, chat template {template}, token limit {limit} "
        f"({limit_origin}{'' if max_length is not None else ', --max-length N to change'}); from {origin}"
    )


# --- tunegate data add -------------------------------------------------------------------------


def data_add(paths: list[Path], to: str, repo: Path | None, event: bool) -> None:
    """``tunegate data add``: `dvc add` the files, print their md5s, announce them to the Prefect server."""
    from tunegate.paths import configure_environment, repo_root, tunegate_home

    configure_environment()
    from tunegate.adapters.dvc import add_files

    root = (repo or repo_root()).resolve()
    if not (root / ".dvc").is_dir():
        raise CommandError(f"{root}: not a DVC repo (no .dvc folder); run `git init && dvc init` there or pass --repo")
    try:
        added = add_files(root, [p.resolve() for p in paths], root / to, tunegate_home())
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None
    console = _console()
    for item in added:
        console.print(f"{item.path}: md5 {item.md5} -> {item.path}.dvc", highlight=False)
    if event:
        from tunegate.operations import scheduling

        if not scheduling.server_configured():
            console.print("no Prefect server configured (PREFECT_API_URL): no event sent", highlight=False)
        for item in added:
            path = str(root / item.path) if repo else item.path
            try:
                sent = scheduling.emit_data_event(scheduling.DATA_ADDED, path, item.md5, {"repo": str(root)}, always=True)
            except Exception as error:  # the data is versioned either way; say why no run starts
                raise CommandError(f"{item.path} is versioned, but the {scheduling.DATA_ADDED} event could not be sent: {type(error).__name__}: {error}") from None
            if sent:
                console.print(f"event {scheduling.DATA_ADDED} sent for {path} (md5 {item.md5[:12]})", highlight=False)
    console.print("next: git add the .dvc files and commit; `dvc push` sends the data to the remote")


# --- tunegate server ---------------------------------------------------------------------------


def serve(host: str, prefect_port: int, mlflow_port: int, prefect_database_url: str | None, mlflow_backend_store_uri: str | None,
          mlflow_artifacts_destination: str | None, mlflow_workers: int, auth: bool, auth_database_url: str | None,
          auth_default_permission: str) -> None:
    """``tunegate server``: start Prefect and MLflow, keep them up until SIGINT / SIGTERM, then stop both."""
    import signal
    import time

    from tunegate.operations.server import (
        AUTH_ADMIN_USERNAME, AUTH_PERMISSIONS, ServerConfig, ServerError, admin_password_source, client_env, redact,
        start_all, state_file, stop, supervise,
    )
    from tunegate.paths import configure_environment

    if auth_default_permission.upper() not in AUTH_PERMISSIONS:
        raise CommandError(f"--auth-default-permission {auth_default_permission!r}: choose one of {', '.join(AUTH_PERMISSIONS)}", code=2)
    home = configure_environment()

    config = ServerConfig(
        home=home, host=host, prefect_port=prefect_port, mlflow_port=mlflow_port,
        prefect_database_url=prefect_database_url, mlflow_backend_store_uri=mlflow_backend_store_uri,
        mlflow_artifacts_destination=mlflow_artifacts_destination, mlflow_workers=mlflow_workers,
        auth=auth, auth_database_url=auth_database_url, auth_default_permission=auth_default_permission.upper(),
    )
    console = _console()
    console.print(f"starting Prefect ({redact(prefect_database_url or 'SQLite')}) and MLflow ({redact(config.backend_store_uri())}) under {home} ...", highlight=False)
    stopping = {"signal": None}

    def _request_stop(signum, frame):  # noqa: ARG001
        stopping["signal"] = signal.Signals(signum).name

    try:
        servers = start_all(config)  # Ctrl-C while starting: start_all stops what it started
    except ServerError as error:
        raise CommandError(str(error)) from None
    except KeyboardInterrupt:
        raise CommandError("interrupted while starting", code=130) from None
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    env = client_env(config)
    console.print(f"[bold]Prefect[/bold] UI  {config.prefect_url}   API {config.prefect_api_url}", highlight=False)
    console.print(f"[bold]MLflow[/bold]  UI  {config.mlflow_url}   artifacts -> {config.artifacts_destination()}", highlight=False)
    console.print(f"logs: {home / 'logs'}   state: {state_file(home)}", highlight=False)
    if config.auth:
        console.print(
            f"[bold]authentication on[/bold]: MLflow users and permissions in {redact(config.auth_database_uri())} "
            f"(default permission {config.auth_default_permission}); admin user {AUTH_ADMIN_USERNAME}, "
            f"password in {admin_password_source(config)} (taken when the user store is first created)", highlight=False, soft_wrap=True)
    console.print("run flows against them from another shell:", highlight=False)
    console.print("  export " + " ".join(f"{k}={v}" for k, v in env.items()), highlight=False, soft_wrap=True)
    if config.auth:
        console.print("  and, as the MLflow user you act as: export MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>", highlight=False, soft_wrap=True)
    def _say(message: str) -> None:
        console.print(f"{time.strftime('%H:%M:%S')} {message}", highlight=False, soft_wrap=True)
        sys.stdout.flush()

    receiver = start_alias_webhook(config, _say)
    console.print("Ctrl-C stops both; a server that exits is restarted.", highlight=False)
    sys.stdout.flush()

    gave_up = None
    try:  # restarts what exits; returns on SIGINT / SIGTERM; `servers` always holds the running processes
        supervise(config, servers, lambda: stopping["signal"] is not None, say=_say)
    except ServerError as error:  # a server kept exiting
        gave_up = error
    if receiver is not None:
        receiver.stop()
    codes = stop(servers)
    state_file(home).unlink(missing_ok=True)
    if gave_up is not None:
        raise CommandError(str(gave_up))
    console.print(f"stopped ({stopping['signal']}): " + ", ".join(f"{name} exit {code}" for name, code in codes.items()), highlight=False)


def start_alias_webhook(config, say):
    """Receive the MLflow server's alias webhooks (tunegate.operations.alias_webhook) on loopback and register the
    webhook; the audit database is the one clients use. A failure is said, not fatal: drift is still
    found by `tunegate audit verify`, `status` and every run."""
    from tunegate.operations import alias_webhook
    from tunegate.operations.server import AUDIT_DB_ENV, AUTH_ADMIN_USERNAME, admin_password
    from tunegate.paths import environment

    receiver = None
    try:
        audit_db = config.audit_db()
        if audit_db and not os.environ.get(AUDIT_DB_ENV):
            os.environ[AUDIT_DB_ENV] = audit_db  # the receiver appends where the clients do ...
        os.environ["MLFLOW_TRACKING_URI"] = config.mlflow_url  # ... and moves the registry's audit head there
        secret = alias_webhook.webhook_secret(config.home)
        receiver = alias_webhook.Receiver(secret, log=say).start()
        creds = {"MLFLOW_TRACKING_USERNAME": AUTH_ADMIN_USERNAME, "MLFLOW_TRACKING_PASSWORD": admin_password(config)} if config.auth else {}
        with environment(creds):
            alias_webhook.register(config.mlflow_url, receiver.url, secret)
        say(f"alias webhook: MLflow reports alias moves to {receiver.url}; moves outside tunegate go to the audit trail")
        return receiver
    except Exception as error:
        say(f"warning: alias webhook not set up ({type(error).__name__}: {error}); outside moves are still found by "
            "tunegate audit verify, status and each run")
        if receiver is not None:
            receiver.stop()
        return None


# --- tunegate audit log / import / export ------------------------------------------------------


def audit_entries() -> list[dict]:
    """Every entry of the audit trail (the audit database set from the params by the caller)."""
    from tunegate.governance import audit

    try:
        return audit.store().entries()
    except audit.AuditError as error:
        raise CommandError(str(error)) from None


def audit_log(entries: list[dict], json_out: bool) -> None:
    """``tunegate audit log``: one JSON object per line, or a table."""
    if json_out:
        for entry in entries:
            print(json.dumps(entry))
        return
    from rich.table import Table

    table = Table("#", "time", "event", "actor", "host", "details")
    for e in entries:
        details = ", ".join(f"{k}={v}" for k, v in e["data"].items() if k in ("run_id", "version", "reviewer", "reason", "why", "passed", "champion", "data_md5"))
        actor = e["actor"] + (" (authenticated)" if e.get("authenticated") else "")
        table.add_row(str(e["seq"]), e["time"][:19], e["event"], actor, e.get("host") or "", details[:120])
    _console().print(table)


def audit_import(path: Path) -> None:
    """``tunegate audit import``: an earlier JSONL trail, as-is into an empty table, else attached by one entry."""
    from tunegate.governance import audit

    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    try:
        outcome = audit.store().import_jsonl(path)
    except audit.AuditError as error:
        raise CommandError(str(error)) from None
    if outcome is None:
        raise CommandError(f"{path}: holds no entries")
    how = "imported" if "imported" in outcome else "attached"
    _console().print(f"{how} {outcome[how]} entries from {path} (renamed {path.name}.imported)", highlight=False)


def audit_export(entries: list[dict], out: Path | None) -> None:
    """``tunegate audit export``: the trail as JSONL exactly as hashed, to ``out`` or stdout."""
    from tunegate.governance.audit import canonical, verify_chain

    text = "".join(canonical(e) + "\n" for e in entries)
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text, encoding="utf-8")
    ok, message = verify_chain(entries)
    _console(stderr=True).print(f"wrote {len(entries)} entries to {out} ({message if ok else 'BROKEN: ' + message})", highlight=False)


# --- tunegate schedule ---------------------------------------------------------------------------


def serve_schedule(flow, serve, params: str, loaded, overrides: list[str], limit: int | None) -> None:
    """``tunegate schedule``: serve the deployment of ``flow`` (the ``retrain`` flow) with ``serve`` (Prefect's;
    both handed in by the CLI) and watch the data for new DVC versions, until Ctrl-C."""
    from tunegate.adapters.git import git_commit
    from tunegate.operations import scheduling
    from tunegate.operations.launcher import params_path
    from tunegate.paths import repo_root

    params_file = str(params_path(params).resolve())
    s = loaded.schedule
    if not (s.cron or s.interval_seconds or s.on_new_data):
        raise CommandError(f"{params_file}: schedule has no cron, no interval_seconds and on_new_data is false: nothing would start a run", code=2)
    commit, _ = git_commit(repo_root())
    run_overrides = [o for o in overrides if not o.startswith("schedule.")]  # the rest shaped `loaded` above
    deployment = scheduling.build_deployment(flow, params_file, loaded, version=commit[:12], overrides=run_overrides)
    console = _console()
    console.print(f"serving [bold]{scheduling.FLOW_NAME}/{s.deployment}[/bold] for {loaded.model.registered_name}: {scheduling.describe(loaded)}", highlight=False)
    for when in scheduling.next_times(loaded):
        console.print(f"  next: {when.isoformat()}", highlight=False)
    watcher = None
    if s.on_new_data:
        watcher = scheduling.DataWatcher(
            loaded, s.watch_seconds,
            on_error=lambda error: console.print(f"[yellow]data watcher:[/yellow] {type(error).__name__}: {error}", highlight=False),
        )
        watcher.start()
        console.print(f"watching {len(watcher.last)} dataset(s) for new DVC versions every {s.watch_seconds:g}s", highlight=False)
    # "Until Ctrl-C": a process started with SIGINT ignored (a script's `cmd &`, nohup in a non-interactive
    # shell) would otherwise not stop on SIGINT at all, and Prefect would not pause the deployment's schedule.
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        serve(deployment, limit=limit, print_starting_message=True)
    finally:
        if watcher:
            watcher.stop()


# --- tunegate keygen -----------------------------------------------------------------------------


def keygen(out: Path, reviewer: str | None) -> None:
    """``tunegate keygen``: an ed25519 key for signing approvals; prints the public key line for the params."""
    from tunegate.governance.signing import SigningError, generate

    try:
        public = generate(out)
    except SigningError as error:
        raise CommandError(str(error)) from None
    _console().print(f"private key written to {out} (keep it to yourself; approve with --key {out})", highlight=False)
    print(f"{reviewer or '<your reviewer name>'}: {public}")
