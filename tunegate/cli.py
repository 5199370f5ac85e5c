"""The ``tunegate`` command line.

Imports of prefect, mlflow, torch and friends happen inside the commands so
that ``tunegate --help`` answers in well under a second.
"""

from __future__ import annotations

import json
import sys
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


def _params_path(params: str) -> Path:
    from tunegate.paths import repo_root

    path = Path(params)
    if not path.exists() and not path.is_absolute() and (repo_root() / path).exists():
        path = repo_root() / path
    return path


def _load(params: str, overrides: list[str], json_out: bool = False):
    from tunegate.params import ParamsError, load_params

    try:
        return load_params(_params_path(params), overrides)
    except ParamsError as error:
        _fail(str(error), code=2, json_out=json_out)


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
    run(params, set_, json_out, resume, wait_for_approval, accept_unaudited_champion)


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
    if "prefect" in sys.modules:  # ship the last logs and events while the temporary server still runs:
        try:  # atexit stops the server first, and flushing to a stopped one waits out a 5 s timeout
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)
            EventsWorker.drain_all(timeout=5)
        except Exception:  # nothing of the run depends on it
            pass
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(
    params: str = DEFAULT_PARAMS,
    set_: list[str] | None = None,
    json_out: bool = False,
    resume: str | None = None,
    wait_for_approval: bool | None = None,
    accept_unaudited_champion: bool = False,
) -> None:
    import os
    import time

    from tunegate.paths import configure_environment

    overrides = list(set_ or [])
    loaded = _load(params, overrides, json_out=json_out)
    configure_environment()
    from tunegate.operations import runqueue

    try:  # threads = cores / machine slots, set before torch is imported (OpenMP reads them once)
        runqueue.apply_thread_budget(runqueue.machine_slots(loaded.runs.machine_slots))
    except ValueError as error:
        _fail(str(error), code=2, json_out=json_out)
    wait = bool(os.environ.get("PREFECT_API_URL")) if wait_for_approval is None else wait_for_approval
    if wait and not os.environ.get("PREFECT_API_URL"):
        _fail("--wait-for-approval needs a Prefect server to answer the form in (set PREFECT_API_URL)", code=2, json_out=json_out)
    # The temporary Prefect server (creating its database on a new home) starts on a thread and the
    # preflight in a child process, both on the other core while this process imports the pipeline;
    # inside another program (tests' CliRunner) the preflight runs here and Prefect starts its own server.
    own = _own_process()
    # The run slot is asked for now, on a thread, so runs queue in the order they were started
    # whichever finishes its imports first; this process imports the pipeline while it waits.
    slot_request = _RunSlotRequest(loaded, _console(stderr=json_out)).start()
    try:  # a command that ends before its flow lets the next run in at once
        server_start = _start_prefect_in_background() if own else None
        from tunegate.operations import preflight

        child = _preflight_child(params, overrides) if own else None
        if child is None:
            _check_preflight_here(loaded, params, json_out)
        from tunegate.data.validation import DataError
        from tunegate.operations import timings

        from flows.retrain import retrain  # imports the pipeline (torch, transformers, peft, trl, ...)

        _warm_imports(lambda: _preflight_verdict(child, loaded, params, json_out, wait=False))
        if own:  # the imported stack lives as long as the process: the collector need not walk it again
            import gc  # (the trainer's gc.collect() took 0.5 s over it, and each full collection as much)

            gc.freeze()
        _preflight_verdict(child, loaded, params, json_out, wait=True)
        preflight.mark_passed(loaded, _params_path(params))  # the flow's first task need not check again
        if resume:
            _refuse_live_resume(resume, json_out)
        console = _console(stderr=json_out)
        console.rule(f"tunegate run: {loaded.model.registered_name}")
        slot = slot_request.result(json_out)  # runs start in the order they were started
    except BaseException:
        slot_request.abandon()
        raise
    try:
        with slot:
            if server_start is None:  # inside another program: Prefect's own temporary server, started
                server_start = _NoServer()  # only if the flow reaches Prefect (startup timeout as set above)
            api_url = server_start.wait()
            timings.carry("server_start", server_start.seconds)
            with _prefect_api(api_url):
                summary = retrain(params_file=str(_params_path(params)), overrides=overrides, resume_run_id=resume, wait_for_approval=wait,
                                  accept_unaudited_champion=accept_unaudited_champion)
    except DataError as error:
        _fail(str(error), json_out=json_out)
    except Exception as error:  # the flow run and the MLflow run record the details
        _fail(_flow_error_message(error), json_out=json_out)
    summary.setdefault("outcome", "registered" if summary.get("registered_version") else "gate_failed")
    _add_wall_time(summary, time.time())
    from rich.markdown import Markdown

    from tunegate.governance.summary import render_markdown

    console.print(Markdown(render_markdown(summary)))
    if json_out:
        print(json.dumps(summary, default=str))


class _RunSlotRequest:
    """On the embedded default, wait for and take the project's run slot (an OS file lock under
    $TUNEGATE_HOME/queue) on a thread; :meth:`result` hands it over before the flow starts, and the
    flow names its run in it. With a Prefect server the flow takes the server's global concurrency
    limit itself (tasks.queue.run_slot)."""

    def __init__(self, loaded, console) -> None:
        import contextlib
        import threading

        self.loaded, self.console = loaded, console
        self.stack = contextlib.ExitStack()
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.taken = self.abandoned = False
        self.thread = threading.Thread(target=self._take, name="tunegate-run-slot", daemon=True)

    def start(self) -> _RunSlotRequest:
        import os

        if not os.environ.get("PREFECT_API_URL"):
            self.thread.start()
        return self

    def _take(self) -> None:
        import time

        from tunegate.operations import runqueue
        from tunegate.paths import tunegate_home

        model = self.loaded.model.registered_name
        try:
            from tunegate.governance.identity import actor_identity

            initiator = actor_identity().name
        except Exception:  # named by the flow's own start_run
            initiator = None
        seen: list[str] = []

        def on_wait(holders, waited):
            seen.extend(h["run_id"] for h in holders if h.get("run_id") and h["run_id"] not in seen)
            described = "; ".join(runqueue.describe_holder(h) for h in holders) or "another run"
            self.console.print(f"{time.strftime('%H:%M:%S')} waiting for the run slot of {model} ({waited:.0f} s so far): held by {described}",
                               highlight=False, soft_wrap=True)

        info = runqueue.holder_info(run_id=None, trigger="manual", initiator=initiator)
        try:
            waited = self.stack.enter_context(runqueue.file_slot(
                tunegate_home() / "queue", runqueue.limit_name(model), self.loaded.runs.project_slots, info,
                timeout_s=self.loaded.runs.queue_timeout_s, on_wait=on_wait))
        except BaseException as error:  # handed to the main thread by result()
            self.error = error
            return
        with self.lock:
            if self.abandoned:  # the command failed before the flow: let the next run in
                self.stack.close()
                return
            self.taken = True
        if seen:
            self.console.print(f"{time.strftime('%H:%M:%S')} got the run slot of {model} after waiting {waited:.0f} s for run(s) {', '.join(seen)}",
                               highlight=False, soft_wrap=True)

    def abandon(self) -> None:
        """The command ends before the flow: release the slot now or as soon as the thread takes it."""
        with self.lock:
            self.abandoned = True
            if self.taken:
                self.stack.close()

    def result(self, json_out: bool):
        """The slot (a context manager releasing it), once taken; exit 1 on the queue's timeout."""
        from tunegate.operations import runqueue

        if self.thread.ident is not None:
            self.thread.join()
        if isinstance(self.error, runqueue.QueueTimeout):
            _fail(str(self.error), json_out=json_out)
        if self.error is not None:
            raise self.error
        return self.stack


class _NoServer:
    """PREFECT_API_URL is set (the flow runs against that server), or the command runs inside another
    program (Prefect starts its own temporary server when the flow first needs it): nothing to start."""

    seconds = 0.0

    def wait(self) -> None:
        return None


def _start_prefect_in_background():
    import os

    if os.environ.get("PREFECT_API_URL"):
        return _NoServer()
    from tunegate.adapters.prefect import TemporaryPrefectServer

    return TemporaryPrefectServer().start_in_background()


def _start_alias_webhook(config, say):
    """Receive the MLflow server's alias webhooks (tunegate.operations.alias_webhook) on loopback and register the
    webhook; the audit database is the one clients use. A failure is said, not fatal: drift is still
    found by `tunegate audit verify`, `status` and every run."""
    import os

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


def _prefect_api(api_url: str | None):
    """Point Prefect's client at the temporary server for the flow (a setting: the environment's
    PREFECT_API_URL keeps meaning "a real server", e.g. for the run queue). Without flow-run
    heartbeats: they let a lasting server call a silent run crashed, and this server ends with this
    process (tunegate status finds a crashed run by its process); their thread held the flow's end
    up to 1 s."""
    import contextlib

    if api_url is None:
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def _warm_imports(between=None) -> None:
    """Import what the tasks import, while the Prefect server starts, rather than inside the first task;
    ``between()`` runs after each (a preflight that failed stops the command without waiting for the rest)."""
    import importlib

    for name in ("torch", "transformers", "peft", "trl", "datasets", "mlflow.transformers",
                 "matplotlib.pyplot"):
        try:
            importlib.import_module(name)
        except ImportError:  # the task that needs it says so
            pass
        if between is not None:
            between()


def _check_preflight_here(loaded, params: str, json_out: bool) -> None:
    from tunegate.operations.preflight import format_problems, run_preflight

    problems = run_preflight(loaded, params_file=params)
    if problems:
        _fail(format_problems(problems, "tunegate run"), code=2, json_out=json_out)


def _preflight_child(params: str, overrides: list[str]):
    """``python -m tunegate.operations.preflight`` on the params, started now, read by :func:`_preflight_verdict`;
    once passed it validates the data ahead (:mod:`tunegate.operations.validation_ahead`)."""
    return _PreflightChild(params, overrides)


class _PreflightChild:
    """The preflight's child process: its first stdout line is the verdict, read on a thread; then it
    validates the data into a private directory removed when this process ends."""

    def __init__(self, params: str, overrides: list[str]) -> None:
        import atexit
        import shutil
        import subprocess
        import tempfile
        import threading

        self.directory = Path(tempfile.mkdtemp(prefix="tunegate-ahead-"))
        args = [sys.executable, "-m", "tunegate.operations.preflight", str(_params_path(params)), "--as", params,
                "--validate-into", str(self.directory)]
        for item in overrides:
            args += ["--set", item]
        self.stderr = self.directory / "stderr.log"
        with open(self.stderr, "w") as stderr:
            self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.line = ""
        self.read = threading.Event()
        self.verdict_read = False
        threading.Thread(target=self._read, name="tunegate-preflight", daemon=True).start()

        def cleanup() -> None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            shutil.rmtree(self.directory, ignore_errors=True)

        atexit.register(cleanup)

    def _read(self) -> None:
        self.line = self.process.stdout.readline()
        self.read.set()
        for _ in self.process.stdout:  # keep the pipe drained
            pass

    def verdict(self) -> list[dict] | None:
        """The problems found (empty: passed), or ``None`` when the child could not say."""
        self.read.wait()
        try:
            found = json.loads(self.line)
        except ValueError:
            return None
        return found if isinstance(found, list) else None


def _preflight_verdict(child, loaded, params: str, json_out: bool, wait: bool) -> None:
    """Stop the command (exit 2) when the child found problems; a child that could not say runs the
    preflight here instead. ``wait`` False: only when it has answered already. A passed child goes on
    validating the data for the flow's ``validate_data`` task."""
    if child is None or (not wait and not child.read.is_set()) or child.verdict_read:
        return
    found = child.verdict()
    child.verdict_read = True
    if found is None:  # the child failed: the preflight here says why, with the same messages
        _check_preflight_here(loaded, params, json_out)
        return
    if found:
        from tunegate.operations.preflight import Problem, format_problems

        _fail(format_problems([Problem(p["check"], p["message"]) for p in found], "tunegate run"), code=2, json_out=json_out)
    from tunegate.operations import validation_ahead

    validation_ahead.register(loaded, child.process, child.directory)


def _refuse_live_resume(run_id: str, json_out: bool) -> None:
    """``--resume`` of a run whose process still runs on this host would train twice into one directory."""
    from tunegate.adapters import mlflow as tracking
    from tunegate.operations.status import process_gone

    try:
        run = tracking.get_run(run_id)
    except Exception:  # the flow's own check names a missing run
        return
    if run.info.status == "RUNNING" and process_gone(run.data.tags) is False:
        _fail(f"run {run_id} is still running (pid {run.data.tags.get('tunegate.pid')} on {run.data.tags.get('tunegate.host')}); "
              "resume it only after its process has ended", code=2, json_out=json_out)


def _add_wall_time(summary: dict, now: float) -> None:
    """The process's wall time (interpreter start to now) joins the run's timings, in MLflow too."""
    import psutil

    from tunegate.adapters import mlflow as tracking
    from tunegate.operations import timings

    run_timings = dict(summary.get("timings") or {})
    run_timings["total_wall"] = round(now - psutil.Process().create_time(), 2)
    summary["timings"] = {k: run_timings[k] for k in timings.STAGES if k in run_timings} | {
        k: v for k, v in run_timings.items() if k not in timings.STAGES}
    run_id = summary.get("run_id")
    if not run_id:
        return
    try:
        tracking.log_metrics(run_id, timings.as_metrics({"total_wall": run_timings["total_wall"]}))
        tracking.log_dict(run_id, summary, "summary/summary.json")
    except Exception as error:  # the run's outcome stands; the wall time is missing from MLflow
        _console(stderr=True).print(f"[yellow]warning:[/yellow] could not log the wall time to MLflow: {error}", highlight=False)


def _flow_error_message(error: BaseException) -> str:
    """What to tell a person about an exception out of the flow; Prefect's ephemeral-server time-out explained."""
    from tunegate.operations.preflight import PreflightError

    if isinstance(error, PreflightError):
        return str(error)
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    timeout = next((e for e in chain if isinstance(e, RuntimeError) and "ephemeral Prefect API server" in str(e)), None)
    if timeout is None:
        return f"{type(error).__name__}: {error}"
    import os

    from tunegate.operations.preflight import write_log
    from tunegate.paths import PREFECT_EPHEMERAL_TIMEOUT, tunegate_home

    log = write_log("Prefect ephemeral server start", timeout, prefix="prefect-ephemeral")
    seconds = os.environ.get(PREFECT_EPHEMERAL_TIMEOUT, "20")
    return (
        f"the Prefect server that `tunegate run` starts for itself (PREFECT_API_URL is unset) did not answer "
        f"within {seconds} s: the machine is loaded, or the Prefect database under {tunegate_home() / 'prefect'} "
        f"is being created on a first run; nothing was trained or registered. Run again with more time "
        f"(`{PREFECT_EPHEMERAL_TIMEOUT}=600 tunegate run ...`), or start `tunegate server` in another shell and "
        f"export the PREFECT_API_URL it prints. Details: {log}"
    )


def _check_format(fmt: str) -> None:
    """Exit 2 naming the allowed values when ``--format`` is not one of them."""
    from tunegate.data.formats import FORMATS

    allowed = ("auto", *FORMATS)
    if fmt not in allowed:
        _fail(f"--format {fmt!r}: allowed: {', '.join(allowed)}", code=2)


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="training data files (JSON list or JSONL, any supported format)")],
    eval_paths: Annotated[list[Path] | None, typer.Option("--eval", help="eval data files; enables the train/eval overlap check")] = None,
    params: Annotated[str | None, typer.Option("--params", "-p", help="params file whose validation rules, model, template and token limit apply (default: the demo's model, template and limit with default rules)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, alpaca, sharegpt, openai, prompt_completion or self_instruct")] = "auto",
    max_length: Annotated[int | None, typer.Option("--max-length", min=8, help="token limit with the chat template (default: validation.max_length, else train.max_length of the params)")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="write report.md, report.json and Data Docs here")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the reports as one JSON object")] = False,
) -> None:
    """Validate data files alone: the same conversion and expectation suite as `run`."""
    from tunegate.paths import configure_environment

    _check_format(fmt)
    loaded = _load(params or DEFAULT_PARAMS, [])
    if params is None:
        # Without --params only the model, template and token limit come from the demo; the rules are the defaults.
        from tunegate.params import ValidationParams

        loaded = loaded.model_copy(update={"validation": ValidationParams()})
    if max_length is not None:
        loaded = loaded.model_copy(update={"validation": loaded.validation.model_copy(update={"max_length": max_length})})
    _console(stderr=True).print(_validate_settings(loaded, params, max_length), highlight=False, soft_wrap=True, markup=False)
    configure_environment()
    from tunegate.data.dataset import load_sources, validate_splits
    from tunegate.data.sources import DataError
    from tunegate.data.validation import error_message, save_report
    from tunegate.params import ParamsError, SourceParams
    from tunegate.tuning.modeling import load_tokenizer

    console = _console(stderr=json_out)
    train_specs = [SourceParams(path=str(p.resolve()), format=fmt) for p in paths]
    eval_specs = [SourceParams(path=str(p.resolve()), format=fmt) for p in eval_paths or []]
    try:
        train_sources = load_sources(train_specs)
        eval_sources = load_sources(eval_specs)
    except (DataError, ParamsError) as error:
        _fail(str(error))
    for source in train_sources + eval_sources:
        console.print(f"{source.path}: {source.counts['records']} records ({source.records[0]['source']['format'] if source.records else 'empty'}), md5 {source.md5}")
    train = [r for s in train_sources for r in s.records]
    evaluation = [r for s in eval_sources for r in s.records]
    try:
        tokenizer = load_tokenizer(loaded.base_model_path(), loaded.model.chat_template)
    except Exception as error:  # a missing or broken model: say which, no traceback
        _fail(f"model.base_model {loaded.model.base_model!r}: its tokenizer does not load ({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}); pass --params with a usable model", code=2)
    docs = report_dir / "data_docs" if report_dir else None
    train_report, eval_report = validate_splits(loaded, train, evaluation, tokenizer, docs_dir=docs)
    reports = [train_report] + ([eval_report] if eval_report else [])
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
        _fail(error_message(reports))


def _validate_settings(loaded, params: str | None, max_length: int | None) -> str:
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
    from tunegate.paths import configure_environment, repo_root, tunegate_home

    configure_environment()
    from tunegate.adapters.dvc import add_files

    root = (repo or repo_root()).resolve()
    if not (root / ".dvc").is_dir():
        _fail(f"{root}: not a DVC repo (no .dvc folder); run `git init && dvc init` there or pass --repo")
    try:
        added = add_files(root, [p.resolve() for p in paths], root / to, tunegate_home())
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
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
                _fail(f"{item.path} is versioned, but the {scheduling.DATA_ADDED} event could not be sent: {type(error).__name__}: {error}")
            if sent:
                console.print(f"event {scheduling.DATA_ADDED} sent for {path} (md5 {item.md5[:12]})", highlight=False)
    console.print("next: git add the .dvc files and commit; `dvc push` sends the data to the remote")


def _need_server(command: str) -> None:
    import os

    if not os.environ.get("PREFECT_API_URL"):
        _fail(
            f"`tunegate {command}` needs a Prefect server that outlives this command: start `tunegate server` "
            "and export the PREFECT_API_URL and MLFLOW_TRACKING_URI it prints", code=2,
        )


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

    from tunegate.adapters.git import git_commit
    from tunegate.operations import scheduling
    from tunegate.paths import repo_root

    params_file = str(_params_path(params).resolve())
    s = loaded.schedule
    if not (s.cron or s.interval_seconds or s.on_new_data):
        _fail(f"{params_file}: schedule has no cron, no interval_seconds and on_new_data is false: nothing would start a run", code=2)
    commit, _ = git_commit(repo_root())
    run_overrides = [o for o in overrides if not o.startswith("schedule.")]  # the rest shaped `loaded` above
    from flows.retrain import retrain

    deployment = scheduling.build_deployment(retrain, params_file, loaded, version=commit[:12], overrides=run_overrides)
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
    try:
        serve(deployment, limit=limit, print_starting_message=True)
    finally:
        if watcher:
            watcher.stop()


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
    import signal
    import time

    from tunegate.paths import configure_environment
    from tunegate.operations.server import (
        AUTH_ADMIN_USERNAME, AUTH_PERMISSIONS, ServerConfig, ServerError, admin_password_source, client_env, redact,
        start_all, state_file, stop, supervise,
    )

    if auth_default_permission.upper() not in AUTH_PERMISSIONS:
        _fail(f"--auth-default-permission {auth_default_permission!r}: choose one of {', '.join(AUTH_PERMISSIONS)}", code=2)
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
        _fail(str(error))
    except KeyboardInterrupt:
        _fail("interrupted while starting", code=130)
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

    receiver = _start_alias_webhook(config, _say)
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
        _fail(str(gave_up))
    console.print(f"stopped ({stopping['signal']}): " + ", ".join(f"{name} exit {code}" for name, code in codes.items()), highlight=False)


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
    from tunegate.governance import audit

    try:
        return audit.store().entries()
    except audit.AuditError as error:
        _fail(str(error))


@audit_app.command("log")
def audit_log_command(
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    last: Annotated[int, typer.Option("--last", help="only the last N events (0: all)")] = 0,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """List audit events: time, event, actor (authenticated or not), host and the essentials."""
    entries = _audit_entries(params)
    entries = entries[-last:] if last else entries
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


@audit_app.command("import")
def audit_import(
    path: Annotated[Path, typer.Argument(help="a JSONL trail of an earlier tunegate (events.jsonl)")],
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Bring an earlier JSONL trail in once: as-is into an empty table, else attached by one entry (its head and sha256)."""
    _promotion(params)
    from tunegate.governance import audit

    if not path.is_file():
        _fail(f"{path}: no such file")
    try:
        outcome = audit.store().import_jsonl(path)
    except audit.AuditError as error:
        _fail(str(error))
    if outcome is None:
        _fail(f"{path}: holds no entries")
    how = "imported" if "imported" in outcome else "attached"
    _console().print(f"{how} {outcome[how]} entries from {path} (renamed {path.name}.imported)", highlight=False)


@audit_app.command("export")
def audit_export(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="file to write (default: stdout)")] = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Write the trail as JSONL, one entry per line exactly as hashed (for an archive or an auditor)."""
    from tunegate.governance.audit import canonical, verify_chain

    entries = _audit_entries(params)
    text = "".join(canonical(e) + "\n" for e in entries)
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text, encoding="utf-8")
    ok, message = verify_chain(entries)
    _console(stderr=True).print(f"wrote {len(entries)} entries to {out} ({message if ok else 'BROKEN: ' + message})", highlight=False)


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
    from tunegate.governance.signing import SigningError, generate

    try:
        public = generate(out)
    except SigningError as error:
        _fail(str(error))
    _console().print(f"private key written to {out} (keep it to yourself; approve with --key {out})", highlight=False)
    print(f"{reviewer or '<your reviewer name>'}: {public}")


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
