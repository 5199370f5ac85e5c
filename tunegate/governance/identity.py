"""Who is acting: the user the MLflow server authenticated, or (embedded, single-user) the environment's.

An MLflow server started with its authentication app (``mlflow server --app-name basic-auth``, or
``tunegate server --auth``) answers ``GET /api/2.0/mlflow/users/current`` with the user its
credentials (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``) belong to; a server without
it answers 404, and the embedded SQLite store has no users at all. Only the first is an
*authenticated* identity; the others are what ``$TUNEGATE_ACTOR`` or the login name say, and are
recorded as ``authenticated: false``.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import os
from dataclasses import dataclass


def environment_user() -> str:
    """Who this process acts for without an authenticated server: ``$TUNEGATE_ACTOR`` or the login name."""
    return os.environ.get("TUNEGATE_ACTOR") or getpass.getuser()


# Registered-model permissions of MLflow's auth app, weakest first.
PERMISSION_RANK = {"NO_PERMISSIONS": 0, "DENY": 0, "READ": 1, "USE": 2, "EDIT": 3, "MANAGE": 4}
CURRENT_USER = "/api/2.0/mlflow/users/current"
USER_PERMISSION = "/api/3.0/mlflow/users/permissions/get"


class IdentityError(RuntimeError):
    """The tracking server could not say who we are (wrong credentials, server down)."""


@dataclass(frozen=True)
class Identity:
    name: str
    authenticated: bool
    source: str  # "mlflow-auth" (the server authenticated it) | "environment"
    is_admin: bool = False


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _request(uri: str, path: str, params: dict[str, str] | None = None):
    """A GET to the tracking server with the client's own credentials and TLS settings."""
    from tunegate.adapters.mlflow import server_get

    return server_get(uri, path, params)


@functools.lru_cache(maxsize=16)
def _server_identity(uri: str, username: str | None, secret_digest: str) -> Identity:  # noqa: ARG001 (cache key)
    try:
        response = _request(uri, CURRENT_USER)
    except Exception as error:
        raise IdentityError(f"cannot ask the tracking server {uri} who is authenticated: {type(error).__name__}: {error}") from error
    if response.status_code == 404:
        return Identity(environment_user(), False, "environment")
    if response.status_code == 401:
        who = f"as {username!r} " if username else ""
        raise IdentityError(
            f"the tracking server {uri} requires authentication and refused the credentials {who}"
            "(set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your MLflow user's)"
        )
    if response.status_code != 200:
        raise IdentityError(f"the tracking server {uri} answered {response.status_code} to {CURRENT_USER}: {response.text[:200]}")
    user = response.json().get("user") or {}
    if not user.get("username"):
        raise IdentityError(f"the tracking server {uri} did not name the authenticated user: {response.text[:200]}")
    return Identity(user["username"], True, "mlflow-auth", bool(user.get("is_admin")))


def current_identity() -> Identity:
    """The acting identity for the current tracking URI (asked once per process and credentials)."""
    from tunegate.paths import tracking_uri

    uri = tracking_uri()
    if not _is_server(uri):
        return Identity(environment_user(), False, "environment")
    # Cached per credentials (a digest, so no password is kept in the cache key): other credentials ask again.
    secret = (os.environ.get("MLFLOW_TRACKING_PASSWORD") or "") + "\0" + (os.environ.get("MLFLOW_TRACKING_TOKEN") or "")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return _server_identity(uri.rstrip("/"), os.environ.get("MLFLOW_TRACKING_USERNAME"), digest)


def actor_identity() -> Identity:
    """For recording an event: the authenticated identity when it can be had, else the environment's.

    Unlike approvals, a run's events must still reach the audit trail when the server is down.
    """
    try:
        return current_identity()
    except IdentityError:
        return Identity(environment_user(), False, "environment")


def model_permission(name: str, identity: Identity) -> str:
    """The identity's effective permission on registered model ``name``, as the server resolves it."""
    from tunegate.paths import tracking_uri

    if identity.is_admin:
        return "MANAGE"
    uri = tracking_uri().rstrip("/")
    try:
        response = _request(uri, USER_PERMISSION, {"username": identity.name, "resource_type": "registered_model", "resource_id": name})
    except Exception as error:
        raise IdentityError(f"cannot read {identity.name}'s permission on {name} from {uri}: {type(error).__name__}: {error}") from error
    if response.status_code != 200:
        raise IdentityError(f"the tracking server {uri} answered {response.status_code} when asked for {identity.name}'s permission on {name}: {response.text[:200]}")
    return str(response.json().get("permission") or "NO_PERMISSIONS")


def holds(permission: str, required: str) -> bool:
    return PERMISSION_RANK.get(permission, 0) >= PERMISSION_RANK[required]
