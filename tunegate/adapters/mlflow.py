"""Adapter over MLflow tracking and the model registry.

All calls go through an explicit ``MlflowClient`` and run id, never the fluent
"active run", so Prefect tasks in any thread log to the right run.
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate import tags
from tunegate.paths import artifact_root, tracking_uri  # noqa: F401  (re-exported)

CHAMPION = "champion"
CANDIDATE = "candidate"
PREVIOUS = "previous"  # the champion before the last promotion


@functools.lru_cache(maxsize=8)
def _client_for(uri: str):
    from mlflow import MlflowClient

    if not uri.startswith("sqlite:"):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    # MLflow creates and migrates a SQLite store's schema when a client first opens it; two processes
    # doing that at once on a fresh $TUNEGATE_HOME collide ("duplicate column name"): one at a time.
    import fcntl

    from sqlalchemy.engine import make_url

    db = Path(make_url(uri).database or "")
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".init-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client._tracking_client.store  # noqa: B018  (opening the store creates or migrates the schema)
        client._get_registry_client().store  # noqa: B018
    return client


def client():
    """The client for the current tracking URI (one per URI); also points MLflow's fluent API there."""
    import os

    import mlflow

    uri = tracking_uri()
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow exports the URI to the environment; keep ours as the user set it, so $TUNEGATE_HOME keeps deciding.
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    return _client_for(uri)


def _param_value(value: Any) -> str:
    """How a param value is logged: JSON for lists and mappings, str() for the rest."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def ensure_experiment(name: str) -> str:
    c = client()
    experiment = c.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        # The embedded store keeps artifacts under $TUNEGATE_HOME, not ./mlruns.
        location = artifact_root().as_uri()
    return c.create_experiment(name, artifact_location=location)


def start_run(experiment: str, run_name: str, tags: dict[str, str]) -> str:
    c = client()
    run = c.create_run(ensure_experiment(experiment), run_name=run_name, tags=tags)
    return run.info.run_id


def reopen_run(run_id: str, flat_params: dict[str, Any], tags: dict[str, str]) -> str:
    """Mark an earlier run RUNNING again; its params must equal ``flat_params`` (same run, same params)."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        run = c.get_run(run_id)
    except MlflowException:
        raise ValueError(f"--resume {run_id}: no such MLflow run at {tracking_uri()}") from None
    logged = run.data.params
    changed = sorted(k for k, v in flat_params.items() if k in logged and logged[k] != _param_value(v))
    if changed:
        raise ValueError(f"--resume {run_id}: params differ from the run's: {', '.join(changed)}")
    c.update_run(run_id, status="RUNNING")
    for key, value in tags.items():
        c.set_tag(run_id, key, value)
    return run_id


def log_params(run_id: str, flat: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, _param_value(v)) for k, v in flat.items()]
    c = client()
    for start in range(0, len(items), 100):
        c.log_batch(run_id, params=items[start : start + 100])


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
    if items:
        client().log_batch(run_id, metrics=items)


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    c = client()
    for key, value in tags.items():
        c.set_tag(run_id, key, str(value))


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    client().log_text(run_id, text, artifact_file)


def log_dict(run_id: str, data: dict[str, Any], artifact_file: str) -> None:
    client().log_dict(run_id, data, artifact_file)


def log_artifacts(run_id: str, local_dir: Path, artifact_path: str) -> None:
    client().log_artifacts(run_id, str(local_dir), artifact_path)


def log_dataset(run_id: str, records: list[dict[str, Any]], name: str, source: str, digest: str, context: str) -> None:
    """Record a dataset as a run input, with DVC's md5 as its digest."""
    import mlflow
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    # A chat record's turns; a preference pair's prompt turns plus its answer.
    frame = pd.DataFrame(
        [{"id": r["id"], "family": r.get("family", ""), "n_messages": len(r["messages"]) if "messages" in r else len(r.get("prompt") or []) + 1}
         for r in records]
    )
    import warnings

    with warnings.catch_warnings():
        # MLflow warns that a local path could be one of two equivalent source types
        # and that integer columns cannot hold missing values; neither applies here.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest[:36])
        entity = dataset._to_mlflow_entity()
    client().log_inputs(
        run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])]
    )


def end_run(run_id: str, status: str) -> None:
    client().set_terminated(run_id, status=status)


def get_run(run_id: str):
    return client().get_run(run_id)


def find_runs_by_tag(experiment: str, key: str, value: str) -> list[Any]:
    c = client()
    experiment_obj = c.get_experiment_by_name(experiment)
    if experiment_obj is None:
        return []
    return c.search_runs([experiment_obj.experiment_id], filter_string=f"tags.`{key}` = '{value}'")


def recent_runs(experiment: str, limit: int = 5) -> list[Any]:
    c = client()
    experiment_obj = c.get_experiment_by_name(experiment)
    if experiment_obj is None:
        return []
    return c.search_runs(
        [experiment_obj.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit
    )


def log_transformers_model(run_id: str, model_dir: Path, name: str = "model") -> str:
    """Log a saved tunegate model as an MLflow transformers model; returns its ``models:/`` URI.

    Adapters are logged without base weights, referencing the local base model through
    ``base_model_path`` so that loading never reaches a hub; the path is the base's files with
    the adapter's generation config (:func:`tunegate.tuning.modeling.serving_base`), so a served model
    stops on the same tokens as evaluation.
    """
    import mlflow

    from tunegate.paths import tunegate_home
    from tunegate.tuning.modeling import load_saved_model, read_model_info, serving_base

    info = read_model_info(model_dir)
    model, tokenizer = load_saved_model(model_dir)
    client()
    kwargs: dict[str, Any] = {}
    if info.method != "full":
        has_config = (Path(model_dir) / "generation_config.json").is_file()
        base = serving_base(info.base_model, Path(model_dir), tunegate_home()) if has_config else info.base_model
        kwargs["base_model_path"] = str(base)
    with mlflow.start_run(run_id=run_id):
        logged = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name=name,
            task="text-generation",
            # Explicit: MLflow's inference of requirements imports optional packages (torchvision).
            pip_requirements=_model_requirements(),
            **kwargs,
        )
    return logged.model_uri


def _model_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "transformers", "peft", "accelerate")]


# --- registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    created_ms: int | None = None


def _ref(mv) -> VersionRef:
    return VersionRef(mv.name, str(mv.version), mv.run_id, mv.source, dict(mv.tags or {}), mv.creation_timestamp)


def aliases(name: str) -> dict[str, str]:
    """alias -> version of registered model ``name``, as the registry has them now."""
    return {alias: str(version) for alias, version in (client().get_registered_model(name).aliases or {}).items()}


def alias_version(name: str, alias: str) -> VersionRef | None:
    """The version behind ``alias`` or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return _ref(client().get_model_version_by_alias(name, alias))
    except MlflowException:
        return None


def get_version(name: str, version: str) -> VersionRef:
    return _ref(client().get_model_version(name, str(version)))


def register_version(name: str, model_uri: str, tags: dict[str, str]) -> VersionRef:
    """Create a new version of ``name`` from a logged model URI."""
    import mlflow

    client()
    mv = mlflow.register_model(model_uri=model_uri, name=name, tags=tags)
    return get_version(name, str(mv.version))


def versions_of_run(name: str, run_id: str) -> list[VersionRef]:
    """Versions of ``name`` registered from ``run_id`` (none when the model does not exist yet)."""
    found = client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return sorted((_ref(mv) for mv in found), key=lambda r: int(r.version))


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, str(version))


def remove_alias(name: str, alias: str, only_from: str | None = None) -> None:
    """Delete ``alias`` of ``name`` (when it exists and, with ``only_from``, points at that version)."""
    current = alias_version(name, alias)
    if current is not None and (only_from is None or current.version == str(only_from)):
        client().delete_registered_model_alias(name, alias)


def set_version_tag(name: str, version: str, key: str, value: str) -> None:
    client().set_model_version_tag(name, str(version), key, value)


def download_version(ref: VersionRef, dest: Path | None = None) -> Path:
    """Download the tunegate model directory of a registered version's training run."""
    import mlflow

    dest = dest or Path(tempfile.mkdtemp(prefix=f"tunegate-{ref.name}-v{ref.version}-"))
    dest.mkdir(parents=True, exist_ok=True)
    client()

    # A run that tuned twice (SFT, then preference) names which of its models the version is.
    artifact = ref.tags.get(tags.MODEL_ARTIFACT) or "tunegate_model"
    return Path(mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=artifact, dst_path=str(dest)))


# --- transient failures -------------------------------------------------------------------

_TRANSIENT_WORDS = (
    "connection refused", "max retries exceeded", "connection aborted", "connection reset", "timed out",
    "temporarily unavailable", "service unavailable", "bad gateway", "gateway timeout", "database is locked",
    "could not connect to server", "server closed the connection", "name or service not known",
)


def is_transient(error: BaseException) -> bool:
    """True for failures another attempt can fix: the tracking server, registry or database not answering.

    Walks the exception's cause chain; bad data, bad params and refused promotions are never transient.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        name = type(current).__name__
        module = type(current).__module__ or ""
        if module.startswith(("requests", "urllib3")) and name in {"ConnectionError", "ConnectTimeout", "ReadTimeout", "MaxRetryError", "NewConnectionError", "ProtocolError"}:
            return True
        if name == "MlflowException" and getattr(current, "error_code", "") in {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}:
            return True
        text = str(current).lower()
        if any(word in text for word in _TRANSIENT_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return False


AUDIT_HEAD_TAG = tags.AUDIT_HEAD  # a registered model's newest audit entry, "<seq>:<hash>"


def publish_audit_head(name: str, head: str) -> None:
    """Tag registered model ``name`` with its newest audit entry: a trail cut short or rewritten no longer
    ends where the registry says (``tunegate audit verify``)."""
    client().set_registered_model_tag(name, AUDIT_HEAD_TAG, head)


# --- for governance and operations: what they ask MLflow beyond the calls above ------------------


def load_artifact_json(run_id: str, path: str) -> Any:
    """The JSON artifact ``path`` of run ``run_id``, or None when it is missing or not JSON
    (:func:`read_json_artifact`, which raises instead)."""
    try:
        return read_json_artifact(run_id, path)
    except Exception:
        return None


def server_get(uri: str, path: str, params: dict[str, str] | None = None):
    """A GET of ``path`` on the tracking server ``uri`` with the client's own credentials and TLS settings
    (one retry, 30 s); the ``requests`` response."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    return http_request(get_default_host_creds(uri), path, "GET", params=params, max_retries=1, backoff_factor=1, timeout=30)


def ensure_webhook(mlflow_url: str, name: str, url: str, events: list[str], secret: str, description: str) -> str:
    """Create the MLflow server's webhook ``name`` (or point it at ``url``, with ``secret``, active); its id."""
    from mlflow import MlflowClient

    server = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    for hook in server.list_webhooks():
        if hook.name == name:
            return server.update_webhook(hook.webhook_id, url=url, events=events, secret=secret, status="ACTIVE").webhook_id
    return server.create_webhook(name, url, events, description=description, secret=secret).webhook_id


# --- for tunegate.evaluation.cache (a RunStore): finding and reading back stored evaluations ------------


def finished_runs_tagged(experiment: str, tag: str, value: str, limit: int = 20) -> list[tuple[str, dict[str, str]]]:
    """(run id, tags) of ``experiment``'s finished runs tagged ``tag`` = ``value``, newest first ([]: no such
    experiment)."""
    c = client()
    found = c.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = c.search_runs(
        [found.experiment_id], filter_string=f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=limit,
    )
    return [(run.info.run_id, dict(run.data.tags)) for run in runs]


def read_json_artifact(run_id: str, path: str) -> Any:
    """The JSON artifact ``path`` of run ``run_id`` (raises when it is missing or not JSON)."""
    with tempfile.TemporaryDirectory(prefix="tunegate-artifact-") as tmp:
        local = client().download_artifacts(run_id, path, tmp)
        return json.loads(Path(local).read_text(encoding="utf-8"))


def import_transformers_flavor() -> None:
    """Import MLflow's transformers flavour now (``tunegate run`` warms it while its Prefect server starts)."""
    import mlflow.transformers  # noqa: F401
