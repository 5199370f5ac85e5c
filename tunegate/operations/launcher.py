"""The one front door of a run: params loaded, validated and preflighted once, then the ``retrain`` flow.

``tunegate run`` (:func:`run`) loads and validates the params, sets the thread budget before torch is
imported, runs the preflight (in a child process beside its own start-up) and starts the flow with
what it established as one value, :class:`Launch` (the flow's ``launch`` parameter): the params, their
sha256, when the preflight passed, the thread budget and the Prefect server's start-up seconds. The
flow's first task takes the params from it (:func:`flow_params`) instead of loading and checking them
again. A scheduled or served run starts the flow without it: the same first task then loads, checks and
sets the thread budget once itself, by the same functions. Nothing in a module joins the launcher, the
flow and its tasks; what the launcher computed ahead (the data validation) is found by the task under
a directory named by the process and the params (:mod:`tunegate.operations.validation_ahead`).

What the launcher starts, the temporary Prefect server and the preflight/validation child, dies with it
however it dies, ``kill -9`` included (:mod:`tunegate.adapters.lifeline`).

The flow itself is handed in by the CLI (``flow_loader``): nothing under ``tunegate/`` imports ``flows``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tunegate.params import Params, ParamsError, dump_params, load_params


class CommandError(Exception):
    """A command must stop: the CLI prints ``error: message`` (and the ``--json`` failure line) and exits ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def params_sha256(params: Params) -> str:
    """sha256 of the resolved params as YAML (every key, overrides applied)."""
    return hashlib.sha256(dump_params(params).encode()).hexdigest()


class Launch(BaseModel):
    """What ``tunegate run`` established before it started the flow, handed to it as a value."""

    model_config = ConfigDict(frozen=True)

    params: Params  # loaded from the user's file with the overrides applied, validated
    params_sha256: str  # of ``params`` (params_sha256): a value that changed on its way is not trusted
    preflight_passed_at: float  # time.time() when the preflight passed
    thread_budget: str  # the budget set before torch was imported, described
    server_start_s: float = 0.0  # seconds the temporary Prefect server took to answer (0: none of ours)
    queue_wait_s: float = 0.0  # seconds ``tunegate run`` waited for the project's run slot before the flow


@dataclass(frozen=True)
class FlowParams:
    """What the flow's first task hands on: the params, and the thread budget described for its log."""

    params: Params
    thread_budget: str


def params_path(params: str) -> Path:
    """The params file as named, else relative to the repo root."""
    from tunegate.paths import repo_root

    path = Path(params)
    if not path.exists() and not path.is_absolute() and (repo_root() / path).exists():
        path = repo_root() / path
    return path


def load_checked(params: str, overrides: list[str]) -> Params:
    """The params validated (exit 2 with the key and the fix when they are not)."""
    try:
        return load_params(params_path(params), overrides)
    except ParamsError as error:
        raise CommandError(str(error), code=2) from None


def apply_thread_budget(params: Params) -> str:
    """Threads = cores / machine slots, set before torch is imported (OpenMP reads them once); described."""
    from tunegate.operations import runqueue

    return runqueue.apply_thread_budget(runqueue.machine_slots(params.runs.machine_slots)).describe()


def flow_params(params_file: str, overrides: list[str], launch: Launch | None) -> FlowParams:
    """The flow's first task: the launcher's params when it handed them over (the preflight run again
    only when it passed more than ``RECHECK_AFTER_S`` ago, e.g. after a wait in the queue); otherwise (a
    scheduled or served run) the params loaded, preflighted and their thread budget set, once, here.
    Starts the run's stage timings. Raises :class:`~tunegate.operations.preflight.PreflightError`."""
    from tunegate.operations import timings
    from tunegate.operations.preflight import RECHECK_AFTER_S, check_preflight

    if launch is not None and params_sha256(launch.params) != launch.params_sha256:
        launch = None  # changed on its way: checked here as if served
    before = None
    if launch is not None:  # what `tunegate run` measured before the flow (a queue wait only when it waited)
        before = {"server_start": launch.server_start_s} | ({"queue_wait": launch.queue_wait_s} if launch.queue_wait_s else {})
    timings.reset(before)
    if launch is not None:
        if time.time() - launch.preflight_passed_at >= RECHECK_AFTER_S:
            check_preflight(launch.params, params_file=params_file, command="retrain flow")
        return FlowParams(launch.params, launch.thread_budget)
    params = load_params(Path(params_file), overrides)
    check_preflight(params, params_file=params_file, command="retrain flow")
    return FlowParams(params, apply_thread_budget(params))  # served runs: torch is imported, its pool resized


def flow_run_params(parameters: dict[str, Any]) -> Params:
    """The params of a flow run from its parameters (the failure hook): the launch value's, else loaded."""
    launch = parameters.get("launch")
    if isinstance(launch, Launch):
        return launch.params
    if launch:
        return Launch.model_validate(launch).params
    return load_params(Path(parameters.get("params_file", "params/demo.yaml")), parameters.get("overrides") or [])


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def run(
    params: str,
    overrides: list[str],
    json_out: bool,
    resume: str | None,
    wait_for_approval: bool | None,
    accept_unaudited_champion: bool,
    *,
    own: bool,
    flow_loader: Callable[[], Any],
) -> None:
    """``tunegate run``. ``own``: this process was started for the command (else, inside another program
    such as tests' CliRunner, the preflight runs here and Prefect starts its own server); ``flow_loader``
    imports and returns the ``retrain`` flow. Raises :class:`CommandError`."""
    from tunegate.paths import configure_environment

    loaded = load_checked(params, overrides)
    configure_environment()
    try:  # threads = cores / machine slots, set before torch is imported (OpenMP reads them once)
        budget = apply_thread_budget(loaded)
    except ValueError as error:
        raise CommandError(str(error), code=2) from None
    wait = bool(os.environ.get("PREFECT_API_URL")) if wait_for_approval is None else wait_for_approval
    if wait and not os.environ.get("PREFECT_API_URL"):
        raise CommandError("--wait-for-approval needs a Prefect server to answer the form in (set PREFECT_API_URL)", code=2)
    # The temporary Prefect server (creating its database on a new home) starts on a thread and the
    # preflight in a child process, both on the other core while this process imports the pipeline;
    # inside another program (tests' CliRunner) the preflight runs here and Prefect starts its own server.
    # The run slot is asked for now, on a thread, so runs queue in the order they were started
    # whichever finishes its imports first; this process imports the pipeline while it waits.
    slot_request = RunSlotRequest(loaded, _console(stderr=json_out)).start()
    try:  # a command that ends before its flow lets the next run in at once
        server_start = start_prefect_in_background() if own else None
        child = PreflightChild(loaded, params, overrides) if own else None
        if child is None:
            check_preflight_here(loaded, params)
        from tunegate.data.validation import DataError

        retrain = flow_loader()  # imports the pipeline (torch, transformers, peft, trl, ...)
        warm_imports(lambda: preflight_verdict(child, loaded, params, wait=False))
        if own:  # the imported stack lives as long as the process: the collector need not walk it again
            import gc  # (the trainer's gc.collect() took 0.5 s over it, and each full collection as much)

            gc.freeze()
        preflight_verdict(child, loaded, params, wait=True)
        passed_at = time.time()  # the flow's first task need not check again
        if resume:
            refuse_live_resume(resume)
        console = _console(stderr=json_out)
        console.rule(f"tunegate run: {loaded.model.registered_name}")
        slot = slot_request.result()  # runs start in the order they were started
    except BaseException:
        slot_request.abandon()
        raise
    try:
        with slot:
            if server_start is None:  # inside another program: Prefect's own temporary server, started
                server_start = NoServer()  # only if the flow reaches Prefect (startup timeout as set above)
            api_url = server_start.wait()
            launch = Launch(params=loaded, params_sha256=params_sha256(loaded), preflight_passed_at=passed_at,
                            thread_budget=budget, server_start_s=server_start.seconds, queue_wait_s=slot_request.waited)
            from tunegate.adapters.prefect import temporary_api

            with temporary_api(api_url):
                summary = retrain(params_file=str(params_path(params)), overrides=overrides, resume_run_id=resume, wait_for_approval=wait,
                                  accept_unaudited_champion=accept_unaudited_champion, launch=launch)
    except DataError as error:
        raise CommandError(str(error)) from None
    except CommandError:
        raise
    except Exception as error:  # the flow run and the MLflow run record the details
        raise CommandError(flow_error_message(error)) from None
    summary.setdefault("outcome", "registered" if summary.get("registered_version") else "gate_failed")
    add_wall_time(summary, time.time())
    from rich.markdown import Markdown

    from tunegate.governance.summary import render_markdown

    console.print(Markdown(render_markdown(summary)))
    if json_out:
        print(json.dumps(summary, default=str))


class RunSlotRequest:
    """On the embedded default, wait for and take the project's run slot (an OS file lock under
    $TUNEGATE_HOME/queue) on a thread; :meth:`result` hands it over before the flow starts, and the
    flow names its run in it. With a Prefect server the flow takes the server's global concurrency
    limit itself (tasks.queue.run_slot)."""

    def __init__(self, loaded: Params, console) -> None:
        import contextlib
        import threading

        self.loaded, self.console = loaded, console
        self.stack = contextlib.ExitStack()
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.taken = self.abandoned = False
        self.waited = 0.0  # seconds waited for the slot, once taken
        self.thread = threading.Thread(target=self._take, name="tunegate-run-slot", daemon=True)

    def start(self) -> RunSlotRequest:
        if not os.environ.get("PREFECT_API_URL"):
            self.thread.start()
        return self

    def _take(self) -> None:
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
            self.taken, self.waited = True, round(float(waited), 2)
        if seen:
            self.console.print(f"{time.strftime('%H:%M:%S')} got the run slot of {model} after waiting {waited:.0f} s for run(s) {', '.join(seen)}",
                               highlight=False, soft_wrap=True)

    def abandon(self) -> None:
        """The command ends before the flow: release the slot now or as soon as the thread takes it."""
        with self.lock:
            self.abandoned = True
            if self.taken:
                self.stack.close()

    def result(self):
        """The slot (a context manager releasing it), once taken; exit 1 on the queue's timeout."""
        from tunegate.operations import runqueue

        if self.thread.ident is not None:
            self.thread.join()
        if isinstance(self.error, runqueue.QueueTimeout):
            raise CommandError(str(self.error))
        if self.error is not None:
            raise self.error
        return self.stack


class NoServer:
    """PREFECT_API_URL is set (the flow runs against that server), or the command runs inside another
    program (Prefect starts its own temporary server when the flow first needs it): nothing to start."""

    seconds = 0.0

    def wait(self) -> None:
        return None


def start_prefect_in_background():
    if os.environ.get("PREFECT_API_URL"):
        return NoServer()
    from tunegate.adapters.prefect import TemporaryPrefectServer

    return TemporaryPrefectServer().start_in_background()


def warm_imports(between: Callable[[], None] | None = None) -> None:
    """Import what the tasks import, while the Prefect server starts, rather than inside the first task;
    ``between()`` runs after each (a preflight that failed stops the command without waiting for the rest)."""
    import importlib

    from tunegate.adapters import mlflow as tracking

    for name in ("torch", "transformers", "peft", "trl", "datasets", None, "matplotlib.pyplot"):
        try:
            if name is None:  # MLflow's transformers flavour, through its adapter
                tracking.import_transformers_flavor()
            else:
                importlib.import_module(name)
        except ImportError:  # the task that needs it says so
            pass
        if between is not None:
            between()


def check_preflight_here(loaded: Params, params: str) -> None:
    from tunegate.operations.preflight import format_problems, run_preflight

    problems = run_preflight(loaded, params_file=params)
    if problems:
        raise CommandError(format_problems(problems, "tunegate run"), code=2)


class PreflightChild:
    """``python -m tunegate.operations.preflight`` on the params, started now and dying with this process:
    its first stdout line is the verdict, read on a thread (:func:`preflight_verdict`); once passed it
    validates the data into :func:`tunegate.operations.validation_ahead.directory_for`, where the flow's
    ``validate_data`` task finds it. The directory is removed when this process ends."""

    def __init__(self, loaded: Params, params: str, overrides: list[str]) -> None:
        import atexit
        import shutil
        import subprocess
        import threading

        from tunegate.adapters import lifeline
        from tunegate.operations import validation_ahead

        validation_ahead.sweep()  # what killed launchers left
        self.directory = validation_ahead.directory_for(loaded)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        args = [sys.executable, "-m", "tunegate.operations.preflight", str(params_path(params)), "--as", params,
                "--validate-into", str(self.directory)]
        for item in overrides:
            args += ["--set", item]
        self.stderr = self.directory.parent / f"{self.directory.name}-stderr.log"
        with open(self.stderr, "w") as stderr:
            self.process = lifeline.spawn(args, stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.line = ""
        self.read = threading.Event()
        self.verdict_read = False
        threading.Thread(target=self._read, name="tunegate-preflight", daemon=True).start()

        def cleanup() -> None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            shutil.rmtree(self.directory.parent, ignore_errors=True)

        atexit.register(cleanup)

    def _read(self) -> None:
        self.line = self.process.stdout.readline()
        self.read.set()
        for _ in self.process.stdout:  # keep the pipe drained
            pass
        self.process.wait()  # reaped once it ends

    def verdict(self) -> list[dict] | None:
        """The problems found (empty: passed), or ``None`` when the child could not say."""
        self.read.wait()
        try:
            found = json.loads(self.line)
        except ValueError:
            return None
        return found if isinstance(found, list) else None

    def discard(self) -> None:
        """Nothing the child computes is used: stop it and remove its directory (the task validates itself)."""
        import shutil

        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def preflight_verdict(child: PreflightChild | None, loaded: Params, params: str, wait: bool) -> None:
    """Stop the command (exit 2) when the child found problems; a child that could not say runs the
    preflight here instead. ``wait`` False: only when it has answered already. A passed child goes on
    validating the data for the flow's ``validate_data`` task."""
    if child is None or (not wait and not child.read.is_set()) or child.verdict_read:
        return
    found = child.verdict()
    child.verdict_read = True
    if found is None:  # the child failed: the preflight here says why, with the same messages
        child.discard()
        check_preflight_here(loaded, params)
        return
    if found:
        from tunegate.operations.preflight import Problem, format_problems

        raise CommandError(format_problems([Problem(p["check"], p["message"]) for p in found], "tunegate run"), code=2)


def refuse_live_resume(run_id: str) -> None:
    """``--resume`` of a run whose process still runs on this host would train twice into one directory."""
    from tunegate import tags
    from tunegate.adapters import mlflow as tracking
    from tunegate.operations.status import process_gone

    try:
        run = tracking.get_run(run_id)
    except Exception:  # the flow's own check names a missing run
        return
    if run.info.status == "RUNNING" and process_gone(run.data.tags) is False:
        raise CommandError(f"run {run_id} is still running (pid {run.data.tags.get(tags.PID)} on {run.data.tags.get(tags.HOST)}); "
                           "resume it only after its process has ended", code=2)


def add_wall_time(summary: dict, now: float) -> None:
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


def flow_error_message(error: BaseException) -> str:
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

