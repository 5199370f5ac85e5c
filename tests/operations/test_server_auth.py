"""`tunegate server --auth`: the basic-auth ini, the admin password and secret key files, what clients
are told (no server starts here; tests/integration/test_auth_server.py starts a real one)."""

from __future__ import annotations

import configparser
import json
import signal
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunegate.operations import server
from tunegate.operations.server import ServerConfig

SECRET_ENV = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_ADMIN_USERNAME",
              "MLFLOW_AUTH_CONFIG_PATH")


@pytest.fixture(autouse=True)
def _no_secrets_in_env(monkeypatch):
    for key in SECRET_ENV:
        monkeypatch.delenv(key, raising=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ini(text: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser()  # as MLflow reads it: with interpolation
    parser.read_string(text)
    return parser["mlflow"]


def test_auth_config_has_the_settings_and_no_password(tmp_path):
    config = ServerConfig(home=tmp_path, auth=True)
    ini = _ini(server.auth_config_text(config))
    assert ini["default_permission"] == "READ"
    assert ini["database_uri"] == f"sqlite:///{tmp_path / 'mlflow' / 'basic_auth.db'}"
    assert ini["admin_username"] == "admin"
    assert ini["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert "admin_password" not in ini
    assert "auth_cache_ttl_seconds" not in ini  # MLflow's default: no credential cache


def test_auth_config_enables_the_credential_cache_when_asked(tmp_path):
    ini = _ini(server.auth_config_text(ServerConfig(home=tmp_path, auth=True, auth_cache_ttl_seconds=60)))
    assert ini["auth_cache_ttl_seconds"] == "60"


def test_auth_config_takes_the_database_url_and_permission_and_escapes_percent(tmp_path):
    url = "postgresql://auth@db:5432/mlflow_auth?application_name=a%20b"
    config = ServerConfig(home=tmp_path, auth=True, auth_database_url=url, auth_default_permission="NO_PERMISSIONS")
    ini = _ini(server.auth_config_text(config))
    assert ini["database_uri"] == url  # configparser's interpolation turns %% back into %
    assert ini["default_permission"] == "NO_PERMISSIONS"


def test_mlflow_reads_the_written_config(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config

    config = ServerConfig(home=tmp_path, auth=True, auth_default_permission="EDIT")
    path = server.write_auth_config(config)
    assert path == tmp_path / "mlflow" / "basic_auth.ini"
    assert _mode(path) == 0o600
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    read = read_auth_config()
    assert (read.default_permission, read.admin_username, read.admin_password) == ("EDIT", "admin", None)
    assert read.database_uri == config.auth_database_uri()


def test_an_unknown_default_permission_is_refused(tmp_path):
    with pytest.raises(server.ServerError, match="not one of"):
        server.auth_config_text(ServerConfig(home=tmp_path, auth=True, auth_default_permission="ALL"))


def test_admin_password_is_generated_once_with_mode_0600_and_reused(tmp_path):
    config = ServerConfig(home=tmp_path, auth=True)
    first = server.admin_password(config)
    assert len(first) >= 12  # MLflow refuses shorter passwords
    assert config.admin_password_file.read_text().strip() == first
    assert _mode(config.admin_password_file) == 0o600
    config.admin_password_file.chmod(0o644)
    assert server.admin_password(config) == first
    assert _mode(config.admin_password_file) == 0o600  # tightened again on reuse
    assert server.admin_password(ServerConfig(home=tmp_path / "other", auth=True)) != first


def test_admin_password_from_the_environment_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "given-password-123")
    config = ServerConfig(home=tmp_path, auth=True)
    assert server.admin_password(config) == "given-password-123"
    assert not config.admin_password_file.exists()
    assert server.admin_password_source(config) == "$MLFLOW_AUTH_ADMIN_PASSWORD"


def test_an_empty_password_file_is_an_error_not_an_empty_password(tmp_path):
    config = ServerConfig(home=tmp_path, auth=True)
    config.admin_password_file.parent.mkdir(parents=True)
    config.admin_password_file.write_text("\n")
    with pytest.raises(server.ServerError, match="is empty"):
        server.admin_password(config)


def test_flask_secret_key_is_kept_0600_and_reused(tmp_path, monkeypatch):
    config = ServerConfig(home=tmp_path, auth=True)
    key = server.flask_secret_key(config)
    assert _mode(config.secret_key_file) == 0o600
    assert server.flask_secret_key(config) == key
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "from-env")
    assert server.flask_secret_key(config) == "from-env"


class _Spawned:
    def __init__(self):
        self.calls = []

    def __call__(self, name, argv, env, log, cwd):
        self.calls.append({"argv": argv, "env": env})
        return type("P", (), {"pid": 0})()


def test_start_mlflow_with_auth_passes_secrets_in_the_environment_only(tmp_path, monkeypatch):
    spawned = _Spawned()
    monkeypatch.setattr(server, "_spawn", spawned)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "someone")
    config = ServerConfig(home=tmp_path, auth=True)
    server.start_mlflow(config)
    argv, env = spawned.calls[0]["argv"], spawned.calls[0]["env"]
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    password = config.admin_password_file.read_text().strip()
    secret_key = config.secret_key_file.read_text().strip()
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == password
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == secret_key
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(config.auth_config_path)
    assert "MLFLOW_AUTH_ADMIN_USERNAME" not in env  # the ini's admin_username is the one printed
    assert not any(password in a or secret_key in a for a in argv)
    assert password not in config.auth_config_path.read_text()


def test_start_mlflow_without_auth_is_unchanged(tmp_path, monkeypatch):
    spawned = _Spawned()
    monkeypatch.setattr(server, "_spawn", spawned)
    config = ServerConfig(home=tmp_path)
    server.start_mlflow(config)
    assert "--app-name" not in spawned.calls[0]["argv"]
    assert "MLFLOW_AUTH_CONFIG_PATH" not in spawned.calls[0]["env"]
    assert not config.admin_password_file.exists() and not config.auth_config_path.exists()


@pytest.mark.parametrize(("uri", "has"), [
    ("sqlite:////tmp/x/mlflow.db", False),
    ("postgresql://mlflow@db:5432/mlflow", False),
    ("postgresql://mlflow:s3cret@db:5432/mlflow", True),
    ("postgresql://mlflow@db:5432/mlflow?sslmode=require&password=s3cret", True),
])
def test_has_password(uri, has):
    assert server.has_password(uri) is has


def test_client_env_names_the_audit_db_when_it_has_no_password(tmp_path):
    config = ServerConfig(home=tmp_path, mlflow_port=5123)
    env = server.client_env(config)
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5123"
    assert env["TUNEGATE_AUDIT_DB"] == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert "MLFLOW_TRACKING_PASSWORD" not in env and "MLFLOW_AUTH_ADMIN_PASSWORD" not in env
    with_user = ServerConfig(home=tmp_path, mlflow_backend_store_uri="postgresql://mlflow@db/mlflow")
    assert server.client_env(with_user)["TUNEGATE_AUDIT_DB"] == "postgresql://mlflow@db/mlflow"


def test_client_env_leaves_out_an_audit_db_with_a_password(tmp_path):
    config = ServerConfig(home=tmp_path, mlflow_backend_store_uri="postgresql://mlflow:s3cret@db/mlflow", auth=True)
    env = server.client_env(config)
    assert "TUNEGATE_AUDIT_DB" not in env
    assert "s3cret" not in json.dumps(env)


def test_write_state_records_auth_and_audit_db(tmp_path):
    state = json.loads(server.write_state(ServerConfig(home=tmp_path, auth=True), []).read_text())
    assert state["auth"] is True
    assert state["audit_db"] == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    secret = ServerConfig(home=tmp_path, mlflow_backend_store_uri="postgresql://u:s3cret@db/mlflow")
    text = server.write_state(secret, []).read_text()
    assert json.loads(text)["auth"] is False and json.loads(text)["audit_db"] is None
    assert "s3cret" not in text


def _server_cli(monkeypatch, tmp_path, args):
    """Run `tunegate server ARGS` with start_all and the supervisor faked: the MLflow server 'dies' at once
    and the supervisor gives up on it, so the command prints what it prints on start and exits 1; nothing
    is started, restarted or signalled."""
    from tunegate.cli import app

    started = {}

    def fake_start_all(config, timeout=180.0):
        started["config"] = config
        server.admin_password(config)  # what start_mlflow would do
        process = type("P", (), {"pid": 0, "returncode": 0, "poll": lambda self: 0})()
        return [server.Running("MLflow", config.mlflow_url, "", process, tmp_path / "log")]

    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path))
    # `tunegate server` points this process at its MLflow server (for the alias webhook): undone after the test.
    for name in ("MLFLOW_TRACKING_URI", server.AUDIT_DB_ENV):
        monkeypatch.setenv(name, "")  # recorded as it was (unset), so monkeypatch restores it
        monkeypatch.delenv(name)
    monkeypatch.setattr(server, "start_all", fake_start_all)
    monkeypatch.setattr(server, "stop", lambda servers, grace=20.0: {"MLflow": 0})

    def fake_supervise(config, servers, should_stop, say=None, policy=None):
        raise server.ServerError("the MLflow server exited with code 0 (5 exits within 300s); gave up")

    monkeypatch.setattr(server, "supervise", fake_supervise)
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    result = CliRunner().invoke(app, ["server", *args])
    return result, started.get("config")


def test_server_auth_prints_the_admin_and_password_file_never_the_password(monkeypatch, tmp_path):
    result, config = _server_cli(monkeypatch, tmp_path, ["--auth", "--auth-default-permission", "use"])
    assert config.auth and config.auth_default_permission == "USE"
    out = " ".join(result.output.split())
    assert "authentication on" in out and "admin user admin" in out
    assert str(config.admin_password_file) in out
    assert "MLFLOW_TRACKING_USERNAME" in out and "MLFLOW_TRACKING_PASSWORD" in out
    assert f"TUNEGATE_AUDIT_DB={config.backend_store_uri()}" in out
    assert config.admin_password_file.read_text().strip() not in result.output


def test_server_auth_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEGATE_MLFLOW_AUTH", "1")
    monkeypatch.setenv("TUNEGATE_MLFLOW_AUTH_DATABASE_URL", "postgresql://auth@db/auth")
    _, config = _server_cli(monkeypatch, tmp_path, [])
    assert config.auth and config.auth_database_url == "postgresql://auth@db/auth"


def test_server_without_auth_says_nothing_about_it(monkeypatch, tmp_path):
    result, config = _server_cli(monkeypatch, tmp_path, [])
    assert not config.auth and "authentication" not in result.output


def test_server_refuses_an_unknown_default_permission(monkeypatch, tmp_path):
    result, config = _server_cli(monkeypatch, tmp_path, ["--auth", "--auth-default-permission", "everything"])
    assert result.exit_code == 2 and config is None
