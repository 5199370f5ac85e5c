"""The temporary Prefect server `tunegate run` starts for itself when no PREFECT_API_URL is set.

The same server Prefect's ephemeral mode starts (uvicorn on ``prefect.server.api.server:create_app``
with the UI off, the database under ``$PREFECT_HOME``), started by ``tunegate run`` on a thread while
it checks and imports the pipeline: this process never imports Prefect's server API (1.7 s here),
and a new home's database is created while the run does other work. The flow then runs with
``PREFECT_API_URL`` pointing at it (as a Prefect setting, not in the environment) and the server
stops when the process ends.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tunegate.paths import free_port

TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
PORT_IN_USE = 3  # uvicorn's exit code when the port was taken between our check and its bind


def _prefect_parent() -> str:
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.submodule_search_locations, "prefect is not installed"
    return str(Path(list(spec.submodule_search_locations)[0]).parent)


class TemporaryPrefectServer:
    """Start with :meth:`start_in_background`, then :meth:`wait` for its API URL (raises what start-up raised)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.seconds = 0.0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start_in_background(self) -> TemporaryPrefectServer:
        self._thread = threading.Thread(target=self._start, name="prefect-server-start", daemon=True)
        self._thread.start()
        return self

    def wait(self) -> str:
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error
        return self.api_url

    def _spawn(self) -> subprocess.Popen:
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        return subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", _prefect_parent(), "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env,
        )

    def _start(self) -> None:
        begin = time.perf_counter()
        timeout = float(os.environ.get(TIMEOUT_ENV) or 180)
        try:
            seed_database()
            self.port = free_port()
            self.process = self._spawn()
            atexit.register(self.stop)
            while True:
                if self.process.poll() == PORT_IN_USE:
                    self.port = free_port()
                    self.process = self._spawn()
                    continue
                if self.process.poll() is not None:
                    raise RuntimeError(f"Timed out while attempting to connect to ephemeral Prefect API server: "
                                       f"the server process exited with code {self.process.returncode}")
                if self._healthy():
                    break
                if time.perf_counter() - begin > timeout:
                    raise RuntimeError(f"Timed out while attempting to connect to ephemeral Prefect API server after {timeout:g} s")
                time.sleep(0.1)
        except BaseException as error:  # raised by wait(), where `tunegate run` explains it
            self.error = error
        self.seconds = time.perf_counter() - begin

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


# --- a new home's Prefect database, migrated once per machine and Prefect version ---------------------


def database_path() -> Path | None:
    """The SQLite database the temporary server uses (Prefect's default under $PREFECT_HOME), or ``None``
    when the user set a database URL of their own."""
    if os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or not os.environ.get("PREFECT_HOME"):
        return None
    return Path(os.environ["PREFECT_HOME"]) / "prefect.db"


def template_path() -> Path:
    """This user's copy of a freshly migrated, empty Prefect database, one per Prefect version (in the
    user's cache, not a shared directory: a database another user could write is not trusted)."""
    from importlib.metadata import version

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunegate"
    return cache / f"prefect-{version('prefect')}-empty.db"


def seed_database() -> bool:
    """Before the server starts: a new home gets a copy of the migrated template, when this user has
    one (``make setup`` makes it), and Prefect finds nothing to migrate (creating the schema took
    7-20 s). Returns whether it did."""
    database = database_path()
    if database is None or database.exists():
        return False
    template = template_path()
    if not template.is_file():
        return False
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(database.name + f".{os.getpid()}.partial")
    shutil.copyfile(template, partial)
    try:  # created only if still absent: a second run starting on this home at once keeps the first's
        os.link(partial, database)
    except FileExistsError:
        return False
    finally:
        partial.unlink()
    return True


def make_template() -> Path:
    """Start a temporary server on a new, empty Prefect home, stop it, and keep its database (read with
    SQLite's backup API once the server has stopped) as the template; returns its path."""
    import sqlite3
    import tempfile

    from tunegate.paths import TELEMETRY_OFF, environment

    template = template_path()
    with tempfile.TemporaryDirectory(prefix="tunegate-prefect-template-") as home, \
            environment({**TELEMETRY_OFF, "PREFECT_HOME": home}, unset=("PREFECT_API_DATABASE_CONNECTION_URL",)):
        server = TemporaryPrefectServer().start_in_background()
        try:
            server.wait()
        finally:
            server.stop()
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_name(template.name + f".{os.getpid()}.partial")
        source, target = sqlite3.connect(Path(home) / "prefect.db"), sqlite3.connect(partial)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        os.chmod(partial, 0o600)
        os.replace(partial, template)
    return template


def main() -> None:
    """``python -m tunegate.adapters.prefect --template``: make this user's template (``make setup`` does)."""
    if sys.argv[1:] != ["--template"]:
        sys.exit("usage: python -m tunegate.adapters.prefect --template")
    if template_path().is_file():
        print(f"Prefect database template: {template_path()} (already there)")
        return
    print(f"Prefect database template: {make_template()}")


if __name__ == "__main__":
    main()
