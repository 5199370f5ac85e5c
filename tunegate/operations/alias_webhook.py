"""Alias moves outside tunegate, recorded as they happen (with `tunegate server`).

The MLflow server calls a webhook on every ``model_version_alias.created`` / ``.deleted``, signed
with HMAC-SHA256 over ``<delivery id>.<timestamp>.<body>`` with a secret only it and tunegate know
(``$TUNEGATE_HOME/mlflow/webhook-secret``, mode 0600). `tunegate server` runs the receiver on
loopback. A delivery is accepted only with a valid signature, a timestamp within five minutes and a
delivery id not seen before. A move of one of tunegate's aliases (champion, candidate, previous) that
no audited tunegate move explains (its own approve, rollback, registration... record one) is appended
to the audit trail as ``alias_moved_outside``: the trail then says when it moved, though not who
(MLflow's payload does not say). Drift detection (:func:`tunegate.governance.lineage.alias_drift`) still
reports the alias: recorded is not approved.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tunegate.governance.lineage import MANAGED_ALIASES

EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
WEBHOOK_NAME = "tunegate-alias-watch"
PATH = "/mlflow/alias"
MAX_AGE_S = 300  # a delivery older (or newer) than this is refused: replayed or clock-skewed
OWN_MOVE_WINDOW_S = 120  # an audited tunegate move of the alias to that version this close to the event explains it
SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER = "X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"


def secret_file(home: Path) -> Path:
    return home / "mlflow" / "webhook-secret"


def webhook_secret(home: Path) -> str:
    from tunegate.operations.server import _secret_file

    return _secret_file(secret_file(home), lambda: secrets.token_hex(32))


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's webhook signature: ``v1,`` + base64 HMAC-SHA256 of ``delivery_id.timestamp.body``."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def check_delivery(secret: str, headers: Any, body: bytes, seen: OrderedDict, now: float | None = None) -> str | None:
    """Why the delivery is refused (None: accepted): signature, age, replay."""
    delivery_id, timestamp, given = (headers.get(h) or "" for h in (DELIVERY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    if not (delivery_id and timestamp and given):
        return "unsigned (no signature, timestamp or delivery id)"
    if not hmac.compare_digest(given, signature(secret, delivery_id, timestamp, body)):
        return "bad signature"
    try:
        age = (now if now is not None else time.time()) - int(timestamp)
    except ValueError:
        return "bad timestamp"
    if abs(age) > MAX_AGE_S:
        return f"timestamp {age:.0f} s away from now"
    if delivery_id in seen:
        return "replayed delivery"
    seen[delivery_id] = True
    while len(seen) > 10_000:
        seen.popitem(last=False)
    return None


def _explained(entries: list[dict[str, Any]], alias: str, version: str | None, at: float) -> bool:
    """Whether an audited tunegate move put ``alias`` on ``version`` (None: removed it) near time ``at``."""
    from tunegate.governance.lineage import alias_moves

    for row in alias_moves(entries, alias):
        try:
            when = dt.datetime.fromisoformat(row["time"]).timestamp()
        except (TypeError, ValueError):
            continue
        if abs(when - at) > OWN_MOVE_WINDOW_S:
            continue
        if any((str(m["to"]) if m.get("to") is not None else None) == version for m in row["moves"]):
            return True
    return False


def handle(payload: dict[str, Any], delivery_id: str, received: float | None = None) -> dict[str, Any] | None:
    """Record the move in ``payload`` if it is one of tunegate's aliases and no audited move explains it;
    returns the audit entry (None: nothing to record). Taken under the model's promotion lock, which
    tunegate's own moves hold until their audit entry is written."""
    from tunegate.governance import audit
    from tunegate.governance.trail import record
    from tunegate.governance.promotion import registry_lock

    data = payload.get("data") or {}
    name, alias = data.get("name"), data.get("alias")
    if not name or alias not in MANAGED_ALIASES:
        return None
    created = payload.get("action") == "created"
    version = str(data["version"]) if created and data.get("version") is not None else None
    at = received if received is not None else time.time()
    with registry_lock(name):
        if _explained(audit.store().entries(model=name), alias, version, at):
            return None
        return record("alias_moved_outside", {
            "model": name, "alias": alias, "version": version, "action": payload.get("action"),
            "mlflow_time": payload.get("timestamp"), "delivery_id": delivery_id, "verified": "hmac-sha256",
            "reason": "moved outside tunegate (reported by the MLflow server's webhook)",
        }, actor="unknown (MLflow webhook)", model_name=name)


class Receiver:
    """The webhook's HTTP endpoint on loopback, in a thread of `tunegate server`."""

    def __init__(self, secret: str, host: str = "127.0.0.1", port: int = 0, log=None) -> None:
        self.secret, self.seen, self.log = secret, OrderedDict(), log or (lambda message: None)
        self.recorded: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != PATH:
                    return self._answer(404, "not found")
                why = check_delivery(receiver.secret, self.headers, body, receiver.seen)
                if why:
                    receiver.log(f"webhook delivery refused: {why}")
                    return self._answer(401, why)
                try:
                    payload = json.loads(body)
                    entry = handle(payload, self.headers.get(DELIVERY_HEADER))
                except Exception as error:  # MLflow retries a failed delivery
                    receiver.log(f"webhook delivery failed: {type(error).__name__}: {error}")
                    return self._answer(500, "failed")
                data = payload.get("data") or {}
                moved = f"alias {data.get('alias')} of {data.get('name')} -> " + (f"version {data['version']}" if data.get("version") else "removed")
                if entry is not None:
                    receiver.recorded.append(entry)
                    receiver.log(f"{moved}: moved outside tunegate, recorded in the audit trail (entry {entry['seq']})")
                elif data.get("alias") in MANAGED_ALIASES:
                    receiver.log(f"{moved}: tunegate's own, audited")
                return self._answer(200, "ok")

            def _answer(self, code: int, text: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, format, *args):  # noqa: A002 - quiet: the server's log says what matters
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="tunegate-alias-webhook", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{PATH}"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def register(mlflow_url: str, url: str, secret: str) -> str:
    """Create (or point at ``url``, with ``secret``) the MLflow server's webhook on alias events; its id."""
    from tunegate.adapters.mlflow import ensure_webhook

    return ensure_webhook(mlflow_url, WEBHOOK_NAME, url, list(EVENTS), secret,
                          description="tunegate: alias moves outside tunegate go to its audit trail")
