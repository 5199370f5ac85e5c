"""The receiver of the MLflow server's alias webhooks (tunegate.operations.alias_webhook): MLflow's own signature is
accepted, anything unsigned, altered, stale or replayed is refused; a move that an audited tunegate
move explains is not recorded again, any other move of tunegate's aliases is."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections import OrderedDict

from tunegate.governance import audit
from tunegate.governance.audit import record
from tunegate.operations import alias_webhook

SECRET = "s3cret-for-the-test"


def _headers(body: bytes, secret: str = SECRET, timestamp: int | None = None, delivery: str | None = None) -> dict[str, str]:
    delivery = delivery or str(uuid.uuid4())
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    return {alias_webhook.DELIVERY_HEADER: delivery, alias_webhook.TIMESTAMP_HEADER: timestamp,
            alias_webhook.SIGNATURE_HEADER: alias_webhook.signature(secret, delivery, timestamp, body)}


def test_the_signature_is_mlflows_own():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = json.dumps({"entity": "model_version_alias", "action": "created", "data": {"name": "m", "alias": "champion", "version": "2"}})
    assert alias_webhook.signature(SECRET, "d-1", "1764500000", body.encode()) == _generate_hmac_signature(SECRET, "d-1", "1764500000", body)


def test_unsigned_altered_stale_and_replayed_deliveries_are_refused():
    body = b'{"action": "created"}'
    seen = OrderedDict()
    good = _headers(body)
    assert alias_webhook.check_delivery(SECRET, good, body, seen) is None
    assert alias_webhook.check_delivery(SECRET, good, body, seen) == "replayed delivery"
    assert alias_webhook.check_delivery(SECRET, {}, body, seen).startswith("unsigned")
    assert alias_webhook.check_delivery(SECRET, _headers(body), body + b" ", seen) == "bad signature"
    assert alias_webhook.check_delivery(SECRET, _headers(body, secret="other"), body, seen) == "bad signature"
    stale = alias_webhook.check_delivery(SECRET, _headers(body, timestamp=int(time.time()) - 3600), body, seen)
    assert stale is not None and stale.startswith("timestamp")


def _payload(name: str, alias: str, version: str | None) -> dict:
    data = {"name": name, "alias": alias, **({"version": version} if version else {})}
    return {"entity": "model_version_alias", "action": "created" if version else "deleted", "data": data}


def test_own_moves_are_explained_and_outside_ones_recorded():
    name = f"hook-{uuid.uuid4().hex[:6]}"
    record("alias_moved", {"model": name, "version": "1", "champion": "1", "reason": "first",
                           "moves": [{"alias": "champion", "from": None, "to": "1"}, {"alias": "candidate", "from": "1", "to": None}]},
           actor="alice", model_name=name)
    assert alias_webhook.handle(_payload(name, "champion", "1"), "d1") is None  # tunegate's own approve
    assert alias_webhook.handle(_payload(name, "candidate", None), "d2") is None  # ... which removed candidate
    assert alias_webhook.handle(_payload(name, "staging", "1"), "d3") is None  # not one of tunegate's aliases
    entry = alias_webhook.handle(_payload(name, "champion", "2"), "d4")
    assert entry["event"] == "alias_moved_outside" and entry["actor"] == "unknown (MLflow webhook)"
    assert (entry["data"]["alias"], entry["data"]["version"], entry["data"]["delivery_id"]) == ("champion", "2", "d4")
    assert "moves" not in entry["data"]  # recorded, not audited as a tunegate move: drift stays visible
    # An audited move long before the event does not explain it.
    later = alias_webhook.handle(_payload(name, "champion", "1"), "d5", received=time.time() + 3600)
    assert later is not None and later["data"]["version"] == "1"
    assert audit.store().verify()[0]


def test_the_receiver_answers_only_signed_posts(monkeypatch):
    handled = []
    monkeypatch.setattr(alias_webhook, "handle", lambda payload, delivery: handled.append((payload, delivery)))
    receiver = alias_webhook.Receiver(SECRET).start()
    try:
        body = json.dumps(_payload("m", "champion", "3")).encode()

        def post(headers, path=alias_webhook.PATH):
            request = urllib.request.Request(receiver.url.replace(alias_webhook.PATH, path), data=body,
                                             headers={"Content-Type": "application/json", **headers}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as error:
                return error.code

        signed = _headers(body, delivery="once")
        assert post(signed) == 200 and handled == [(json.loads(body), "once")]
        assert post(signed) == 401  # the same delivery again
        assert post({}) == 401 and post(_headers(body, secret="wrong")) == 401
        assert post(_headers(body), path="/elsewhere") == 404
        assert len(handled) == 1
    finally:
        receiver.stop()


def test_the_secret_is_generated_once_and_private(tmp_path):
    first = alias_webhook.webhook_secret(tmp_path)
    path = tmp_path / "mlflow" / "webhook-secret"
    assert alias_webhook.webhook_secret(tmp_path) == first and len(first) == 64
    assert oct(path.stat().st_mode & 0o777) == "0o600"
