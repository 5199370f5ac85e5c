"""Loading and saving models and tokenizers (adapter over transformers and peft).

Security defaults: ``trust_remote_code`` is never enabled and weights load from
safetensors only. Nothing here reaches a hub: paths are local directories.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunegate.templates import chat_template

MODEL_INFO_FILE = "tunegate_model.json"


@dataclass(frozen=True)
class ModelInfo:
    """What a saved tunegate model directory holds, written next to its weights."""

    method: str  # "lora" (adapter over base_model) or "full"
    base_model: str  # absolute local path of the base model
    chat_template: str


def model_source(name: str) -> str:
    """A local model directory (absolute, resolved against the repo root) or, when no such
    directory exists and the name looks like ``org/model``, the Hugging Face hub id as given.

    Hub ids load only where the hub is reachable and ``HF_HUB_OFFLINE=0`` (a GPU machine), or
    from the local HF cache.
    """
    from tunegate.params import resolve_path

    local = resolve_path(name)
    if local.is_dir() or Path(name).is_absolute() or name.startswith("."):
        return str(local)
    return name


def load_tokenizer(path: str | Path, template_name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if not tokenizer.chat_template:
        tokenizer.chat_template = chat_template(template_name)
    if tokenizer.pad_token is None:
        # stories260K has no pad token; unk never occurs in the demo data.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_base_model(path: str | Path):
    import torch
    from transformers import AutoModelForCausalLM

    if Path(path).is_dir() and not any(Path(path).glob("*.safetensors")):
        raise FileNotFoundError(f"{path}: no *.safetensors weights (other formats are refused)")
    return AutoModelForCausalLM.from_pretrained(
        str(path), trust_remote_code=False, use_safetensors=True, dtype=torch.float32
    )


def save_model(model: Any, tokenizer: Any, out_dir: Path, info: ModelInfo, resolved_params: str) -> Path:
    """Save weights (adapter or full), tokenizer with its template, params and model info."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / MODEL_INFO_FILE).write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")
    (out_dir / "resolved_params.yaml").write_text(resolved_params, encoding="utf-8")
    return out_dir


def read_model_info(model_dir: Path) -> ModelInfo:
    return ModelInfo(**json.loads((Path(model_dir) / MODEL_INFO_FILE).read_text(encoding="utf-8")))


def load_saved_model(model_dir: Path):
    """Load a directory written by :func:`save_model`; returns (model, tokenizer)."""
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    tokenizer = load_tokenizer(model_dir, info.chat_template)
    if info.method == "full":
        return load_base_model(model_dir), tokenizer
    from peft import PeftModel

    base = load_base_model(info.base_model)
    return PeftModel.from_pretrained(base, str(model_dir)), tokenizer
