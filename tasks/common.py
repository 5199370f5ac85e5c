"""Small values passed between tasks, and what every task shares (retries, timing)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def timed(stage: str) -> Callable[[F], F]:
    """Add the function's seconds to the run's stage timings (``tunegate.operations.timings``); ``stage`` may name
    arguments, e.g. ``"evaluation_{role}"``. Goes under ``@task`` so a retried attempt counts too."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from tunegate.operations import timings

            name = stage.format(**signature.bind_partial(*args, **kwargs).arguments) if "{" in stage else stage
            with timings.stage(name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry only failures another attempt can fix (server or registry down)."""
    from tunegate.adapters.mlflow import is_transient

    try:
        state.result()
    except Exception as error:  # the task's exception, re-raised by result()
        return is_transient(error)
    return False


# Tasks that talk to MLflow retry transient failures: 3 more attempts, 2 s, 5 s and 15 s apart
# (MLflow's own HTTP client retries each request first; see tunegate.paths.TELEMETRY_OFF).
RETRY_TRANSIENT: dict[str, Any] = {"retries": 3, "retry_delay_seconds": [2, 5, 15], "retry_condition_fn": transient}


@dataclass(frozen=True)
class RunContext:
    run_id: str
    commit: str
    work_dir: str
    code: str = ""  # commit, plus a hash of the diff when the tree was dirty
    trigger: str = "manual"
    initiator: str = ""


@dataclass(frozen=True)
class DataRef:
    train_path: str
    eval_path: str
    data_md5: str
    n_train: int
    n_eval: int
    canonical_md5: str = ""
    eval_md5: str = ""
    sources: dict[str, str] = field(default_factory=dict)  # source name -> md5 of its file


@dataclass(frozen=True)
class BaselineRef:
    source: str  # "champion" | "base_model"
    version: str | None
    model_dir: str | None  # None: the base model itself
