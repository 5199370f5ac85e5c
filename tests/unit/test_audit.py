import json

from tunegate.audit import append_event, read_entries, verify_chain


def test_chain_verifies_and_detects_edits(tmp_path):
    log = tmp_path / "audit" / "events.jsonl"
    for i in range(3):
        append_event(log, "event", {"i": i}, actor="tester", commit="abc")
    entries = read_entries(log)
    assert verify_chain(entries)[0]
    entries[1]["data"]["i"] = 99
    ok, message = verify_chain(entries)
    assert not ok and "entry 1" in message


def test_deleting_or_swapping_entries_is_detected(tmp_path):
    log = tmp_path / "events.jsonl"
    for i in range(3):
        append_event(log, "event", {"i": i})
    entries = read_entries(log)
    assert not verify_chain([entries[0], entries[2]])[0]
    assert not verify_chain([entries[1], entries[0], entries[2]])[0]
    lines = log.read_text().splitlines()
    assert json.loads(lines[2])["prev"] == json.loads(lines[1])["hash"]
