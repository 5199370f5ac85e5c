"""Loading and saving models and tokenizers (adapter over transformers and peft).

Security defaults: ``trust_remote_code`` is never enabled and weights load from
safetensors only. Nothing here reaches a hub: paths are local directories.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunegate.data.templates import load_tokenizer

MODEL_INFO_FILE = "tunegate_model.json"


@dataclass(frozen=True)
class ModelInfo:
    """What a saved tunegate model directory holds, written next to its weights."""

    method: str  # "lora" (adapter over base_model) or "full"
    base_model: str  # absolute local path of the base model
    chat_template: str  # the template used: a built-in's name or "tokenizer:<sha256 prefix>"
    stop_token_ids: tuple[int, ...] = ()  # generation ends on any of these (EOS, end-of-turn, ...)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME)."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def cached_snapshot(repo_id: str, cache_dir: Path) -> Path | None:
    """The local snapshot directory of hub model ``repo_id`` in ``cache_dir``, or None; file system only."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(cache_dir))
    except Exception:  # an id the hub would refuse (bad characters): not in any cache
        return None
    return Path(found).parent if isinstance(found, str) else None


def generation_config_for(model, tokenizer):
    """The model's generation config, stopping on every stop token (tokenizer EOS, the template's
    end-of-turn token, the model's own EOS list) and padding with the tokenizer's pad token."""
    import copy

    from transformers import GenerationConfig

    from tunegate.data.templates import stop_token_ids

    base = getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    stops = stop_token_ids(tokenizer, base)
    config.eos_token_id = stops[0] if len(stops) == 1 else stops
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    return config


def load_base_model(path: str | Path):
    import torch
    from transformers import AutoModelForCausalLM

    if Path(path).is_dir() and not any(Path(path).glob("*.safetensors")):
        raise FileNotFoundError(f"{path}: no *.safetensors weights (other formats are refused)")
    return AutoModelForCausalLM.from_pretrained(
        str(path), trust_remote_code=False, use_safetensors=True, dtype=torch.float32
    )


def save_model(model: Any, tokenizer: Any, out_dir: Path, info: ModelInfo, resolved_params: str) -> Path:
    """Save weights (adapter or full), tokenizer with its template, the generation config with every
    stop token (also beside an adapter, where ``save_pretrained`` writes none), params and model info."""
    out_dir.mkdir(parents=True, exist_ok=True)
    generation = generation_config_for(model, tokenizer)
    target = getattr(model, "get_base_model", lambda: model)()
    target.generation_config = generation
    model.save_pretrained(str(out_dir), safe_serialization=True)
    generation.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    stops = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    info = ModelInfo(info.method, info.base_model, info.chat_template, tuple(int(i) for i in stops if i is not None))
    (out_dir / MODEL_INFO_FILE).write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")
    (out_dir / "resolved_params.yaml").write_text(resolved_params, encoding="utf-8")
    return out_dir


def read_model_info(model_dir: Path) -> ModelInfo:
    raw = json.loads((Path(model_dir) / MODEL_INFO_FILE).read_text(encoding="utf-8"))
    raw["stop_token_ids"] = tuple(raw.get("stop_token_ids") or ())
    return ModelInfo(**raw)


def load_saved_model(model_dir: Path):
    """Load a directory written by :func:`save_model`; returns (model, tokenizer).

    The tokenizer keeps the template saved with it (the one training used); an adapter's base
    model gets the generation config saved beside the adapter, so it stops where training taught it.
    """
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    tokenizer = load_tokenizer(model_dir, None)
    if info.method == "full":
        return load_base_model(model_dir), tokenizer
    from peft import PeftModel
    from transformers import GenerationConfig

    base = load_base_model(info.base_model)
    if (model_dir / "generation_config.json").is_file():
        base.generation_config = GenerationConfig.from_pretrained(str(model_dir))
    return PeftModel.from_pretrained(base, str(model_dir)), tokenizer


def serving_base(base_model: str | Path, generation_dir: Path, home: Path) -> Path:
    """A base-model directory for ``mlflow.transformers`` to load an adapter onto: the base's files
    linked, its ``generation_config.json`` replaced by the adapter's (with every stop token).

    MLflow loads a PEFT adapter over ``base_model_path`` and takes the generation config from
    there, so the base's own (EOS only) would let served answers run past the end of turn.
    Kept under ``$TUNEGATE_HOME/serving_bases/<hash of base path and config>``.
    """
    import hashlib
    import os

    base_model = Path(base_model)
    if not base_model.is_dir():  # a hub id: its snapshot in the local cache (the preflight made sure it is there)
        snapshot = cached_snapshot(str(base_model), hf_cache_dir())
        if snapshot is None:
            raise FileNotFoundError(f"base model {str(base_model)!r} is neither a directory nor in the Hugging Face cache")
        base_model = snapshot
    config_text = (generation_dir / "generation_config.json").read_text(encoding="utf-8")
    key = hashlib.sha256(f"{base_model.resolve()}\n{config_text}".encode()).hexdigest()[:16]
    out = home / "serving_bases" / f"{base_model.name}-{key}"
    if (out / "generation_config.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for item in base_model.iterdir():
        if item.name != "generation_config.json":
            (tmp / item.name).symlink_to(item.resolve())
    (tmp / "generation_config.json").write_text(config_text, encoding="utf-8")
    try:
        tmp.rename(out)
    except OSError:  # another process made it first: same content
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out
