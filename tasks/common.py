"""Small values passed between tasks."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunContext:
    run_id: str
    commit: str
    work_dir: str


@dataclass(frozen=True)
class DataRef:
    train_path: str
    eval_path: str
    data_md5: str
    n_train: int
    n_eval: int
    canonical_md5: str = ""
    eval_md5: str = ""
    sources: dict[str, str] = field(default_factory=dict)  # source name -> md5 of its file


@dataclass(frozen=True)
class BaselineRef:
    source: str  # "champion" | "base_model"
    version: str | None
    model_dir: str | None  # None: the base model itself
