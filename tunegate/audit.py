"""Append-only, hash-chained audit log (JSONL under ``$TUNEGATE_HOME/audit/``).

Each entry carries the previous entry's hash, so editing, deleting or
reordering entries breaks the chain at a point ``verify_chain`` names.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def environment_user() -> str:
    """Who this process acts for: ``$TUNEGATE_ACTOR`` or the login name."""
    return os.environ.get("TUNEGATE_ACTOR") or getpass.getuser()


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_entries(log: Path) -> list[dict[str, Any]]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_event(log: Path, event: str, data: dict[str, Any], actor: str | None = None, commit: str | None = None) -> dict[str, Any]:
    """Append one event; an OS-level lock keeps concurrent writers from forking the chain."""
    import fcntl

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = read_entries(log)
        entry = {
            "seq": len(entries),
            "time": dt.datetime.now(dt.timezone.utc).isoformat(),
            "event": event,
            "actor": actor or environment_user(),
            "commit": commit,
            "data": data,
            "prev": entries[-1]["hash"] if entries else GENESIS,
        }
        entry["hash"] = entry_hash(entry)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    return entry


def verify_chain(entries: list[dict[str, Any]]) -> tuple[bool, str]:
    """Return (ok, message); the message names the first bad entry."""
    prev = GENESIS
    for position, entry in enumerate(entries):
        if entry.get("seq") != position:
            return False, f"entry {position}: sequence number {entry.get('seq')} out of place"
        if entry.get("prev") != prev:
            return False, f"entry {position}: does not follow the previous entry's hash"
        if entry_hash(entry) != entry.get("hash"):
            return False, f"entry {position}: content does not match its hash"
        prev = entry["hash"]
    return True, f"{len(entries)} entries, chain intact"
