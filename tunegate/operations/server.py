"""``tunegate server``: a Prefect server and an MLflow tracking server, started and stopped together.

By default both bind to loopback and keep their state under ``$TUNEGATE_HOME``:
Prefect's SQLite database in ``prefect/``, MLflow's ``mlflow/mlflow.db`` (the same
store the embedded default uses) with artifacts proxied from ``mlflow/artifacts``.
For a multi-user deployment the same command takes PostgreSQL URLs and an object
store (see ``docs/deploy.md``). Each server runs in its own process group with its
log under ``$TUNEGATE_HOME/logs``; stopping sends SIGINT to both groups, then SIGKILL
to what has not exited after a grace period.

While it runs, ``tunegate server`` supervises both (:class:`Supervisor`): a server that exits is
restarted on the same port with the same stores, after a backoff of 1 s doubling up to 30 s, while
the other keeps serving; after 5 exits within 5 minutes the supervisor gives up on it, stops both
and the command exits 1 naming the log. Each restart is logged to the console and the server's
log; ``server.json`` records per server its pid, restarts, last restart and last exit code
(:func:`supervisor_view` reads them back, ``tunegate status`` shows them). Only SIGINT / SIGTERM
stop both on purpose.

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
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tunegate.paths import MLFLOW_HTTP, TELEMETRY_OFF, has_password, port_free, redact


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
    # tunegate's alias webhook (tunegate.operations.alias_webhook) calls back to `tunegate server` on loopback over plain
    # HTTP, HMAC-signed. MLflow refuses both by default (https only, public addresses only, against SSRF); the
    # server itself listens on loopback unless --host says otherwise.
    env.setdefault("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
    env.setdefault("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
    log = config.home / "logs" / "mlflow-server.log"
    process = _spawn("mlflow server", argv, env, log, config.home)
    return Running("MLflow", config.mlflow_url, f"{config.mlflow_url}/health", process, log)


def answers(url: str, timeout: float = 5.0) -> bool:
    """Whether ``url`` (a health endpoint) answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(server: Running, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(f"the {server.name} server exited with code {server.process.returncode} while starting; see {server.log}")
        if answers(server.health):
            return
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_state(config: ServerConfig, servers: list[Running], components: dict[str, dict] | None = None,
                started: str | None = None, policy: RestartPolicy | None = None) -> Path:
    """Write ``server.json`` (atomically: ``tunegate status`` and clients read it while the supervisor
    rewrites it). ``components``: per server what the supervisor knows (pid, restarts, last restart,
    last exit code); without it every server counts as just started."""
    path = state_file(config.home)
    if components is None:
        components = {s.name: {"pid": s.process.pid, "state": "running", "url": s.url, "log": str(s.log), "restarts": 0,
                               "last_restart": None, "last_exit_code": None} for s in servers}
    text = json.dumps({
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
        "started": started or _now(),
        "supervisor": {"pid": os.getpid(), **(policy or RestartPolicy()).describe()},
        "components": components,
    }, indent=2)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def supervisor_view(home: Path) -> dict | None:
    """What ``server.json`` under ``home`` says about the supervised servers: the supervisor's pid and
    whether it is alive, and per server (``components``) its pid, state, restarts, last restart time and
    last exit code. None when there is no (readable) ``server.json``: no ``tunegate server`` runs there."""
    path = state_file(Path(home))
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    supervisor = state.get("supervisor") or {}
    components = state.get("components")
    if not isinstance(components, dict):  # written before supervision: pids and logs only
        components = {name: {"pid": pid, "state": None, "url": None, "log": (state.get("logs") or {}).get(name),
                             "restarts": 0, "last_restart": None, "last_exit_code": None}
                      for name, pid in (state.get("pids") or {}).items()}
    pid = supervisor.get("pid")
    return {
        "state_file": str(path),
        "started": state.get("started"),
        "supervisor_pid": pid,
        "supervisor_alive": _alive(pid) if isinstance(pid, int) else None,
        "restart_policy": {k: v for k, v in supervisor.items() if k != "pid"},
        "components": components,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process by that pid
        return True
    return True


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


# --- supervision ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RestartPolicy:
    """When a server that exited is started again, and when the supervisor gives up on it."""

    backoff_base: float = 1.0  # seconds before the first restart; doubled for each further exit in the window
    backoff_cap: float = 30.0
    max_failures: int = 5  # exits within ``window`` that make the supervisor give up (and stop both)
    window: float = 300.0
    start_timeout: float = 180.0  # a restarted server that does not answer its health check by then has failed

    def delay(self, failures: int) -> float:
        """The wait before restarting after the ``failures``-th exit within the window (1, 2, 4, ... capped)."""
        return min(self.backoff_cap, self.backoff_base * 2 ** max(0, failures - 1))

    def describe(self) -> dict:
        return {"backoff_s": [self.backoff_base, self.backoff_cap], "give_up_after": self.max_failures, "window_s": self.window}


def restart_server(name: str, config: ServerConfig) -> Running:
    """Start server ``name`` ("MLflow" or "Prefect") again: same port, same stores, same log."""
    starters = {"MLflow": start_mlflow, "Prefect": start_prefect}
    return starters[name](config)


@dataclass
class Component:
    """One supervised server and its history."""

    running: Running
    state: str = "running"  # running | starting (restarted, not yet healthy) | waiting (backoff before a restart)
    restarts: int = 0
    last_restart: str | None = None
    last_exit_code: int | None = None
    exits: list[float] = field(default_factory=list)  # monotonic times of the exits within the window
    restart_at: float = 0.0
    port_wait_until: float = 0.0  # how long a restart waits for the old port to be released
    started_at: float = 0.0

    def view(self) -> dict:
        return {
            "pid": self.running.process.pid if self.state != "waiting" else None,
            "state": self.state,
            "url": self.running.url,
            "log": str(self.running.log),
            "restarts": self.restarts,
            "last_restart": self.last_restart,
            "last_exit_code": self.last_exit_code,
            "exits_in_window": len(self.exits),
        }


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL what is left of a server's process group (a uvicorn child outlives a killed ``mlflow server``
    and would keep the port), then reap the leader."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _log_line(log: Path, message: str) -> None:
    try:
        with open(log, "a") as handle:
            handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} tunegate supervisor: {message}\n")
    except OSError:
        pass


class Supervisor:
    """Keeps ``servers`` running: a server that exits (or, restarted, does not get healthy) is started again
    after a backoff, the others untouched; ``servers`` is updated in place, so it always holds what to stop.
    :meth:`tick` raises ServerError when a server exited ``policy.max_failures`` times within ``policy.window``."""

    def __init__(self, config: ServerConfig, servers: list[Running], policy: RestartPolicy | None = None,
                 say=None, start=None, clock=time.monotonic) -> None:
        self.config, self.servers = config, servers
        self.policy = policy or RestartPolicy()
        self.say = say or (lambda message: print(message, flush=True))
        self.start = start or restart_server
        self.clock = clock
        self.components = {s.name: Component(s) for s in servers}
        self.started = (supervisor_view(config.home) or {}).get("started") or _now()  # start_all's, when it wrote one

    def view(self) -> dict[str, dict]:
        return {name: c.view() for name, c in self.components.items()}

    def write_state(self) -> Path:
        return write_state(self.config, self.servers, self.view(), started=self.started, policy=self.policy)

    def _replace(self, component: Component, running: Running) -> None:
        self.servers[:] = [running if s is component.running else s for s in self.servers]
        component.running = running

    def _port(self, name: str) -> int:
        return self.config.mlflow_port if name == "MLflow" else self.config.prefect_port

    def tick(self) -> None:
        now = self.clock()
        for name, component in self.components.items():
            if component.state in ("running", "starting"):
                code = component.running.process.poll()
                if code is not None:
                    self._exited(name, component, now, f"exited with code {code}", code)
                elif component.state == "starting":
                    if answers(component.running.health, timeout=2):
                        component.state = "running"
                        self._tell(component, f"the {name} server answers again at {component.running.url} (pid {component.running.process.pid})")
                        self.write_state()
                    elif now - component.started_at > self.policy.start_timeout:
                        self._exited(name, component, now, f"did not answer {component.running.health} within {self.policy.start_timeout:.0f}s after a restart", None)
            elif component.state == "waiting" and now >= component.restart_at:
                self._restart(name, component, now)

    def _tell(self, component: Component, message: str) -> None:
        self.say(message)
        _log_line(component.running.log, message)

    def _exited(self, name: str, component: Component, now: float, how: str, code: int | None, kill: bool = True) -> None:
        if kill:  # its process group: children left behind, or a restarted server that never got healthy
            _kill_group(component.running.process)
            code = code if code is not None else component.running.process.returncode
        if code is not None:  # a restart that could not even spawn keeps the last exit code
            component.last_exit_code = code
        component.exits = [t for t in component.exits if now - t < self.policy.window] + [now]
        failures = len(component.exits)
        if failures >= self.policy.max_failures:
            message = (f"the {name} server {how} ({failures} exits within {self.policy.window:.0f}s); "
                       f"gave up restarting it and stopped the other; see {component.running.log}")
            _log_line(component.running.log, message)
            component.state = "failed"
            raise ServerError(message)
        delay = self.policy.delay(failures)
        component.state, component.restart_at = "waiting", now + delay
        component.port_wait_until = component.restart_at + 10
        self._tell(component, f"the {name} server {how}; restarting it in {delay:g}s "
                              f"(exit {failures} of {self.policy.max_failures} allowed within {self.policy.window:.0f}s); see {component.running.log}")
        self.write_state()

    def _restart(self, name: str, component: Component, now: float) -> None:
        # The old process group is gone; give the kernel a moment to release the port before the new bind.
        if not port_free(self.config.host, self._port(name)) and now < component.port_wait_until:
            component.restart_at = now + 0.5
            return  # after that, the restarted server's own bind fails and counts as an exit
        try:
            running = self.start(name, self.config)
        except (ServerError, OSError) as error:  # e.g. a secret file that became empty: counts as an exit
            self._exited(name, component, now, f"could not be restarted ({error})", None, kill=False)
            return
        self._replace(component, running)
        component.restarts += 1
        component.last_restart = _now()
        component.state, component.started_at = "starting", now
        self._tell(component, f"restarted the {name} server (restart {component.restarts}, pid {running.process.pid}) on {running.url}")
        self.write_state()

    def run(self, should_stop, interval: float = 0.5) -> None:
        """Tick until ``should_stop()``; raises ServerError when giving up on a server."""
        self.write_state()
        while not should_stop():
            time.sleep(interval)
            if not should_stop():
                self.tick()


def supervise(config: ServerConfig, servers: list[Running], should_stop, say=None, policy: RestartPolicy | None = None) -> None:
    """Supervise the started ``servers`` until ``should_stop()`` (see :class:`Supervisor`); ``servers`` is kept
    current in place, so the caller stops what runs. Raises ServerError (naming the log) on giving up."""
    Supervisor(config, servers, policy=policy, say=say).run(should_stop)


def client_env(config: ServerConfig) -> dict[str, str]:
    """What a client (a shell, `tunegate run`, a worker) on this machine sets to use these servers;
    no secrets (with auth each user adds MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)."""
    env = {"PREFECT_API_URL": config.prefect_api_url, "MLFLOW_TRACKING_URI": config.mlflow_url}
    audit_db = config.audit_db()
    if audit_db is not None:
        env[AUDIT_DB_ENV] = audit_db
    return env
