"""Seconds per stage of one run, measured where the work happens and shown once everywhere.

The tasks of a flow run execute in the flow's process, so the stages add up in this module;
``finish_run`` puts them into the summary (``timings``) and MLflow (``timing_<stage>_s``), and
``tunegate run`` adds the Prefect server's start (handed to the flow in its launch value, given to
:func:`reset` by the first task) and the total wall time it alone can see.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

# Order of the summary's `timings`; stages not run (e.g. no tuning on "nothing to do") are absent.
STAGES = (
    "server_start", "params", "queue_wait", "data", "validation", "tuning", "compute_wait",
    "evaluation_baseline", "evaluation_candidate", "compare", "gate", "report", "register", "finish", "total_wall",
)

_seconds: dict[str, float] = {}


def reset(before: dict[str, float] | None = None) -> None:
    """A flow run begins: forget the last run's stages (a served process runs many); ``before``: stages
    measured before the flow run (``tunegate run``'s server start), which join this one."""
    _seconds.clear()
    _seconds.update({stage: float(seconds) for stage, seconds in (before or {}).items()})


def add(stage: str, seconds: float) -> None:
    _seconds[stage] = _seconds.get(stage, 0.0) + float(seconds)


def waited(stage: str, seconds: float) -> None:
    """``stage`` spent ``seconds`` waiting for a machine slot: they count as ``compute_wait``, not as the stage."""
    add("compute_wait", seconds)
    add(stage, -seconds)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as ``name`` (added up when a stage runs more than once, e.g. a retried task)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - start)


def snapshot() -> dict[str, float]:
    """The stages so far, in pipeline order, rounded to 0.01 s."""
    ordered = [s for s in STAGES if s in _seconds] + sorted(set(_seconds) - set(STAGES))
    return {s: round(_seconds[s], 2) for s in ordered}


def as_metrics(timings: dict[str, float]) -> dict[str, float]:
    return {f"timing_{name}_s": value for name, value in timings.items()}
