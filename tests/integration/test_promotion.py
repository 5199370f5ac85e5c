"""Promotion on a real MLflow registry: separation of duties, allow-list, roles, reject, rollback,
compare-and-set, racing approvals, alias history, signed approvals, and a tamper-evident audit table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tunegate.adapters import mlflow as tracking
from tunegate.governance import audit, identity, lineage, promotion
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
    promotion.register_candidate(name, str(mv.version), run_id)
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
    return [e for e in audit.store().entries(model=name) if e["event"] == kind]


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


def _two_champions(tmp_path, monkeypatch, approvers=(("alice", "first"), ("alice", "second"))) -> tuple[str, str, str]:
    """A fresh home whose model had two champions in turn: (name, v1, v2)."""
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    name = new_model()
    v1 = candidate(name)
    promotion.approve(name, v1, *approvers[0], ANYONE)
    v2 = candidate(name, baseline_version=v1)
    promotion.approve(name, v2, *approvers[1], ANYONE)
    return name, v1, v2


def _tamper_home(tmp_path, monkeypatch):
    name, _, _ = _two_champions(tmp_path, monkeypatch)
    return name, tmp_path / "home" / "mlflow" / "mlflow.db"


def _sql(db: Path, statement: str, *args) -> None:
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute(statement, args)


def _body(db: Path, seq: int) -> dict:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return json.loads(conn.execute("SELECT body FROM tunegate_audit_events WHERE seq = ?", (seq,)).fetchone()[0])


def test_untouched_table_verifies(tmp_path, monkeypatch):
    name, db = _tamper_home(tmp_path, monkeypatch)
    ok, message = promotion.verify(name)
    assert ok, message
    assert not (tmp_path / "home" / "audit" / "events.jsonl").exists()  # the trail is the table, not a file


def test_edited_row_is_named(tmp_path, monkeypatch):
    name, db = _tamper_home(tmp_path, monkeypatch)
    approval = next(e for e in audit.store().entries() if e["event"] == "approval")
    body = _body(db, approval["seq"])
    body["data"]["reviewer"] = "mallory"
    _sql(db, "UPDATE tunegate_audit_events SET body = ? WHERE seq = ?", json.dumps(body), approval["seq"])
    ok, message = promotion.verify(name)
    assert not ok and message.startswith(f"entry {approval['seq']}:"), message


def test_deleted_last_rows_are_caught_by_the_registry_head(tmp_path, monkeypatch):
    name, db = _tamper_home(tmp_path, monkeypatch)
    n = len(audit.store().entries())
    _sql(db, "DELETE FROM tunegate_audit_events WHERE seq >= ?", n - 2)
    assert audit.store().verify()[0], "a truncated chain is still a valid chain..."
    ok, message = promotion.verify(name)
    assert not ok and f"entry {n - 2}" in message and "truncated" in message, message


def test_reordered_rows_are_named(tmp_path, monkeypatch):
    name, db = _tamper_home(tmp_path, monkeypatch)
    # Give rows 1 and 2 each other's seq (through a free key, as an editor of the table would).
    _sql(db, "UPDATE tunegate_audit_events SET seq = -1 WHERE seq = 1")
    _sql(db, "UPDATE tunegate_audit_events SET seq = 1 WHERE seq = 2")
    _sql(db, "UPDATE tunegate_audit_events SET seq = 2 WHERE seq = -1")
    ok, message = promotion.verify(name)
    assert not ok and message.startswith("entry 1:"), message


def test_deleted_row_in_the_middle_is_named(tmp_path, monkeypatch):
    name, db = _tamper_home(tmp_path, monkeypatch)
    _sql(db, "DELETE FROM tunegate_audit_events WHERE seq = 3")
    ok, message = promotion.verify(name)
    assert not ok and message.startswith("entry 3:"), message


def _params_for(tmp_path, name: str, extra: str = "") -> Path:
    params = tmp_path / "p.yaml"
    raw = (REPO / "params" / "demo.yaml").read_text().replace("registered_name: tunegate-demo-assistant", f"registered_name: {name}")
    params.write_text(raw + extra)
    return params


def test_audit_cli_verify_export_and_log(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunegate.cli import app

    name, db = _tamper_home(tmp_path, monkeypatch)
    params = _params_for(tmp_path, name)
    assert CliRunner().invoke(app, ["audit", "verify", "--params", str(params)]).exit_code == 0
    out = tmp_path / "export.jsonl"
    exported = CliRunner().invoke(app, ["audit", "export", "--out", str(out), "--params", str(params)])
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == audit.store().entries() and audit.verify_chain(lines)[0]
    listing = CliRunner().invoke(app, ["audit", "log", "--json", "--params", str(params)])
    assert listing.exit_code == 0 and len(listing.output.strip().splitlines()) == len(lines)

    body = _body(db, 0)
    body["actor"] = "someone-else"
    _sql(db, "UPDATE tunegate_audit_events SET body = ? WHERE seq = 0", json.dumps(body))
    result = CliRunner().invoke(app, ["audit", "verify", "--params", str(params)])
    assert result.exit_code == 1 and "entry 0" in result.output


def test_history_lists_every_alias_move_with_actor_time_and_reason(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunegate.cli import app

    name, v1, v2 = _two_champions(tmp_path, monkeypatch, (("alice", "first release"), ("bob", "second release")))
    promotion.rollback(name, "carol", "incident 42")
    rows = lineage.alias_history(name)
    assert [(r["event"], r["version"], r["actor"], r["reason"]) for r in rows] == [
        ("registered", v1, identity.environment_user(), "passed the gate"),
        ("alias_moved", v1, "alice", "first release"),
        ("registered", v2, identity.environment_user(), "passed the gate"),
        ("alias_moved", v2, "bob", "second release"),
        ("rollback", v1, "carol", "incident 42"),
    ]
    assert all(r["time"] and r["authenticated"] is False for r in rows)
    champion = lineage.alias_history(name, "champion")
    assert [(m["from"], m["to"]) for r in champion for m in r["moves"]] == [(None, v1), (v1, v2), (v2, v1)]

    params = _params_for(tmp_path, name)
    out = CliRunner().invoke(app, ["history", "--alias", "champion", "--params", str(params)])
    assert out.exit_code == 0, out.output
    text = out.output
    assert "3 move(s)" in text and "champion 2 -> 1" in text and "by carol (not authenticated)" in text and "incident 42" in text
    as_json = json.loads(CliRunner().invoke(app, ["history", "--json", "--params", str(params)]).output)
    assert len(as_json) == 5


def test_jsonl_trail_of_an_earlier_version_is_imported_on_first_use(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TUNEGATE_HOME", str(home))
    log = home / "audit" / "events.jsonl"
    log.parent.mkdir(parents=True)
    prev, lines = audit.GENESIS, []
    for i, event in enumerate(("run_started", "gate_decision")):
        entry = {"seq": i, "time": f"2026-06-0{i + 1}T00:00:00+00:00", "event": event, "actor": "old", "commit": "c", "data": {"i": i}, "prev": prev}
        entry["hash"] = audit.entry_hash(entry)
        prev = entry["hash"]
        lines.append(json.dumps(entry))
    log.write_text("\n".join(lines) + "\n")
    name = new_model()
    candidate(name)  # the first event recorded imports the file
    entries = audit.store().entries()
    assert [e["event"] for e in entries[:4]] == ["run_started", "gate_decision", "audit_trail_imported", "registered"]
    assert entries[1]["hash"] == json.loads(lines[1])["hash"]
    assert not log.exists() and log.with_name("events.jsonl.imported").exists()
    assert promotion.verify(name)[0]


def _keys(tmp_path, *names):
    from tunegate.governance import signing

    return {who: (tmp_path / f"{who}.pem", signing.generate(tmp_path / f"{who}.pem")) for who in names}


def test_signed_approvals_verify_and_unsigned_ones_fail_verification(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    keys = _keys(tmp_path, "alice", "bob")
    policy = ApprovalPolicy(require_signatures=True, public_keys={who: pub for who, (_, pub) in keys.items()})
    name = new_model()
    v1 = candidate(name)
    # Without a key, or with someone else's, the approval is refused and audited.
    with pytest.raises(promotion.PromotionError, match="--key"):
        promotion.approve(name, v1, "alice", "first", policy)
    with pytest.raises(promotion.PromotionError, match="not 'alice'"):
        promotion.approve(name, v1, "alice", "first", policy, signing_key=keys["bob"][0])
    assert len(events(name, "approval_refused")) == 2
    assert promotion.approve(name, v1, "alice", "first", policy, signing_key=keys["alice"][0]).action == "promoted"
    ok, message = promotion.verify(name, policy)
    assert ok and "1 signed approval(s) verified" in message, message

    # An approval written without a valid signature (as a database administrator could) fails verification.
    v2 = candidate(name, baseline_version=v1)
    assert promotion.approve(name, v2, "bob", "second", ApprovalPolicy()).action == "promoted"  # a policy without signatures
    ok, message = promotion.verify(name, policy)
    approval = events(name, "approval")[-1]
    assert not ok and f"entry {approval['seq']}:" in message and "no signature" in message, message
    assert "rests on approvals without a valid signature (bob)" in message


def test_a_forged_signature_fails_verification(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    keys = _keys(tmp_path, "alice")
    policy = ApprovalPolicy(require_signatures=True, public_keys={"alice": keys["alice"][1]})
    name = new_model()
    v1 = candidate(name)
    promotion.approve(name, v1, "alice", "first", policy, signing_key=keys["alice"][0])
    db = tmp_path / "home" / "mlflow" / "mlflow.db"
    approval = events(name, "approval")[-1]
    # Change the reason and re-hash the entry and its successors, as someone who can write the table
    # (and the registry head) could: the chain verifies, the signature does not.
    entries = audit.store().entries()
    entries[approval["seq"]]["data"]["reason"] = "forged"
    prev = entries[approval["seq"]]["prev"]
    for entry in entries[approval["seq"]:]:
        entry["prev"] = prev
        entry["hash"] = audit.entry_hash(entry)
        prev = entry["hash"]
    for entry in reversed(entries[approval["seq"]:]):
        _sql(db, "UPDATE tunegate_audit_events SET hash = ?, prev = ?, body = ? WHERE seq = ?",
             entry["hash"] + "~", entry["prev"] + "~", audit.canonical(entry), entry["seq"])
    _sql(db, "UPDATE tunegate_audit_events SET hash = substr(hash, 1, 64), prev = substr(prev, 1, 64)")
    tracking.client().set_registered_model_tag(name, tracking.AUDIT_HEAD_TAG, f"{entries[-1]['seq']}:{entries[-1]['hash']}")
    assert audit.store().verify()[0]
    ok, message = promotion.verify(name, policy)
    assert not ok and f"entry {approval['seq']}:" in message and "does not verify" in message, message


def test_require_authentication_refuses_the_embedded_store(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    name = new_model()
    v1 = candidate(name)
    with pytest.raises(promotion.PromotionError, match="authenticated reviewer"):
        promotion.approve(name, v1, "alice", "first", ApprovalPolicy(require_authentication=True))
    refused = events(name, "approval_refused")[-1]
    assert refused["authenticated"] is False and refused["data"]["reviewer"] == "alice"
    assert tracking.alias_version(name, "champion") is None


RECORDER = """
import sys
from tunegate.governance import trail  # publishes each head to the registry's tag
for i in range(int(sys.argv[2])):
    trail.record("event", {"writer": sys.argv[3], "i": i}, model_name=sys.argv[1])
"""


def test_concurrent_writers_leave_the_registry_head_on_the_last_entry(tunegate_home):
    """Processes recording for one model at once: the head the registry keeps is the trail's last entry
    (heads are written under a lock in seq order), so deleting that entry would still show."""
    name = new_model()
    candidate(name)
    env = {**os.environ, "TUNEGATE_HOME": str(tunegate_home)}
    procs = [subprocess.Popen([sys.executable, "-c", RECORDER, name, "8", w], cwd=REPO, env=env) for w in "abc"]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    last = audit.store().entries(model=name)[-1]
    head = tracking.client().get_registered_model(name).tags[tracking.AUDIT_HEAD_TAG]
    assert head == f"{last['seq']}:{last['hash']}"
    assert sum(1 for e in audit.store().entries(model=name) if e["event"] == "event") == 24
    assert promotion.verify(name)[0]


# --- aliases moved outside tunegate (issue #15) ------------------------------------------------------

def _cli(tunegate_home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNEGATE_HOME": str(tunegate_home), "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "tunegate.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def drifted(tmp_path):
    """Version 1 approved through tunegate; version 2 made champion with the MLflow client (the UI's alias pencil)."""
    name = new_model()
    v1 = candidate(name)
    promotion.approve(name, v1, "alice", "first release", ANYONE)
    v2 = candidate(name, baseline_version=v1)
    assert promotion.verify(name)[0] and lineage.alias_drift(name) == []
    tracking.client().set_registered_model_alias(name, "champion", v2)
    return name, v1, v2, _params_for(tmp_path, name)


def test_an_alias_set_with_the_mlflow_client_breaks_audit_verify(drifted, tunegate_home):
    name, v1, v2, params = drifted
    [drift] = lineage.alias_drift(name)
    assert (drift.alias, drift.registry, drift.audited) == ("champion", v2, v1)
    said = f"alias champion -> version {v2} was not set by tunegate (last audited move: champion -> version {v1}, alias_moved by alice at "
    assert drift.message().startswith(said)
    ok, message = promotion.verify(name)
    assert not ok and said in message
    result = _cli(tunegate_home, "audit", "verify", "--params", str(params))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "audit check failed: " + said in " ".join((result.stdout + result.stderr).split())
    # Removing tunegate's candidate alias behind its back is drift too; moving champion back heals that part.
    tracking.client().set_registered_model_alias(name, "champion", v1)
    tracking.client().delete_registered_model_alias(name, "candidate")
    [gone] = lineage.alias_drift(name)
    assert gone.message().startswith(f"alias candidate -> no version (removed) was not set by tunegate (last audited move: candidate -> version {v2}, registered by ")
    tracking.client().set_registered_model_alias(name, "candidate", v2)
    assert lineage.alias_drift(name) == [] and promotion.verify(name)[0]


def test_status_and_lineage_warn_about_the_outside_move(drifted, tunegate_home):
    from tunegate.governance.lineage import build_lineage, render_lineage
    from tunegate.operations.status import collect_status
    from tunegate.params import load_params

    name, v1, v2, params = drifted
    said = f"alias champion -> version {v2} was not set by tunegate"
    status = collect_status(load_params(params))
    assert status["champion"]["version"] == v2 and [d["alias"] for d in status["alias_drift"]] == ["champion"]
    assert status["alias_drift"][0]["message"].startswith(said)
    text = _cli(tunegate_home, "status", "--params", str(params))
    assert text.returncode == 0, text.stderr[-3000:]
    assert "warning: " + said in " ".join(text.stdout.split())
    for version in (v1, v2):  # the version it points at now, and the one the trail says it should
        chain = build_lineage(name, version)
        assert chain["alias_drift"] and chain["alias_drift"][0].startswith(said), chain["alias_drift"]
        assert f"WARNING: {said}" in render_lineage(chain)
    shown = _cli(tunegate_home, "lineage", v2, "--params", str(params))
    assert shown.returncode == 0 and f"WARNING: {said}" in " ".join(shown.stdout.split()), shown.stdout + shown.stderr


def test_a_run_refuses_an_unaudited_champion_unless_accepted_which_is_audited(drifted, prefect_harness):
    from flows.retrain import retrain

    name, v1, v2, params = drifted
    before = len(tracking.client().search_model_versions(f"name='{name}'"))
    with pytest.raises(promotion.UnauditedChampion, match=f"alias champion -> version {v2} was not set by tunegate") as refused:
        retrain(params_file=str(params), overrides=[])
    assert f"Set it back to version {v1}" in str(refused.value) and "--accept-unaudited-champion" in str(refused.value)
    [run] = tracking.recent_runs(load_project(params), limit=1)
    assert run.info.status == "FAILED" and "not used as the baseline" in run.data.tags["tunegate.failure"]
    assert not [k for k in run.data.metrics if k.startswith("train_") or k.startswith("candidate_")]  # nothing trained
    assert len(tracking.client().search_model_versions(f"name='{name}'")) == before
    assert run.info.run_id in events(name, "run_failed")[-1]["data"]["mlflow_run_ids"]

    # --accept-unaudited-champion: the run goes on against it, and the trail says who accepted which move.
    accepted = promotion.check_champion_audited(name, "run-x", accept=True)
    assert (accepted.alias, accepted.registry) == ("champion", v2)
    entry = events(name, "unaudited_champion_accepted")[-1]
    assert entry["data"]["run_id"] == "run-x" and entry["data"]["registry"] == v2 and entry["data"]["audited"] == v1
    assert entry["actor"]
    assert not promotion.verify(name)[0]  # accepting it for a run does not make the move audited


def load_project(params: Path) -> str:
    from tunegate.params import load_params

    return load_params(params).project.name
