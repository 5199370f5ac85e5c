"""The audit table on SQLite: chain, tampering named by entry, concurrent writers, one import of a JSONL trail,
and the promotion lock across processes."""

import json
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from tunegate.governance.audit import GENESIS, AuditStore, entry_hash, verify_chain


def _store(tmp_path, n=3):
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    for i in range(n):
        store.append("event", {"i": i, "model": "m"}, actor="tester", commit="abc")
    return store


def _sql(tmp_path, statement, *args):
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        conn.execute(statement, args)


def test_chain_verifies_and_links(tmp_path):
    store = _store(tmp_path)
    ok, message, entries = store.verify()
    assert ok, message
    assert [e["seq"] for e in entries] == [0, 1, 2] and entries[0]["prev"] == GENESIS
    assert entries[2]["prev"] == entries[1]["hash"] and entry_hash(entries[2]) == entries[2]["hash"]
    assert entries[0]["actor"] == "tester" and entries[0]["authenticated"] is False and entries[0]["host"]
    assert [e["data"]["i"] for e in store.entries(model="m")] == [0, 1, 2]


def test_edited_row_is_named(tmp_path):
    store = _store(tmp_path)
    body = json.loads(store.rows()[1]["body"])
    body["data"]["i"] = 99
    _sql(tmp_path, "UPDATE tunegate_audit_events SET body = ? WHERE seq = 1", json.dumps(body))
    ok, message, _ = store.verify()
    assert not ok and message.startswith("entry 1:") and "hash" in message


def test_edited_column_is_named(tmp_path):
    store = _store(tmp_path)
    _sql(tmp_path, "UPDATE tunegate_audit_events SET event = 'approval' WHERE seq = 2")
    ok, message, _ = store.verify()
    assert not ok and message.startswith("entry 2:") and "event" in message


def test_deleted_middle_row_is_named(tmp_path):
    store = _store(tmp_path, 4)
    _sql(tmp_path, "DELETE FROM tunegate_audit_events WHERE seq = 1")
    ok, message, _ = store.verify()
    assert not ok and message.startswith("entry 1:")


def test_reordered_rows_are_named(tmp_path):
    store = _store(tmp_path, 4)
    rows = store.rows()
    # Swap the content of rows 1 and 2 (columns and body), keeping the seq keys.
    for seq, other in ((1, rows[2]), (2, rows[1])):
        _sql(tmp_path, "UPDATE tunegate_audit_events SET hash = ?, prev = ?, event = ?, body = ? WHERE seq = ?",
             other["hash"] + "x", other["prev"] + "x", other["event"], other["body"], seq)
    _sql(tmp_path, "UPDATE tunegate_audit_events SET hash = substr(hash, 1, 64), prev = substr(prev, 1, 64)")
    ok, message, _ = store.verify()
    assert not ok and message.startswith("entry 1:"), message


def test_a_chain_cannot_fork(tmp_path):
    """Two rows claiming the same predecessor are refused by the table itself (prev is unique)."""
    store = _store(tmp_path, 2)
    last = store.rows()[-1]
    fork = {"seq": 5, "time": "t", "event": "x", "actor": "a", "data": {}, "prev": last["prev"]}
    fork["hash"] = entry_hash(fork)
    with pytest.raises(Exception):
        with store.engine.begin() as conn:
            store._insert(conn, fork)


WRITER = textwrap.dedent("""
    import sys
    from tunegate.governance.audit import AuditStore
    store = AuditStore(sys.argv[1])
    for i in range(int(sys.argv[3])):
        store.append("event", {"writer": sys.argv[2], "i": i}, actor=sys.argv[2])
""")


def test_concurrent_writers_extend_one_chain(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    AuditStore(url)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, name, "15"]) for name in ("a", "b", "c")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    ok, message, entries = AuditStore(url).verify()
    assert ok, message
    assert len(entries) == 45
    for name in "abc":  # each writer's events in its own order
        assert [e["data"]["i"] for e in entries if e["data"]["writer"] == name] == list(range(15))


LOCKER = textwrap.dedent("""
    import sys, time
    from tunegate.governance.audit import AuditStore
    store = AuditStore(sys.argv[1])
    with store.promotion_lock("m"):
        print("in", time.monotonic(), flush=True)
        time.sleep(1.0)
        print("out", time.monotonic(), flush=True)
""")


def test_promotion_lock_excludes_other_processes(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    AuditStore(url)
    procs = [subprocess.Popen([sys.executable, "-c", LOCKER, url], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    spans = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        times = dict(line.split() for line in out.splitlines())
        spans.append((float(times["in"]), float(times["out"])))
    (a_in, a_out), (b_in, b_out) = sorted(spans)
    assert a_out <= b_in, f"the two holders overlapped: {spans}"


def test_writes_go_on_while_the_promotion_lock_is_held(tmp_path):
    """MLflow and the audit append write the main file while the lock is held: it must not block them."""
    store = _store(tmp_path, 1)
    with store.promotion_lock("m"):
        started = time.monotonic()
        store.append("inside", {"model": "m"}, actor="tester")
        assert time.monotonic() - started < 5
    assert store.verify()[0]


def test_jsonl_trail_is_imported_once_with_its_hashes(tmp_path):
    log = tmp_path / "events.jsonl"
    entries, prev = [], GENESIS
    for i in range(3):
        entry = {"seq": i, "time": f"2026-01-0{i + 1}T00:00:00", "event": "old", "actor": "x", "commit": None, "data": {"i": i}, "prev": prev}
        entry["hash"] = entry_hash(entry)
        entries.append(entry)
        prev = entry["hash"]
    assert verify_chain(entries)[0]
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    assert store.import_jsonl(log) == {"imported": 3, "source": str(log)}
    assert not log.exists() and (tmp_path / "events.jsonl.imported").exists()
    ok, message, stored = store.verify()
    assert ok, message
    assert stored[:3] == entries and stored[3]["event"] == "audit_trail_imported" and stored[3]["prev"] == entries[-1]["hash"]
    assert store.import_jsonl(log) is None  # renamed: nothing to import a second time

    # Into a table that already holds a chain: never on its own (a stray local trail must not join a
    # team's), only when asked, by one entry naming the file's head.
    other = tmp_path / "other" / "events.jsonl"
    other.parent.mkdir()
    other.write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert store.import_jsonl(other, attach=False) == {"skipped": 3, "source": str(other)} and other.exists()
    assert store.import_jsonl(other)["attached"] == 3
    last = store.entries()[-1]
    assert last["event"] == "audit_trail_attached" and last["data"]["head"] == f"2:{entries[-1]['hash']}"


def test_a_broken_jsonl_trail_is_not_imported(tmp_path):
    log = tmp_path / "events.jsonl"
    entry = {"seq": 0, "time": "t", "event": "old", "actor": "x", "commit": None, "data": {}, "prev": GENESIS, "hash": "0" * 64}
    log.write_text(json.dumps(entry) + "\n")
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    with pytest.raises(Exception, match="entry 0"):
        store.import_jsonl(log)
    assert log.exists() and store.entries() == []


# --- the writer: a model's head is published where the caller says, whatever the process imported --------


def test_a_models_head_goes_to_the_publisher_the_caller_passes(tmp_path, monkeypatch):
    from tunegate.governance import audit

    monkeypatch.setenv("TUNEGATE_AUDIT_DB", f"sqlite:///{tmp_path / 'audit.db'}")
    heads = []
    entry = audit.record("event", {"i": 0}, actor="tester", model_name="m", publish_head=lambda *head: heads.append(head))
    assert heads == [("m", f"{entry['seq']}:{entry['hash']}")] and entry["model"] == "m"
    audit.record("event", {"i": 1}, actor="tester", publish_head=lambda *head: heads.append(head))  # no model: no head
    audit.record("event", {"i": 2}, actor="tester", model_name="m")  # no publisher: the trail only
    assert len(heads) == 1

    def unreachable(name, head):
        raise ConnectionError("registry down")

    audit.record("event", {"i": 3}, actor="tester", model_name="m", publish_head=unreachable)  # recorded all the same
    assert [e["data"]["i"] for e in audit.store().entries(model="m")] == [0, 2, 3]


RECORD_FOR_A_MODEL = textwrap.dedent("""
    import sys
    from tunegate.paths import configure_environment
    configure_environment()
    from tunegate.adapters import mlflow as tracking
    from tunegate.governance import trail
    tracking.client().create_registered_model(sys.argv[1])
    entry = trail.record("event", {"i": 0}, actor="tester", model_name=sys.argv[1])
    assert "tunegate.governance.promotion" not in sys.modules, "promotion was imported after all"
    print(f"{entry['seq']}:{entry['hash']}")
""")


def test_recording_for_a_model_publishes_its_head_without_importing_promotion(tmp_path):
    """A fresh process that never imports tunegate.governance.promotion: the registry's head tag still follows
    the trail (it once moved only where promotion had been imported)."""
    import os
    import uuid

    name = f"head-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TUNEGATE_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("TUNEGATE_AUDIT_DB", None)
    done = subprocess.run([sys.executable, "-c", RECORD_FOR_A_MODEL, name], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    head = done.stdout.strip().splitlines()[-1]
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}"
    tags = MlflowClient(tracking_uri=store, registry_uri=store).get_registered_model(name).tags
    assert tags["tunegate.audit_head"] == head
