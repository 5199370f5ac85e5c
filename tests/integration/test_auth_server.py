"""`tunegate server --auth`'s MLflow server, for real: logins, who the caller is, per-model grants."""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
from base64 import b64encode

import pytest

from auth_server import REGISTERED_MODEL, auth_mlflow_server

pytestmark = pytest.mark.integration

ALICE = ("alice", "alice-password-1")
BOB = ("bob", "bob-password-123")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    with auth_mlflow_server(tmp_path_factory.mktemp("auth-server")) as server:
        server.add_user(*ALICE)
        server.add_user(*BOB)
        yield server


def _get(url: str, credentials: tuple[str, str] | None = None) -> tuple[int, dict | None]:
    """Status and JSON body (None when the body is not JSON) of a GET, with basic auth when given."""
    request = urllib.request.Request(url)
    if credentials:
        request.add_header("Authorization", "Basic " + b64encode(":".join(credentials).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def test_the_server_runs_with_auth_and_keeps_its_secrets_private(auth_server):
    config = auth_server.config
    assert _get(f"{auth_server.url}/health")[0] == 200  # the health check needs no login
    for path in (config.admin_password_file, config.secret_key_file, config.auth_config_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth_server.admin_password not in config.auth_config_path.read_text()
    assert auth_server.admin_password not in auth_server.running.log.read_text()
    assert (config.home / "mlflow" / "basic_auth.db").is_file()


def test_current_user_needs_a_login_and_names_the_caller(auth_server):
    current = f"{auth_server.url}/api/2.0/mlflow/users/current"
    assert _get(current)[0] == 401
    assert _get(current, ("alice", "not-her-password"))[0] == 401
    status, body = _get(current, ALICE)
    assert status == 200
    assert body["user"]["username"] == "alice" and body["user"]["is_admin"] is False
    status, body = _get(current, (auth_server.admin_username, auth_server.admin_password))
    assert status == 200 and body["user"]["is_admin"] is True


def test_admin_grants_manage_on_a_registered_model(auth_server):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with auth_server.as_user(auth_server.admin_username, auth_server.admin_password):
        MlflowClient(auth_server.url, registry_uri=auth_server.url).create_registered_model("granted-model")
    assert auth_server.permission("alice", "granted-model").permission == "READ"  # the default permission
    auth_server.grant("alice", "granted-model", "MANAGE")
    result = auth_server.permission("alice", "granted-model")
    assert (result.permission, result.allowed) == ("MANAGE", True)

    with auth_server.as_user(*ALICE):  # a user may ask about her own permission
        own = auth_server.auth_client().get_user_permission("alice", REGISTERED_MODEL, "granted-model")
        assert own.permission == "MANAGE"
        MlflowClient(auth_server.url, registry_uri=auth_server.url).set_registered_model_tag("granted-model", "touched-by", "alice")
    with auth_server.as_user(*BOB), pytest.raises(MlflowException, match="(?i)permission"):
        MlflowClient(auth_server.url, registry_uri=auth_server.url).set_registered_model_tag("granted-model", "touched-by", "bob")


def test_a_user_manages_the_model_she_creates(auth_server):
    from mlflow import MlflowClient

    with auth_server.as_user(*BOB):
        MlflowClient(auth_server.url, registry_uri=auth_server.url).create_registered_model("bobs-model")
    assert auth_server.permission("bob", "bobs-model").permission == "MANAGE"
    assert auth_server.permission("alice", "bobs-model").permission == "READ"
