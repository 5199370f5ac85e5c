"""Preflight: every mistake in params that can be seen before a run starts, all at once.

:func:`run_preflight` checks the data files, the eval files and their columns, that the base
model resolves offline (a local directory with config.json and safetensors weights, or a hub
id in the local Hugging Face cache), that its tokenizer loads and renders a conversation
through the chat template, and that the hardware can run the training settings. It runs
before any Prefect server, MLflow run or audit entry (``tunegate run``, and the flow's
``load_run_params`` for scheduled and served runs).

Each problem is one sentence naming the params key, file, column or model and the fix.
Checks never reach a network. An unexpected exception inside a check becomes a problem that
names a log file under ``$TUNEGATE_HOME/logs/`` with its traceback.

Heavy libraries (transformers, torch) are imported inside the checks that need them;
prefect, mlflow and great_expectations never are.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunegate.tuning.hardware import hardware_problems
from tunegate.tuning.modeling import cached_snapshot, hf_cache_dir

if TYPE_CHECKING:
    from tunegate.params import Params

# The conversation rendered through the chat template; its texts must come out again.
PROBE_USER, PROBE_ANSWER = "Name a colour.", "Blue."
PROBE_CONVERSATION: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": PROBE_USER},
    {"role": "assistant", "content": PROBE_ANSWER},
)


@dataclass(frozen=True)
class Problem:
    """One reason a run cannot start: which check found it and the sentence to show."""

    check: str  # "data", "eval", "model", "tokenizer", "hardware"
    message: str

    def __str__(self) -> str:
        return self.message


class PreflightError(RuntimeError):
    """Raised (by :func:`check_preflight`) when a run must not start; carries every problem."""

    def __init__(self, problems: list[Problem], command: str = "tunegate run") -> None:
        self.problems = list(problems)
        self.command = command
        super().__init__(format_problems(self.problems, command))


def format_problems(problems: list[Problem], command: str = "tunegate run") -> str:
    """One paragraph: a heading line, then one line per problem."""
    head = f"{command}: {len(problems)} problem(s) before anything started:"
    return "\n".join([head] + [f"  - {p.message}" for p in problems])


def run_preflight(params: Params, *, params_file: str | Path) -> list[Problem]:
    """Every problem that stops a run with ``params`` (read from ``params_file``) before it starts.

    Fast (seconds: it loads the tokenizer, never the model) and offline; an empty list means go.
    """
    where = str(params_file)
    problems: list[Problem] = []
    problems += _guarded("data", lambda: data_problems(params))
    problems += _guarded("eval", lambda: eval_problems(params))
    model_found, model_dir = _model_check(params, problems)
    if model_found and model_dir is not None:
        problems += _guarded("tokenizer", lambda: tokenizer_problems(params, model_dir))
    problems += _guarded("hardware", lambda: hardware_problems(params))
    problems += _guarded("audit", lambda: audit_problems(params))
    return [Problem(p.check, f"{where}: {p.message}") for p in problems]


# A preflight passed longer ago than this is run again before the flow trusts it (a run that waited
# in the queue: the data or the model may have changed meanwhile); see tunegate.operations.launcher.
RECHECK_AFTER_S = 120.0


def check_preflight(params: Params, *, params_file: str | Path, command: str = "tunegate run") -> None:
    """:func:`run_preflight`, raising one :class:`PreflightError` with every problem found."""
    problems = run_preflight(params, params_file=params_file)
    if problems:
        raise PreflightError(problems, command)


# --- audit trail and identity ------------------------------------------------------------------


def audit_problems(params: Params) -> list[str]:
    """The audit database resolves and answers (nothing is created); a tracking server that authenticates
    accepts our credentials."""
    from tunegate.governance import audit, identity

    audit.set_params_url(params.audit.database_url)
    try:
        audit.check_reachable()
    except audit.AuditError as error:
        return [f"audit: {error}"]
    try:
        identity.current_identity()
    except identity.IdentityError as error:
        return [f"identity: {error}"]
    return []


# --- data ---------------------------------------------------------------------------------------


def dvc_stage_outputs(stage: str, root: Path | None = None) -> list[Path] | None:
    """Absolute paths of the ``outs`` of ``stage`` in ``root/dvc.yaml``; None when there is no such stage."""
    from tunegate.paths import dvc_stage_outs

    return dvc_stage_outs(root).get(stage)


def data_problems(params: Params, root: Path | None = None) -> list[str]:
    """Missing ``data.train`` / ``data.eval`` files, except outputs of ``data.dvc_stage`` (made at run time)."""
    from tunegate.paths import repo_root, resolve_path

    root = root or repo_root()
    problems: list[str] = []
    made_by_stage: list[Path] = []
    stage = params.data.dvc_stage
    if stage:
        outs = dvc_stage_outputs(stage, root)
        if outs is None:
            problems.append(
                f"data.dvc_stage: {stage!r} is not a stage in {root / 'dvc.yaml'}; "
                "name one of its stages, or set data.dvc_stage: null for data that no DVC stage makes"
            )
        else:
            made_by_stage = outs
    sections = [("data.train", params.data.train, "chat"), ("data.eval", params.data.eval, "chat")]
    if params.preference is not None:
        sections += [("preference.data.train", params.preference.data.train, "preference"),
                     ("preference.data.eval", params.preference.data.eval, "preference")]
    for section, sources, kind in sections:
        for i, source in enumerate(sources):
            path = resolve_path(source.path)
            if any(path == out or path.is_relative_to(out) for out in made_by_stage):
                continue  # `dvc repro <stage>` makes it when the flow starts
            key = f"{section}[{i}].path"
            if not path.exists():
                problems.append(
                    f"{key}: {source.path!r} does not exist (resolved to {path}; relative paths are read "
                    f"from the repo root {root}); fix the path or create the file"
                )
            elif not path.is_file():
                problems.append(f"{key}: {path} is a directory; name a JSON or JSONL file inside it")
            elif (wrong := kind_problem(path, kind, getattr(source, "columns", None))) is not None:
                problems.append(f"{key}: {path}: {wrong}")
    return problems


def kind_problem(path: Path, kind: str, columns: dict[str, str] | None = None) -> str | None:
    """Preference pairs given as instruction data, or chat records as preference data, told by the file's first
    record (the rest is read and validated when the flow runs); None when the first record is of ``kind``."""
    from tunegate.data.formats import apply_columns
    from tunegate.data.sources import DataError, iter_raw_records

    try:
        first = next((raw for _, raw in iter_raw_records(path)), None)
    except DataError:
        return None  # unreadable data is named, with its record, by the data stage
    if not isinstance(first, dict):
        return None
    keys = set(apply_columns(first, columns or {}))
    paired = {"chosen", "rejected"} <= keys
    unpaired = "label" in keys and ("messages" in keys or {"prompt", "completion"} <= keys)
    if kind == "chat" and paired:
        return ("holds preference pairs (chosen/rejected), not instruction data: list it under preference.data.train "
                "and set train.objective: dpo")
    if kind == "preference" and unpaired and not paired:
        return ("holds unpaired records (label true/false, KTO data): train.objective dpo needs chosen/rejected pairs; "
                "pair them, or use the file as instruction data under data.train (labelled-false records are dropped)")
    if kind == "preference" and not paired and not unpaired:
        return ("holds chat records (no chosen/rejected), not preference pairs: instruction data goes under data.train; "
                "preference pairs need chosen and rejected answers")
    return None


# --- eval files ---------------------------------------------------------------------------------


def eval_problems(params: Params) -> list[str]:
    """The enabled eval suites' files: missing files, missing columns, empty files; gate metrics no suite computes."""
    from tunegate.evaluation.suites import eval_file_problems, gate_metric_problems, minimum_problems

    return list(eval_file_problems(params.eval)) + gate_metric_problems(params.gate, params.eval, params.preference) + minimum_problems(params.governance.minimums)


# --- base model ---------------------------------------------------------------------------------


def hub_offline() -> bool:
    """Whether hub downloads are off (tunegate's default: ``HF_HUB_OFFLINE=1``)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "1"
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def weights_problems(model_dir: Path, key: str, name: str) -> list[str]:
    """config.json and safetensors weights in a model directory (other weight formats are refused)."""
    problems = []
    if not (model_dir / "config.json").is_file():
        problems.append(
            f"{key}: {name} ({model_dir}) has no config.json, so it is not a Hugging Face model directory; "
            "point it at the folder that holds config.json and the weights"
        )
    if not any(model_dir.glob("*.safetensors")):
        other = sorted(p.name for p in model_dir.glob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".gguf"})
        found = f" (found {', '.join(other[:3])})" if other else ""
        problems.append(
            f"{key}: {name} ({model_dir}) has no *.safetensors weights{found}; tunegate loads weights from "
            "safetensors only (no pickle formats), so convert them, e.g. load the model and "
            "save_pretrained(dir, safe_serialization=True), or use a model published with safetensors"
        )
    return problems


def model_problems(params: Params) -> tuple[list[str], Path | None]:
    """Whether ``model.base_model`` resolves offline; returns (problems, its local directory or None).

    A local directory needs config.json and safetensors weights. A hub id must be in the local
    Hugging Face cache (tunegate runs with ``HF_HUB_OFFLINE=1``); with ``HF_HUB_OFFLINE=0`` a hub
    id not cached yet is downloaded by the run, so it is not a problem (and has no directory yet).
    """
    from tunegate.paths import model_source, resolve_path

    name = params.model.base_model
    source = model_source(name)
    key = f"model.base_model: {name!r}"
    if Path(source).is_absolute():
        path = Path(source)
        if not path.exists():
            return [
                f"{key}: {path} does not exist; point model.base_model at a local model directory "
                "(config.json + *.safetensors; relative paths are read from the repo root) or at a hub id "
                "in the local Hugging Face cache"
            ], None
        if not path.is_dir():
            return [f"{key}: {path} is a file; point model.base_model at the directory that holds config.json and the weights"], None
        return weights_problems(path, "model.base_model", name), path
    cache = hf_cache_dir()
    snapshot = cached_snapshot(source, cache)
    if snapshot is None:
        if not hub_offline():
            return [], None  # the run downloads it (HF_HUB_OFFLINE=0 was asked for)
        return [
            f"{key}: the hub model {source!r} is not in the local Hugging Face cache ({cache}) and tunegate "
            f"runs with HF_HUB_OFFLINE=1, so nothing is downloaded; download it once with "
            f"`HF_HUB_OFFLINE=0 hf download {source}` (or `huggingface-cli download {source}`), or point "
            f"model.base_model at a local model directory (there is no directory {resolve_path(name)})"
        ], None
    return weights_problems(snapshot, "model.base_model", f"the cached hub model {source!r}"), snapshot


def _model_check(params: Params, problems: list[Problem]) -> tuple[bool, Path | None]:
    """Run :func:`model_problems` guarded, adding to ``problems``; (usable, local directory)."""
    result: dict[str, Any] = {}

    def check() -> list[str]:
        found, directory = model_problems(params)
        result["dir"] = directory
        return found

    before = len(problems)
    problems += _guarded("model", check)
    return len(problems) == before, result.get("dir")


# --- tokenizer and chat template ----------------------------------------------------------------


def tokenizer_problems(params: Params, model_dir: Path) -> list[str]:
    """The tokenizer loads from ``model_dir`` and renders a system/user/assistant conversation.

    A template that refuses the system role but renders user/assistant passes: records with a
    system turn are then the data's problem, reported by validation.
    """
    from tunegate.tuning.modeling import load_tokenizer

    name = params.model.base_model
    wanted = params.model.chat_template
    template = f"model.chat_template: {wanted}" if wanted else "the tokenizer's own template (model.chat_template: null)"
    try:
        tokenizer = _quietly(lambda: load_tokenizer(model_dir, wanted))
    except Exception as error:
        log = write_log(f"loading the tokenizer of {name!r} from {model_dir}", error)
        return [
            f"model.base_model: {name!r}: its tokenizer does not load from {model_dir} ({_first_line(error)}); "
            f"check that the directory has the tokenizer files (tokenizer.json or tokenizer.model and "
            f"tokenizer_config.json); details in {log}"
        ]
    conversation = [dict(m) for m in PROBE_CONVERSATION]
    try:
        rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception as first:
        try:
            rendered = tokenizer.apply_chat_template(conversation[1:], tokenize=False)
        except Exception:
            log = write_log(f"rendering a conversation with {template}", first)
            return [
                f"model.base_model: {name!r} with {template}: the chat template cannot render a "
                f"system/user/assistant conversation ({_first_line(first)}); set model.chat_template: "
                f"alpaca or chatml to use a built-in template; details in {log}"
            ]
    if not isinstance(rendered, str) or PROBE_USER not in rendered or PROBE_ANSWER not in rendered:
        return [
            f"model.base_model: {name!r} with {template}: the chat template drops the conversation's text "
            "(the user's or the assistant's message is missing from its output); set model.chat_template: "
            "alpaca or chatml to use a built-in template"
        ]
    from tunegate.data.templates import end_of_turn

    if end_of_turn(tokenizer) is None:
        return [
            f"model.base_model: {name!r} with {template}: the chat template puts no end-of-turn token (nor the "
            "EOS) after an assistant answer, so the model cannot learn where to stop; use a template that "
            "ends turns (model.chat_template: alpaca or chatml)"
        ]
    return []


# --- hardware -----------------------------------------------------------------------------------


# --- plumbing -----------------------------------------------------------------------------------


def write_log(check: str, error: BaseException, prefix: str = "preflight") -> Path:
    """Write ``error``'s traceback to ``$TUNEGATE_HOME/logs/<prefix>-<timestamp>.log``; returns the path."""
    import datetime as dt

    from tunegate.paths import tunegate_home

    logs = tunegate_home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = logs / f"{prefix}-{stamp}.log"
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"{check} failed:\n{text}\n")
    return path


def _guarded(check: str, run: Callable[[], list[str]]) -> list[Problem]:
    """Run one check; an unexpected exception becomes a problem naming the log file with its traceback."""
    try:
        return [Problem(check, message) for message in run()]
    except Exception as error:
        log = write_log(f"the preflight's {check} check", error)
        return [
            Problem(
                check,
                f"the {check} check failed unexpectedly ({_first_line(error)}); the traceback is in {log}; "
                "fix what it names, or report it with that file",
            )
        ]


def _first_line(error: BaseException) -> str:
    """``Type: first line of the message``, at most 300 characters."""
    text = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _quietly(load: Callable[[], Any]) -> Any:
    """Call ``load`` with transformers' logging at error level (no advice printed to the terminal)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return load()
    finally:
        hf_logging.set_verbosity(level)


def main(argv: list[str] | None = None) -> None:
    """``python -m tunegate.operations.preflight PARAMS [--set k=v ...]``: the problems as one JSON list on stdout
    (its first line); with ``--validate-into DIR`` the data validation follows, computed ahead.

    ``tunegate run`` runs this beside its own start-up (imports, the Prefect server) on another core, as a
    child that dies with it (tunegate.adapters.lifeline); while it works it holds the lock of the
    directory, which the flow's ``validate_data`` task waits for (tunegate.operations.validation_ahead).
    """
    import argparse
    import json

    from tunegate.params import load_params
    from tunegate.paths import configure_environment

    parser = argparse.ArgumentParser(description="tunegate preflight")
    parser.add_argument("params")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--as", dest="shown_as", default=None, help="the params file as the user named it (in messages)")
    parser.add_argument("--validate-into", default=None,
                        help="once passed, validate the data ahead into this directory (tunegate.operations.validation_ahead)")
    args = parser.parse_args(argv)
    busy = None
    if args.validate_into:  # held until this process ends, however it ends
        from tunegate.operations.validation_ahead import hold

        busy = hold(Path(args.validate_into))
    configure_environment()
    params = load_params(Path(args.params), args.overrides)
    problems = run_preflight(params, params_file=args.shown_as or args.params)
    print(json.dumps([{"check": p.check, "message": p.message} for p in problems]), flush=True)
    if args.validate_into and not problems:  # the verdict is out; the run goes on while this validates
        from tunegate.operations import validation_ahead

        validation_ahead.compute(params, Path(args.validate_into))
    del busy


if __name__ == "__main__":
    main()
