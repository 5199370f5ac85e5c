"""``tunegate server``: a Prefect server and an MLflow tracking server, started and stopped together.

By default both bind to loopback and keep their state under ``$TUNEGATE_HOME``:
Prefect's SQLite database in ``prefect/``, MLflow's ``mlflow/mlflow.db`` (the same
store the embedded default uses) with artifacts proxied from ``mlflow/artifacts``.
For a multi-user deployment the same command takes PostgreSQL URLs and an object
store (see ``docs/deploy.md``). Each server runs in its own process group with its
log under ``$TUNEGATE_HOME/logs``; stopping sends SIGINT to both groups, then SIGKILL
to what has not exited after a grace period.

With ``auth`` the MLflow server runs MLflow's basic-auth app (``--app-name basic-auth``):
users, passwords and per-model permissions live in ``mlflow/basic_auth.db`` (or
``auth_database_url``), configured by ``mlflow/basic_auth.ini``. The admin password
(``MLFLOW_AUTH_ADMIN_PASSWORD`` or one generated into ``mlflow/admin-password``) and the
Flask secret key the app needs (``mlflow/flask-secret-key``) are files of mode 0600, handed
to the server in its environment, never on its command line, in the ini or in a log.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tunegate.paths import MLFLOW_HTTP, TELEMETRY_OFF


class ServerError(RuntimeError):
    """A server that could not start or died; the message names its log."""


# MLflow basic auth: the permissions ``default_permission`` accepts, the admin user tunegate
# configures, and the environment variables the auth app reads.
AUTH_PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
AUTH_ADMIN_USERNAME = "admin"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
AUTH_CONFIG_ENV = "MLFLOW_AUTH_CONFIG_PATH"
AUDIT_DB_ENV = "TUNEGATE_AUDIT_DB"


@dataclass
class ServerConfig:
    home: Path
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    prefect_database_url: str | None = None  # None: SQLite under home/prefect
    mlflow_backend_store_uri: str | None = None  # None: sqlite under home/mlflow
    mlflow_artifacts_destination: str | None = None  # None: home/mlflow/artifacts
    mlflow_workers: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    auth: bool = False  # MLflow's basic-auth app: users, passwords, per-model permissions
    auth_database_url: str | None = None  # None: sqlite under home/mlflow/basic_auth.db
    auth_default_permission: str = "READ"  # what a user has on a resource nobody granted them
    # Seconds a worker remembers a checked password (MLflow's auth_cache_ttl_seconds; 0: off, MLflow's
    # default). Each check costs a slow hash, several per request; a password changed out of band (or on
    # another worker) is honoured only after the TTL.
    auth_cache_ttl_seconds: int = 0

    @property
    def prefect_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.mlflow_port}"

    def backend_store_uri(self) -> str:
        return self.mlflow_backend_store_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    def artifacts_destination(self) -> str:
        return self.mlflow_artifacts_destination or str(self.home / "mlflow" / "artifacts")

    def auth_database_uri(self) -> str:
        return self.auth_database_url or f"sqlite:///{self.home / 'mlflow' / 'basic_auth.db'}"

    @property
    def auth_config_path(self) -> Path:
        return self.home / "mlflow" / "basic_auth.ini"

    @property
    def admin_password_file(self) -> Path:
        return self.home / "mlflow" / "admin-password"

    @property
    def secret_key_file(self) -> Path:
        return self.home / "mlflow" / "flask-secret-key"

    def audit_db(self) -> str | None:
        """The audit database clients on this machine use: the MLflow backend store, unless
        its URI carries a password (which then stays out of server.json and printed exports)."""
        uri = self.backend_store_uri()
        return None if has_password(uri) else uri


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def has_password(url: str) -> bool:
    """Whether a database URL carries a password, in its netloc or as a ``password=`` query."""
    parts = urlsplit(url)
    try:
        in_netloc = parts.password is not None
    except ValueError:  # a netloc urlsplit cannot parse: assume the worst
        return True
    return in_netloc or any(key.lower() == "password" for key in parse_qs(parts.query))


def redact(url: str) -> str:
    """A database URL with its password hidden (printed and logged URLs never carry secrets)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _base_env(config: ServerConfig) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in {**TELEMETRY_OFF, **MLFLOW_HTTP}.items():
        env.setdefault(key, value)
    env["PREFECT_HOME"] = str(config.home / "prefect")
    env.pop("PREFECT_API_URL", None)  # the server itself is not a client of another server
    env.update(config.extra_env)
    return env


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (the venv's prefect / mlflow)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class Running:
    name: str
    url: str
    health: str
    process: subprocess.Popen
    log: Path


def _spawn(name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "ab")
    handle.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: {' '.join(redact(a) for a in argv)}\n".encode())
    handle.flush()
    return subprocess.Popen(argv, env=env, cwd=str(cwd), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def start_prefect(config: ServerConfig) -> Running:
    env = _base_env(config)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_UI_API_URL"] = config.prefect_api_url
    if config.prefect_database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = config.prefect_database_url
    argv = [_bin("prefect"), "server", "start", "--host", config.host, "--port", str(config.prefect_port), "--analytics-off"]
    log = config.home / "logs" / "prefect-server.log"
    process = _spawn("prefect server", argv, env, log, config.home)
    return Running("Prefect", config.prefect_url, f"{config.prefect_api_url}/health", process, log)


def _secret_file(path: Path, generate) -> str:
    """The secret kept in ``path`` (mode 0600), generated into it the first time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        value = path.read_text().strip()
        if not value:
            raise ServerError(f"{path} is empty: delete it to have a new secret generated") from None
        return value
    value = generate()
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def admin_password(config: ServerConfig) -> str:
    """The basic-auth admin password: ``MLFLOW_AUTH_ADMIN_PASSWORD`` when set, else the one
    generated once into ``config.admin_password_file`` (mode 0600). MLflow uses it only to
    create the admin user in an empty user store; afterwards the stored password rules."""
    given = config.extra_env.get(ADMIN_PASSWORD_ENV) or os.environ.get(ADMIN_PASSWORD_ENV)
    return given or _secret_file(config.admin_password_file, lambda: secrets.token_urlsafe(24))


def admin_password_source(config: ServerConfig) -> str:
    """Where the admin password comes from, for people (never the password itself)."""
    if config.extra_env.get(ADMIN_PASSWORD_ENV) or os.environ.get(ADMIN_PASSWORD_ENV):
        return f"${ADMIN_PASSWORD_ENV}"
    return str(config.admin_password_file)


def flask_secret_key(config: ServerConfig) -> str:
    """The static secret key the auth app needs (CSRF, flashing): ``MLFLOW_FLASK_SERVER_SECRET_KEY``
    when set, else one generated once into ``config.secret_key_file`` (mode 0600)."""
    given = config.extra_env.get(SECRET_KEY_ENV) or os.environ.get(SECRET_KEY_ENV)
    return given or _secret_file(config.secret_key_file, lambda: secrets.token_hex(32))


def auth_config_text(config: ServerConfig) -> str:
    """The basic-auth ini (no password in it: the admin's comes from the environment)."""
    if config.auth_default_permission not in AUTH_PERMISSIONS:
        raise ServerError(f"auth default permission {config.auth_default_permission!r} is not one of {', '.join(AUTH_PERMISSIONS)}")
    database_uri = config.auth_database_uri()
    if "\n" in database_uri or "\r" in database_uri:
        raise ServerError("the auth database URL contains a line break")
    settings = {
        "default_permission": config.auth_default_permission,
        # MLflow reads the file with configparser's interpolation: a literal % is written %%
        "database_uri": database_uri.replace("%", "%%"),
        "admin_username": AUTH_ADMIN_USERNAME,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    if config.auth_cache_ttl_seconds > 0:
        settings["auth_cache_ttl_seconds"] = str(int(config.auth_cache_ttl_seconds))
    return "[mlflow]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())


def write_auth_config(config: ServerConfig) -> Path:
    """Write ``basic_auth.ini`` (mode 0600: an auth database URL may carry a password)."""
    path = config.auth_config_path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(auth_config_text(config))
    os.chmod(path, 0o600)
    return path


def start_mlflow(config: ServerConfig) -> Running:
    env = _base_env(config)
    (config.home / "mlflow").mkdir(parents=True, exist_ok=True)
    argv = [
        _bin("mlflow"), "server",
        "--host", config.host, "--port", str(config.mlflow_port),
        "--backend-store-uri", config.backend_store_uri(),
        "--artifacts-destination", config.artifacts_destination(),
        "--serve-artifacts",
        "--workers", str(config.mlflow_workers),
    ]
    if config.auth:  # secrets travel in the environment only: argv is logged
        if importlib.util.find_spec("flask_wtf") is None:
            raise ServerError("the MLflow basic-auth app needs Flask-WTF: pip install 'mlflow[auth]' (or `make setup`)")
        env[AUTH_CONFIG_ENV] = str(write_auth_config(config))
        env[ADMIN_PASSWORD_ENV] = admin_password(config)
        env[SECRET_KEY_ENV] = flask_secret_key(config)
        env.pop("MLFLOW_AUTH_ADMIN_USERNAME", None)  # it would override the ini's admin_username
        argv += ["--app-name", "basic-auth"]
    log = config.home / "logs" / "mlflow-server.log"
    process = _spawn("mlflow server", argv, env, log, config.home)
    return Running("MLflow", config.mlflow_url, f"{config.mlflow_url}/health", process, log)


def wait_healthy(server: Running, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(f"the {server.name} server exited with code {server.process.returncode} while starting; see {server.log}")
        try:
            with urllib.request.urlopen(server.health, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ServerError(f"the {server.name} server did not answer {server.health} within {timeout:.0f}s; see {server.log}")


def stop(servers: list[Running], grace: float = 20.0) -> dict[str, int | None]:
    """SIGINT each server's process group, then SIGKILL what is left after ``grace`` seconds."""
    for server in servers:
        if server.process.poll() is None:
            try:
                os.killpg(server.process.pid, signal.SIGINT)  # both shut down gracefully on SIGINT
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    codes: dict[str, int | None] = {}
    for server in servers:
        try:
            codes[server.name] = server.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[server.name] = None
        try:  # children the server left behind (uvicorn workers, services)
            os.killpg(server.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if codes[server.name] is None:
            server.process.wait(timeout=10)
    return codes


def state_file(home: Path) -> Path:
    return home / "server.json"


def write_state(config: ServerConfig, servers: list[Running]) -> Path:
    path = state_file(config.home)
    path.write_text(json.dumps({
        "prefect_url": config.prefect_url,
        "prefect_api_url": config.prefect_api_url,
        "mlflow_url": config.mlflow_url,
        "mlflow_backend_store": redact(config.backend_store_uri()),
        "auth": config.auth,
        "audit_db": config.audit_db(),
        "mlflow_artifacts_destination": config.artifacts_destination(),
        "prefect_database": redact(config.prefect_database_url or f"sqlite under {config.home / 'prefect'}"),
        "pids": {s.name: s.process.pid for s in servers},
        "logs": {s.name: str(s.log) for s in servers},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2))
    return path


def start_all(config: ServerConfig, timeout: float = 180.0) -> list[Running]:
    """Start both servers and wait until both answer; on any failure stop what started and raise."""
    for name, port in (("Prefect", config.prefect_port), ("MLflow", config.mlflow_port)):
        if not port_free(config.host, port):
            raise ServerError(f"port {port} on {config.host} is in use (another tunegate server?): choose another with --{name.lower()}-port")
    config.home.mkdir(parents=True, exist_ok=True)
    servers: list[Running] = []
    try:
        servers.append(start_mlflow(config))
        servers.append(start_prefect(config))
        for server in servers:
            wait_healthy(server, timeout)
    except BaseException:
        stop(servers)
        raise
    write_state(config, servers)
    return servers


def client_env(config: ServerConfig) -> dict[str, str]:
    """What a client (a shell, `tunegate run`, a worker) on this machine sets to use these servers;
    no secrets (with auth each user adds MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)."""
    env = {"PREFECT_API_URL": config.prefect_api_url, "MLFLOW_TRACKING_URI": config.mlflow_url}
    audit_db = config.audit_db()
    if audit_db is not None:
        env[AUDIT_DB_ENV] = audit_db
    return env
