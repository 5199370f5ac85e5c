"""The slots a run holds: its project's run slot (one queue per registered model) and a machine compute slot.

Context managers the flow and the tasks wrap their work in; the logic is ``tunegate.operations.runqueue``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from prefect import get_run_logger
from prefect.runtime import flow_run

from tasks.common import RunContext
from tunegate import tags
from tunegate.adapters import mlflow as tracking
from tunegate.operations import runqueue
from tunegate.params import Params
from tunegate.paths import tunegate_home


def _holders_in_mlflow(params: Params, own_run_id: str) -> list[runqueue.SlotHolder]:
    """Runs of this model that hold the slot now, as MLflow knows them (the Prefect limit has no holder listing)."""
    try:
        runs = tracking.find_runs_by_tag(params.project.name, runqueue.QUEUE_TAG, "holding")
    except Exception:  # the tracking server not answering: the wait goes on without names
        return []
    holders: list[runqueue.SlotHolder] = []
    for run in runs:
        run_tags = run.data.tags
        if run.info.run_id == own_run_id or run.info.status != "RUNNING" or run_tags.get(tags.MODEL_NAME) != params.model.registered_name:
            continue
        holders.append({
            "run_id": run.info.run_id, "trigger": run_tags.get(tags.TRIGGER), "initiator": run_tags.get(tags.INITIATOR),
            "since": run_tags.get(tags.QUEUE_SINCE), "host": run_tags.get(tags.HOST), "pid": run_tags.get(tags.PID),
        })
    return holders


@contextlib.contextmanager
def run_slot(params: Params, ctx: RunContext) -> Iterator[None]:
    """Hold the project's run slot from data preparation to registration; wait for it when another run has it."""
    logger = get_run_logger()
    name = runqueue.limit_name(params.model.registered_name)
    info = runqueue.holder_info(run_id=ctx.run_id, trigger=ctx.trigger, initiator=ctx.initiator, flow_run_id=str(flow_run.get_id() or ""))
    waited_behind: list[str] = []

    def on_wait(holders: list[runqueue.SlotHolder], waited: float) -> None:
        described = "; ".join(runqueue.describe_holder(h) for h in holders) or "another run"
        waited_behind.extend(h["run_id"] for h in holders if h.get("run_id") and h["run_id"] not in waited_behind)
        logger.info("waiting for the run slot of %s (%.0f s so far): held by %s", params.model.registered_name, waited, described)
        tracking.set_tags(ctx.run_id, {runqueue.QUEUE_TAG: "waiting", tags.QUEUED_BEHIND: ",".join(waited_behind)})

    timeout = params.runs.queue_timeout_s
    if os.environ.get("PREFECT_API_URL"):
        manager = runqueue.prefect_slot(
            name, params.runs.project_slots, info["flow_run_id"] or None, timeout_s=timeout,
            holders=lambda: _holders_in_mlflow(params, ctx.run_id), on_wait=on_wait,
        )
    elif runqueue.held_here(tunegate_home() / "queue", name):
        # `tunegate run` took the slot when it started (runs queue in the order they were started): name the run.
        runqueue.update_holder(tunegate_home() / "queue", name, **{k: v for k, v in info.items() if k != "since"})
        manager = contextlib.nullcontext(0.0)
    else:
        manager = runqueue.file_slot(tunegate_home() / "queue", name, params.runs.project_slots, info, timeout_s=timeout, on_wait=on_wait)
    try:
        with manager as waited:
            tracking.set_tags(ctx.run_id, {
                runqueue.QUEUE_TAG: "holding", tags.QUEUE_SINCE: runqueue.holder_info()["since"],
                tags.QUEUE_WAITED_S: f"{waited:.1f}",
            })
            if waited_behind:
                logger.info("got the run slot of %s after waiting %.0f s for run(s) %s", params.model.registered_name, waited, ", ".join(waited_behind))
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    tracking.set_tags(ctx.run_id, {runqueue.QUEUE_TAG: "released"})
    except runqueue.QueueTimeout:
        with contextlib.suppress(Exception):
            tracking.set_tags(ctx.run_id, {runqueue.QUEUE_TAG: "gave_up"})
        raise


@contextlib.contextmanager
def compute_slot(params: Params, ctx: RunContext, what: str) -> Iterator[float]:
    """Hold one of the machine's compute slots while training or evaluating; yields the seconds waited."""
    logger = get_run_logger()
    slots = runqueue.machine_slots(params.runs.machine_slots)
    info = runqueue.holder_info(run_id=ctx.run_id, trigger=ctx.trigger, model=params.model.registered_name, what=what)

    def on_wait(holders: list[runqueue.SlotHolder], waited: float) -> None:
        described = "; ".join(f"{h.get('model', '?')} {h.get('what', '')} ({runqueue.describe_holder(h)})" for h in holders) or "other runs"
        logger.info("%s waits for one of this machine's %d compute slot(s) (%.0f s so far): held by %s", what, slots, waited, described)

    with runqueue.file_slot(runqueue.machine_dir(), "compute", slots, info, timeout_s=params.runs.queue_timeout_s, on_wait=on_wait) as waited:
        yield waited
