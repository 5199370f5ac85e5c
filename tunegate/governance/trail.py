"""The audit writer for everything tunegate records: the event appended to the trail
(:func:`tunegate.governance.audit.record`) and, for a model, its newest head anchored on the registered
model in MLflow (the ``tunegate.audit_head`` tag that ``tunegate audit verify`` compares with the trail).

The registry is named here, in the call, so every process records the same way whatever else it
imported.
"""

from __future__ import annotations

from typing import Any

from tunegate.adapters import mlflow as tracking
from tunegate.governance import audit


def record(event: str, data: dict[str, Any], actor: str | None = None, model_name: str | None = None,
           commit: str | None = None, authenticated: bool | None = None) -> dict[str, Any]:
    """Append an audit event; with ``model_name`` the model's head tag in the registry moves to it.

    Without ``actor`` the event is recorded for the acting identity (authenticated when the tracking
    server says who we are).
    """
    return audit.record(event, data, actor=actor, model_name=model_name, commit=commit, authenticated=authenticated,
                        publish_head=tracking.publish_audit_head)
