"""Where things live: the repo root, ``$TUNEGATE_HOME``, the environment every tool sees, free ports and
URLs safe to print.

Everything the pipeline writes goes under one directory, ``$TUNEGATE_HOME``
(default ``.tunegate/`` at the repo root). ``MLFLOW_TRACKING_URI`` and
``PREFECT_API_URL``, when set, win over the embedded defaults.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# MLflow's HTTP client retries each request 7 times with up to minutes of backoff by default; tunegate
# keeps that short and lets Prefect retry the task (visible in the UI), see tasks.common.RETRY_TRANSIENT.
MLFLOW_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
# How long `tunegate run` waits for the Prefect server it starts for itself (ephemeral mode); Prefect's
# default of 20 s is too short on a loaded machine or while a fresh Prefect database is created.
PREFECT_EPHEMERAL_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
PREFECT_EPHEMERAL_TIMEOUT_DEFAULT = "180"


def repo_root() -> Path:
    """The project checkout: the parent of the ``tunegate`` package (editable install)."""
    return Path(__file__).resolve().parent.parent


def resolve_path(value: str) -> Path:
    """A path from params: absolute as given, relative to the repo root otherwise."""
    path = Path(value)
    return path if path.is_absolute() else (repo_root() / path).resolve()


def model_source(name: str) -> str:
    """A local model directory (absolute, resolved against the repo root) or, when no such
    directory exists and the name looks like ``org/model``, the Hugging Face hub id as given.

    Hub ids load only where the hub is reachable and ``HF_HUB_OFFLINE=0`` (a GPU machine), or
    from the local HF cache.
    """
    local = resolve_path(name)
    if local.is_dir() or Path(name).is_absolute() or name.startswith("."):
        return str(local)
    return name


def tunegate_home() -> Path:
    home = os.environ.get("TUNEGATE_HOME")
    path = Path(home) if home else repo_root() / ".tunegate"
    return path.resolve()


def tracking_uri() -> str:
    """MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` or the embedded SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{tunegate_home() / 'mlflow' / 'mlflow.db'}"


def artifact_root() -> Path:
    return tunegate_home() / "mlflow" / "artifacts"


def configure_environment() -> Path:
    """Create ``$TUNEGATE_HOME``, point Prefect's home into it and switch telemetry off.

    Must run before prefect is imported: Prefect reads its settings at import.
    """
    home = tunegate_home()
    for sub in ("mlflow", "prefect", "dvc-cache", "reports", "runs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    for key, value in {**TELEMETRY_OFF, **MLFLOW_HTTP}.items():
        os.environ.setdefault(key, value)
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault(PREFECT_EPHEMERAL_TIMEOUT, PREFECT_EPHEMERAL_TIMEOUT_DEFAULT)
    return home


@contextlib.contextmanager
def environment(set_: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> Iterator[None]:
    """Set and unset environment variables for the block; restore every one of them afterwards."""
    keys = {*(set_ or {}), *unset}
    saved = {key: os.environ.get(key) for key in keys}
    for key in unset:
        os.environ.pop(key, None)
    os.environ.update(set_ or {})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- ports and URLs ----------------------------------------------------------------------------


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


def dvc_stage_outs(root: Path | None = None) -> dict[str, list[Path]]:
    """Every stage of ``root/dvc.yaml`` (default: the repo's) -> the absolute paths of its ``outs``; empty without a dvc.yaml."""
    import yaml

    root = root or repo_root()
    dvc_file = root / "dvc.yaml"
    if not dvc_file.is_file():
        return {}
    stages = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages") or {}
    outs: dict[str, list[Path]] = {}
    for name, spec in stages.items():
        if isinstance(spec, dict):
            wdir = root / str(spec.get("wdir", "."))
            outs[name] = [(wdir / (next(iter(o)) if isinstance(o, dict) else str(o))).resolve() for o in spec.get("outs") or []]
    return outs


def made_by_dvc_stage(path: Path, root: Path | None = None) -> bool:
    """Whether ``path`` is (under) an output of a stage in ``root/dvc.yaml``: a file a run makes before it reads
    it (``data.dvc_stage``), so a preflight does not refuse it for being missing yet."""
    path = path.resolve()
    return any(path == out or out in path.parents for outs in dvc_stage_outs(root).values() for out in outs)
