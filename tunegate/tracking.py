"""Adapter over MLflow tracking and the model registry.

All calls go through an explicit ``MlflowClient`` and run id, never the fluent
"active run", so Prefect tasks in any thread log to the right run.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.paths import artifact_root, tracking_uri  # noqa: F401  (re-exported)

CHAMPION = "champion"
CANDIDATE = "candidate"


def client():
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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


def log_params(run_id: str, flat: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in flat.items()]
    for start in range(0, len(items), 100):
        client().log_batch(run_id, params=items[start : start + 100])


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

    frame = pd.DataFrame(
        [{"id": r["id"], "family": r.get("family", ""), "n_messages": len(r["messages"])} for r in records]
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


# --- registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]


def _ref(mv) -> VersionRef:
    return VersionRef(mv.name, str(mv.version), mv.run_id, mv.source, dict(mv.tags or {}))


def alias_version(name: str, alias: str) -> VersionRef | None:
    """The version behind ``alias`` or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return _ref(client().get_model_version_by_alias(name, alias))
    except MlflowException:
        return None


def get_version(name: str, version: str) -> VersionRef:
    return _ref(client().get_model_version(name, str(version)))


def register_version(name: str, run_id: str, artifact_path: str, tags: dict[str, str]) -> VersionRef:
    """Create a new version of ``name`` from a run's artifact directory."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description="Instruction-tuned assistant registered by tunegate")
    source = f"{c.get_run(run_id).info.artifact_uri}/{artifact_path}"
    mv = c.create_model_version(name, source=source, run_id=run_id, tags=tags)
    return _ref(mv)


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, str(version))


def set_version_tag(name: str, version: str, key: str, value: str) -> None:
    client().set_model_version_tag(name, str(version), key, value)


def download_version(ref: VersionRef, dest: Path | None = None) -> Path:
    """Download a registered version's files; returns the local directory."""
    import mlflow

    dest = dest or Path(tempfile.mkdtemp(prefix=f"tunegate-{ref.name}-v{ref.version}-"))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.source, dst_path=str(dest)))
