"""Waiting for and asking servers in the integration tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

# Answers a busy server gives for a moment: Prefect's API says 503 while its SQLite database is locked by a
# flow run's writes (seen once in the suite while a worker ran a flow), and Prefect's own client retries these.
TRANSIENT = (429, 502, 503)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """``predicate()``'s first truthy value, polled every ``interval`` s; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def request_json(url: str, body: dict | None = None, attempts: int = 6) -> object:
    """GET ``url`` (or POST ``body`` as JSON) and decode the JSON answer; a transient answer (429, 502, 503)
    is asked again after 0.5, 1, 2, ... s, as Prefect's client does, and raised after ``attempts``."""
    data = json.dumps(body).encode() if body is not None else None
    for attempt in range(attempts):
        request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"}, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code not in TRANSIENT or attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")
