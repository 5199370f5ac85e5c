"""Promotion on a real MLflow registry: separation of duties, allow-list, roles, reject, rollback,
compare-and-set, racing approvals, and a tamper-evident audit trail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tunegate import audit, promotion, tracking
from tunegate.params import ApprovalPolicy

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ANYONE = ApprovalPolicy()
TWO_ROLES = ApprovalPolicy(
    required=[{"role": "ml", "count": 1}, {"role": "policy", "count": 1}],
    reviewers={"alice": ["ml"], "bob": ["policy"], "carol": ["ml", "policy"]},
)


def new_model() -> str:
    return f"promo-{uuid.uuid4().hex[:8]}"


def candidate(name: str, initiator: str = "ivan", baseline_version: str = "", run_status: str | None = "FINISHED") -> str:
    """A registered version that passed the gate (made directly on the registry), now alias candidate."""
    run_id = tracking.start_run("promotion-tests", "r", {"tunegate.initiator": initiator})
    if run_status:
        tracking.end_run(run_id, run_status)
    client = tracking.client()
    try:
        client.create_registered_model(name)
    except Exception:
        pass
    mv = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id, tags={
        "tunegate.gate": "passed", "tunegate.initiator": initiator, "tunegate.baseline_version": baseline_version,
    })
    tracking.set_alias(name, tracking.CANDIDATE, str(mv.version))
    return str(mv.version)


def test_a_version_whose_run_did_not_finish_is_never_promoted():
    # A run that registered its candidate and then lost its tracking server stays RUNNING (or is marked FAILED).
    for status, said in ((None, "RUNNING"), ("FAILED", "FAILED")):
        name = new_model()
        v = candidate(name, run_status=status)
        with pytest.raises(promotion.PromotionError, match=f"ended {said}, not FINISHED"):
            promotion.approve(name, v, "alice", "looks good", ANYONE)
        assert tracking.alias_version(name, "champion") is None
        assert events(name, "approval_refused")[-1]["data"]["why"].endswith("not FINISHED")


def events(name: str, kind: str) -> list[dict]:
    return [e for e in audit.read_entries(promotion.audit_log()) if e["event"] == kind and e["data"].get("model") == name]


def test_self_approval_is_refused_and_audited():
    name = new_model()
    v = candidate(name, initiator="ivan")
    with pytest.raises(promotion.PromotionError, match="separation of duties"):
        promotion.approve(name, v, "ivan", "looks good", ANYONE)
    assert tracking.alias_version(name, "champion") is None
    assert events(name, "approval_refused")[-1]["data"]["reviewer"] == "ivan"
    allowed = ApprovalPolicy(allow_self_approval=True)
    assert promotion.approve(name, v, "ivan", "policy allows it", allowed).action == "promoted"


def test_reviewer_not_on_allow_list_is_refused():
    name = new_model()
    v = candidate(name)
    with pytest.raises(promotion.PromotionError, match="allow-list"):
        promotion.approve(name, v, "mallory", "ship it", TWO_ROLES)
    assert events(name, "approval_refused")[-1]["data"]["reviewer"] == "mallory"
    assert tracking.alias_version(name, "candidate").version == v


def test_roles_ml_and_policy_are_both_needed():
    name = new_model()
    v = candidate(name)
    first = promotion.approve(name, v, "alice", "metrics fine", TWO_ROLES)
    assert first.action == "approval_recorded" and "policy" in first.message
    assert tracking.alias_version(name, "champion") is None
    second = promotion.approve(name, v, "bob", "safety fine", TWO_ROLES)
    assert second.action == "promoted" and tracking.alias_version(name, "champion").version == v
    moved = events(name, "alias_moved")[-1]["data"]
    assert moved["champion"] == v and moved["approvers"] == ["alice", "bob"]


def test_reject_keeps_the_champion_and_the_rejected_never_becomes_champion():
    name = new_model()
    v1 = candidate(name)
    promotion.approve(name, v1, "alice", "first", ANYONE)
    v2 = candidate(name, baseline_version=v1)
    out = promotion.reject(name, v2, "bob", "over-refuses")
    assert out.champion == v1 and tracking.alias_version(name, "champion").version == v1
    assert tracking.alias_version(name, "candidate") is None
    with pytest.raises(promotion.PromotionError, match="rejected|not the current candidate"):
        promotion.approve(name, v2, "carol", "try anyway", ANYONE)
    assert events(name, "rejected")[-1]["data"]["reason"] == "over-refuses"


def test_rollback_restores_the_previous_champion():
    name = new_model()
    v1 = candidate(name)
    promotion.approve(name, v1, "alice", "first", ANYONE)
    v2 = candidate(name, baseline_version=v1)
    promotion.approve(name, v2, "alice", "second", ANYONE)
    assert tracking.alias_version(name, "previous").version == v1
    out = promotion.rollback(name, "bob", "incident 42")
    assert out.action == "rolled_back" and tracking.alias_version(name, "champion").version == v1
    assert events(name, "rollback")[-1]["data"] == {**events(name, "rollback")[-1]["data"], "from": v2, "to": v1}
    with pytest.raises(promotion.PromotionError, match="no previous"):
        promotion.rollback(name, "bob", "again")


def test_compare_and_set_refuses_a_candidate_evaluated_against_an_old_champion():
    name = new_model()
    v1 = candidate(name)
    stale = candidate(name, baseline_version="")  # evaluated against "no champion"
    tracking.set_alias(name, "candidate", v1)
    promotion.approve(name, v1, "alice", "first", ANYONE)
    tracking.set_alias(name, "candidate", stale)
    with pytest.raises(promotion.PromotionError, match="re-evaluate"):
        promotion.approve(name, stale, "alice", "late", ANYONE)
    assert tracking.alias_version(name, "champion").version == v1


def test_racing_approvals_leave_one_champion_and_a_consistent_log(tunegate_home, tmp_path):
    """Two processes approve at the same moment: the same candidate twice, and a superseded one."""
    name = new_model()
    v1 = candidate(name)
    promotion.approve(name, v1, "alice", "first", ANYONE)
    v2 = candidate(name, baseline_version=v1)
    v3 = candidate(name, baseline_version=v1)  # supersedes v2
    params = tmp_path / "params.yaml"
    raw = (REPO / "params" / "demo.yaml").read_text().replace("registered_name: tunegate-demo-assistant", f"registered_name: {name}")
    params.write_text(raw)
    env = {**os.environ, "TUNEGATE_HOME": str(tunegate_home)}
    approvals = [(v3, "alice"), (v3, "bob"), (v2, "carol")]
    procs = [
        subprocess.Popen([sys.executable, "-m", "tunegate.cli", "approve", v, "--reviewer", who, "--reason", "race", "--params", str(params)],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for v, who in approvals
    ]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert sorted(r[2] for r in results) == [0, 1, 1], results
    assert tracking.alias_version(name, "champion").version == v3
    assert tracking.alias_version(name, "previous").version == v1
    assert len(events(name, "alias_moved")) == 2  # v1 earlier, v3 now: exactly one promotion in the race
    assert promotion.verify(name)[0]


def _tamper_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    name = new_model()
    v1 = candidate(name)
    promotion.approve(name, v1, "alice", "first", ANYONE)
    v2 = candidate(name, baseline_version=v1)
    promotion.approve(name, v2, "alice", "second", ANYONE)
    return name, promotion.audit_log()


def _rewrite(log: Path, entries: list[dict]) -> None:
    log.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def test_untouched_log_verifies(tmp_path, monkeypatch):
    name, log = _tamper_home(tmp_path, monkeypatch)
    ok, message = promotion.verify(name)
    assert ok, message


def test_edited_entry_is_named(tmp_path, monkeypatch):
    name, log = _tamper_home(tmp_path, monkeypatch)
    entries = audit.read_entries(log)
    entries[2]["data"]["reviewer"] = "mallory"
    _rewrite(log, entries)
    ok, message = promotion.verify(name)
    assert not ok and message.startswith("entry 2:")


def test_deleted_last_entry_is_detected(tmp_path, monkeypatch):
    name, log = _tamper_home(tmp_path, monkeypatch)
    entries = audit.read_entries(log)
    _rewrite(log, entries[:-1])
    assert audit.verify_chain(audit.read_entries(log))[0], "a truncated chain is still a valid chain..."
    ok, message = promotion.verify(name)
    assert not ok and f"entry {len(entries) - 1}" in message and "truncated" in message


def test_swapped_entries_are_named(tmp_path, monkeypatch):
    name, log = _tamper_home(tmp_path, monkeypatch)
    entries = audit.read_entries(log)
    entries[1], entries[2] = entries[2], entries[1]
    _rewrite(log, entries)
    ok, message = promotion.verify(name)
    assert not ok and message.startswith("entry 1:")


def test_audit_cli_verify_exit_codes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunegate.cli import app

    name, log = _tamper_home(tmp_path, monkeypatch)
    params = tmp_path / "p.yaml"
    params.write_text((REPO / "params" / "demo.yaml").read_text().replace("registered_name: tunegate-demo-assistant", f"registered_name: {name}"))
    assert CliRunner().invoke(app, ["audit", "verify", "--params", str(params)]).exit_code == 0
    entries = audit.read_entries(log)
    entries[0]["actor"] = "someone-else"
    _rewrite(log, entries)
    result = CliRunner().invoke(app, ["audit", "verify", "--params", str(params)])
    assert result.exit_code == 1 and "entry 0" in result.output
    listing = CliRunner().invoke(app, ["audit", "log", "--json"])
    assert listing.exit_code == 0 and len(listing.output.strip().splitlines()) == len(entries)
