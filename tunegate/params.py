"""Run parameters: YAML files validated into pydantic models.

One YAML file per run variant lives in ``params/``; ``dvc.yaml`` reads the same
files. Unknown keys and bad values fail at load time with a message that names
the file, the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunegate.paths import repo_root


class ParamsError(ValueError):
    """A params file or override that cannot be used, with a readable explanation."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectParams(_Section):
    name: str = Field("tunegate-demo", description="MLflow experiment name")
    seed: int = Field(42, description="global seed for torch, python and numpy")


class ModelParams(_Section):
    base_model: str = Field(..., description="local path (relative to the repo root) of a HF model")
    registered_name: str = Field(..., min_length=1, description="MLflow registered model name")
    chat_template: Literal["alpaca", "chatml"] = Field(
        "alpaca", description="used when the tokenizer has no chat template of its own"
    )


class DemoDataParams(_Section):
    seed: int = 1234
    train_per_family: int = Field(400, ge=1)
    eval_per_family: int = Field(40, ge=1)
    families: list[str] = Field(min_length=1)
    out_dir: str = "data/demo"


class DataParams(_Section):
    train_path: str = "data/demo/train.jsonl"
    eval_path: str = "data/demo/eval.jsonl"
    dvc_stage: str | None = Field(
        "demo_data", description="dvc.yaml stage that produces the data; null for user data"
    )


class ValidationParams(_Section):
    min_records: int = Field(1, ge=1)


class TrainParams(_Section):
    method: Literal["lora", "full"] = "lora"
    device: Literal["cpu", "auto"] = "cpu"
    epochs: float = Field(4, gt=0)
    max_steps: int = Field(-1, description="-1: run the full number of epochs")
    learning_rate: float = Field(5e-3, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(128, ge=8)
    logging_steps: int = Field(10, ge=1)
    lora_r: int = Field(32, ge=1)
    lora_alpha: int = Field(64, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    modules_to_save: list[str] = Field(
        default_factory=lambda: ["lm_head"],
        description="trained in full next to the adapter; lm_head lets a tiny model learn EOS",
    )


class EvalParams(_Section):
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(64, ge=1)


class GateParams(_Section):
    primary_metric: Literal["exact_match"] = "exact_match"
    min_improvement: float = Field(
        0.05, description="candidate - baseline on the primary metric must be at least this"
    )
    max_family_regression: float = Field(
        0.05, ge=0, description="no task family may lose more than this (absolute)"
    )


class Params(_Section):
    project: ProjectParams = ProjectParams()
    model: ModelParams
    demo_data: DemoDataParams | None = None
    data: DataParams = DataParams()
    validation: ValidationParams = ValidationParams()
    train: TrainParams = TrainParams()
    eval: EvalParams = EvalParams()
    gate: GateParams = GateParams()

    @model_validator(mode="after")
    def _stage_needs_demo_data(self) -> Params:
        if self.data.dvc_stage == "demo_data" and self.demo_data is None:
            raise ValueError("data.dvc_stage is 'demo_data' but there is no demo_data section")
        return self

    def base_model_path(self) -> Path:
        return resolve_path(self.model.base_model)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to scalar values, the form MLflow params take."""
        return flatten(self.model_dump(mode="json"))


def resolve_path(value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else (repo_root() / path).resolve()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides; the value is parsed as YAML (``3``, ``true``, ``[a, b]``)."""
    result = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set {item!r}: expected section.key=value")
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ParamsError(f"--set {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(value)
    return result


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model that holds the key at ``loc``'s parent."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return sorted(getattr(current, "model_fields", {}))


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid params"]
    for item in error.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(Params, loc))
            lines.append(f"  {key}: unknown key; allowed keys here: {allowed}")
        else:
            got = item.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {key}: {item['msg']}{shown}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: str) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, source)) from None


def load_params(path: Path, overrides: list[str] | None = None) -> Params:
    """Load and validate a params file, applying ``--set`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    raw = apply_overrides(raw, overrides or [])
    return parse_params(raw, str(path))


def dump_params(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
