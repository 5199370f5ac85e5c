"""A real MLflow server with basic authentication, started through ``tunegate.operations.server`` (as
``tunegate server --auth`` starts it), for tests that act as different users.

    from auth_server import auth_mlflow_server

    @pytest.fixture(scope="module")
    def auth_server(tmp_path_factory):
        with auth_mlflow_server(tmp_path_factory.mktemp("auth")) as server:
            yield server

    server.add_user("alice", "alice-password-1")       # passwords: 12 characters at least
    server.grant("alice", "my-model", "MANAGE")          # the model must exist
    monkeypatch.setenv(...) for server.env_for("alice", "alice-password-1"), or `with server.as_user(...)`
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tunegate.operations.server import (
    AUTH_ADMIN_USERNAME, Running, ServerConfig, admin_password, start_mlflow, stop, wait_healthy,
)
from tunegate.paths import environment, free_port

REGISTERED_MODEL = "registered_model"  # the basic-auth resource_type of a registered model (its id: the name)
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@contextmanager
def tracking_credentials(username: str, password: str) -> Iterator[None]:
    """Set MLFLOW_TRACKING_USERNAME / _PASSWORD (what MLflow clients send) for the block."""
    with environment(dict(zip(CREDENTIAL_ENV, (username, password)))):
        yield


@dataclass
class AuthServer:
    config: ServerConfig
    running: Running
    admin_password: str
    admin_username: str = AUTH_ADMIN_USERNAME

    @property
    def url(self) -> str:
        return self.config.mlflow_url

    def env_for(self, name: str, password: str) -> dict[str, str]:
        """What a client acting as ``name`` sets."""
        return {"MLFLOW_TRACKING_URI": self.url, "MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password}

    @contextmanager
    def as_user(self, name: str, password: str) -> Iterator[None]:
        """MLflow clients in the block talk to this server as ``name`` (sets process environment)."""
        saved = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = self.url
        try:
            with tracking_credentials(name, password):
                yield
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved

    def auth_client(self):
        from mlflow.server import get_app_client

        return get_app_client("basic-auth", tracking_uri=self.url)

    def as_admin(self):
        return tracking_credentials(self.admin_username, self.admin_password)

    def add_user(self, name: str, password: str):
        with self.as_admin():
            return self.auth_client().create_user(name, password)

    def grant(self, name: str, model: str, permission: str) -> None:
        """Give ``name`` ``permission`` (READ, USE, EDIT, MANAGE, DENY) on registered model ``model``."""
        with self.as_admin():
            self.auth_client().grant_user_permission(name, REGISTERED_MODEL, model, permission)

    def permission(self, name: str, model: str):
        """``name``'s effective permission on ``model`` (``.permission``, ``.allowed``), as the admin sees it."""
        with self.as_admin():
            return self.auth_client().get_user_permission(name, REGISTERED_MODEL, model)


@contextmanager
def auth_mlflow_server(tmp_path: Path, **config: object) -> Iterator[AuthServer]:
    """Start an MLflow server with basic auth under ``tmp_path``, yield it, stop it.

    ``config``: more ServerConfig fields. The password check is cached for the server's life by
    default: uncached, every authenticated request costs one to two seconds of hashing here."""
    config = {"auth_cache_ttl_seconds": 3600, **config}
    server_config = ServerConfig(home=Path(tmp_path), mlflow_port=free_port(), auth=True, **config)
    running = start_mlflow(server_config)
    try:
        wait_healthy(running, timeout=120)
        yield AuthServer(server_config, running, admin_password(server_config))
    finally:
        stop([running])
