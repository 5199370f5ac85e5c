"""The ``tunegate`` command line.

Imports of prefect, mlflow, torch and friends happen inside the commands so
that ``tunegate --help`` answers in well under a second.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="tunegate",
    help="Instruction tuning as an operated, auditable pipeline: validate -> tune -> evaluate -> gate -> promote.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_PARAMS = "params/demo.yaml"


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def _fail(message: str, code: int = 1) -> None:
    # soft_wrap: long paths and rule names stay on one line, so logs can be grepped.
    _console(stderr=True).print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code)


def _params_path(params: str) -> Path:
    from tunegate.paths import repo_root

    path = Path(params)
    if not path.exists() and not path.is_absolute() and (repo_root() / path).exists():
        path = repo_root() / path
    return path


def _load(params: str, overrides: list[str]):
    from tunegate.params import ParamsError, load_params

    try:
        return load_params(_params_path(params), overrides)
    except ParamsError as error:
        _fail(str(error), code=2)


@app.command()
def run(
    params: Annotated[str, typer.Option("--params", "-p", help="params YAML file")] = DEFAULT_PARAMS,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: section.key=value (repeatable)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON summary object on the last line")] = False,
    resume: Annotated[str | None, typer.Option("--resume", help="MLflow run id of a run that died: continue it from its last checkpoint")] = None,
    wait_for_approval: Annotated[bool | None, typer.Option("--wait-for-approval/--no-wait-for-approval", help="pause for a review form in the Prefect UI (default: when PREFECT_API_URL points at a server)")] = None,
) -> None:
    """Run the retrain flow: validate, tune, evaluate against the baseline, gate, register."""
    from tunegate.paths import configure_environment

    overrides = list(set_ or [])
    loaded = _load(params, overrides)
    configure_environment()
    from tunegate.summary import render_markdown

    from flows.retrain import retrain
    from tunegate.validation import DataError

    console = _console(stderr=json_out)
    console.rule(f"tunegate run: {loaded.model.registered_name}")
    try:
        import os

        wait = bool(os.environ.get("PREFECT_API_URL")) if wait_for_approval is None else wait_for_approval
        if wait and not os.environ.get("PREFECT_API_URL"):
            _fail("--wait-for-approval needs a Prefect server to answer the form in (set PREFECT_API_URL)", code=2)
        summary = retrain(params_file=str(_params_path(params)), overrides=overrides, resume_run_id=resume, wait_for_approval=wait)
    except DataError as error:
        _fail(str(error))
    except Exception as error:  # the flow run and the MLflow run record the details
        _fail(f"{type(error).__name__}: {error}")
    from rich.markdown import Markdown

    console.print(Markdown(render_markdown(summary)))
    if json_out:
        print(json.dumps(summary, default=str))


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="training data files (JSON list or JSONL, any supported format)")],
    eval_paths: Annotated[list[Path] | None, typer.Option("--eval", help="eval data files; enables the train/eval overlap check")] = None,
    params: Annotated[str | None, typer.Option("--params", "-p", help="params file whose validation rules, model and template apply")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, alpaca, sharegpt, openai, prompt_completion or self_instruct")] = "auto",
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="write report.md, report.json and Data Docs here")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the reports as one JSON object")] = False,
) -> None:
    """Validate data files alone: the same conversion and expectation suite as `run`."""
    from tunegate.paths import configure_environment

    loaded = _load(params or DEFAULT_PARAMS, [])
    if params is None:
        # Without --params only the model and template come from the demo; the rules are the defaults.
        from tunegate.params import ValidationParams

        loaded = loaded.model_copy(update={"validation": ValidationParams()})
    configure_environment()
    from tunegate.dataset import load_sources, validate_splits
    from tunegate.modeling import load_tokenizer
    from tunegate.params import ParamsError, SourceParams
    from tunegate.sources import DataError
    from tunegate.validation import error_message, save_report

    console = _console(stderr=json_out)
    try:
        train_specs = [SourceParams(path=str(p.resolve()), format=fmt) for p in paths]
        eval_specs = [SourceParams(path=str(p.resolve()), format=fmt) for p in eval_paths or []]
    except Exception as error:  # pydantic: a --format that is not allowed
        _fail(f"--format {fmt!r}: {str(error).splitlines()[-1]}", code=2)
    try:
        train_sources = load_sources(train_specs)
        eval_sources = load_sources(eval_specs)
    except (DataError, ParamsError) as error:
        _fail(str(error))
    for source in train_sources + eval_sources:
        console.print(f"{source.path}: {source.counts['records']} records ({source.records[0]['source']['format'] if source.records else 'empty'}), md5 {source.md5}")
    train = [r for s in train_sources for r in s.records]
    evaluation = [r for s in eval_sources for r in s.records]
    tokenizer = load_tokenizer(loaded.base_model_path(), loaded.model.chat_template)
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
    if not all(r.passed for r in reports):
        _fail(error_message(reports))


data_app = typer.Typer(help="Put data under DVC and inspect it.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("add")
def data_add(
    paths: Annotated[list[Path], typer.Argument(help="files to version; files outside the repo are copied into --to first")],
    to: Annotated[str, typer.Option("--to", help="repo folder for files that live outside the repo")] = "data/sources",
) -> None:
    """`dvc add` user data files and print their md5s (commit the .dvc files with git)."""
    from tunegate.paths import configure_environment, repo_root, tunegate_home

    configure_environment()
    from tunegate.dvc_adapter import add_files

    try:
        added = add_files(repo_root(), [p.resolve() for p in paths], repo_root() / to, tunegate_home())
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    console = _console()
    for item in added:
        console.print(f"{item.path}: md5 {item.md5} -> {item.path}.dvc")
    console.print("next: git add the .dvc files and commit; `dvc push` sends the data to the remote")


def _version_dict(ref) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {"version": ref.version, "run_id": ref.run_id, "tags": ref.tags}


@app.command()
def status(
    params: Annotated[str, typer.Option("--params", "-p", help="params YAML file")] = DEFAULT_PARAMS,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Show the champion and candidate versions and the last runs."""
    from tunegate.paths import configure_environment

    loaded = _load(params, [])
    configure_environment()
    from tunegate import tracking

    name = loaded.model.registered_name
    champion = tracking.alias_version(name, tracking.CHAMPION)
    candidate = tracking.alias_version(name, tracking.CANDIDATE)
    runs = [
        {
            "run_id": r.info.run_id,
            "status": r.info.status,
            "start_time": r.info.start_time,
            "gate": r.data.tags.get("tunegate.gate"),
            "registered_version": r.data.tags.get("tunegate.registered_version"),
            "baseline": r.data.tags.get("tunegate.baseline_source"),
            "candidate_exact_match": r.data.metrics.get("candidate_exact_match"),
            "failure": r.data.tags.get("tunegate.failure"),
        }
        for r in tracking.recent_runs(loaded.project.name, limit=10)
    ]
    result = {
        "model_name": name,
        "tracking_uri": tracking.tracking_uri(),
        "champion": _version_dict(champion),
        "candidate": _version_dict(candidate),
        "runs": runs,
    }
    if json_out:
        print(json.dumps(result, default=str))
        return
    from rich.table import Table

    console = _console()
    console.print(f"model [bold]{name}[/bold] at {result['tracking_uri']}")
    console.print(f"champion:  {champion.version if champion else '-'}")
    console.print(f"candidate: {candidate.version if candidate else '-'}")
    table = Table("run", "status", "gate", "version", "baseline", "exact match")
    for r in runs:
        em = r["candidate_exact_match"]
        table.add_row(r["run_id"][:12], r["status"], r["gate"] or "-", r["registered_version"] or "-",
                      r["baseline"] or "-", f"{em:.3f}" if em is not None else "-")
    console.print(table)


def _promotion(params: str):
    from tunegate.paths import configure_environment

    loaded = _load(params, [])
    configure_environment()
    return loaded


def _run_promotion(action) -> None:
    from tunegate.promotion import PromotionError

    try:
        outcome = action()
    except PromotionError as error:
        _fail(str(error))
    _console().print(outcome.message)


@app.command()
def approve(
    version: Annotated[str, typer.Argument(help="the candidate version to approve")],
    reviewer: Annotated[str, typer.Option("--reviewer", help="who approves (checked against the policy's allow-list)")],
    reason: Annotated[str, typer.Option("--reason", help="why")],
    params: Annotated[str, typer.Option("--params", "-p", help="params YAML file (its gate.approvals policy applies)")] = DEFAULT_PARAMS,
) -> None:
    """Approve the candidate VERSION; when the policy's roles are covered, it becomes ``champion``."""
    loaded = _promotion(params)
    from tunegate import promotion

    _run_promotion(lambda: promotion.approve(loaded.model.registered_name, version, reviewer, reason, loaded.gate.approvals))


@app.command()
def reject(
    version: Annotated[str, typer.Argument(help="the candidate version to reject")],
    reviewer: Annotated[str, typer.Option("--reviewer", help="who rejects")],
    reason: Annotated[str, typer.Option("--reason", help="why")],
    params: Annotated[str, typer.Option("--params", "-p", help="params YAML file")] = DEFAULT_PARAMS,
) -> None:
    """Reject a candidate: it loses alias ``candidate`` and can never become champion."""
    loaded = _promotion(params)
    from tunegate import promotion

    _run_promotion(lambda: promotion.reject(loaded.model.registered_name, version, reviewer, reason))


@app.command()
def rollback(
    reviewer: Annotated[str, typer.Option("--reviewer", help="who rolls back")],
    reason: Annotated[str, typer.Option("--reason", help="why")],
    params: Annotated[str, typer.Option("--params", "-p", help="params YAML file")] = DEFAULT_PARAMS,
) -> None:
    """Move ``champion`` back to the ``previous`` version."""
    loaded = _promotion(params)
    from tunegate import promotion

    _run_promotion(lambda: promotion.rollback(loaded.model.registered_name, reviewer, reason))


audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    params: Annotated[str, typer.Option("--params", "-p", help="params YAML file (whose model holds the head hash)")] = DEFAULT_PARAMS,
) -> None:
    """Check every entry's hash and link, and the log's length against the registry's head."""
    loaded = _promotion(params)
    from tunegate import promotion

    ok, message = promotion.verify(loaded.model.registered_name)
    if not ok:
        _fail(f"audit trail broken at {message}")
    _console().print(f"audit trail intact: {message}")


@audit_app.command("log")
def audit_log_command(
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    last: Annotated[int, typer.Option("--last", help="only the last N events (0: all)")] = 0,
) -> None:
    """List audit events: time, event, actor, commit and the essentials."""
    from tunegate.paths import configure_environment

    configure_environment()
    from tunegate import audit
    from tunegate.promotion import audit_log

    entries = audit.read_entries(audit_log())
    entries = entries[-last:] if last else entries
    if json_out:
        for entry in entries:
            print(json.dumps(entry))
        return
    from rich.table import Table

    table = Table("#", "time", "event", "actor", "details")
    for e in entries:
        details = ", ".join(f"{k}={v}" for k, v in e["data"].items() if k in ("run_id", "version", "reviewer", "reason", "passed", "champion", "data_md5"))
        table.add_row(str(e["seq"]), e["time"][:19], e["event"], e["actor"], details[:120])
    _console().print(table)


@app.command()
def lineage(
    version: Annotated[str, typer.Argument(help="registered model version")],
    params: Annotated[str, typer.Option("--params", "-p", help="params YAML file")] = DEFAULT_PARAMS,
    json_out: Annotated[bool, typer.Option("--json", help="print the lineage as JSON")] = False,
) -> None:
    """Data md5s -> validation -> run, params and commit -> evaluation vs baseline -> gate -> approvals -> aliases."""
    loaded = _promotion(params)
    from tunegate.lineage import build_lineage, render_lineage

    try:
        chain = build_lineage(loaded.model.registered_name, version)
    except LookupError as error:
        _fail(str(error))
    if json_out:
        print(json.dumps(chain, default=str))
    else:
        _console().print(render_lineage(chain), highlight=False, soft_wrap=True, markup=False)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
