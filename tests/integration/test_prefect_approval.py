"""The Prefect pause path: the flow waits for a RunInput review; resume_flow_run answers it, and the
same promotion logic and audit entries as `tunegate approve` follow."""

import threading
import time
import uuid
from pathlib import Path

import pytest

from tunegate.adapters import mlflow as tracking
from tunegate.governance import audit, promotion

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_review_form_promotes_like_the_cli(prefect_harness, base_model_path):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.flow_runs import resume_flow_run

    from flows.retrain import retrain

    name = f"paused-{uuid.uuid4().hex[:6]}"
    overrides = [f"model.registered_name={name}", "train.max_steps=5", "gate.min_improvement=-1", "gate.min_improvement_over_base=null",
                 "gate.max_family_regression=1", "gate.rules=[]", "eval.ifeval.enabled=false", "eval.safety.enabled=false", "eval.capability.enabled=false", "eval.judge.enabled=false", "gate.capability_may_not_drop=null", "gate.min_win_rate=null"]
    result = {}

    def run():
        result["summary"] = retrain(params_file=str(REPO / "params" / "demo.yaml"), overrides=overrides, wait_for_approval=True)

    thread = threading.Thread(target=run)
    thread.start()
    paused = None
    deadline = time.time() + 300
    with get_client(sync_client=True) as client:
        while paused is None and time.time() < deadline and thread.is_alive():
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
                sort=FlowRunSort.START_TIME_DESC, limit=5,
            )
            paused = runs[0] if runs else None
            time.sleep(0.5)
    assert paused is not None, "the flow never paused for review"
    version = tracking.alias_version(name, "candidate").version
    assert tracking.alias_version(name, "champion") is None  # nothing moves before the review

    resume_flow_run(paused.id, run_input={"approve": True, "reviewer": "alice", "reason": "reviewed in Prefect"})
    thread.join(timeout=300)
    summary = result["summary"]
    assert summary["review"]["action"] == "promoted"
    assert tracking.alias_version(name, "champion").version == version
    entries = audit.store().entries(model=name)
    kinds = [e["event"] for e in entries]
    assert kinds[-2:] == ["approval", "alias_moved"]  # the same entries `tunegate approve` writes
    assert entries[-2]["actor"] == "alice" and entries[-2]["data"]["reason"] == "reviewed in Prefect"
    assert promotion.verify(name)[0]
