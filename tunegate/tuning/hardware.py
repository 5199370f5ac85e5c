"""What this machine can train: settings that need a CUDA GPU or a package that is not installed."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunegate.params import Params


def _has_module(name: str) -> bool:
    """Whether ``name`` is installed, without importing it."""
    from importlib.util import find_spec

    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def hardware_problems(params: Params) -> list[str]:
    """Training settings this machine cannot run: QLoRA, bf16/fp16 and flash attention need CUDA.

    Imports torch only when a setting needs a GPU. ``tunegate.tuning.training.check_environment``
    raises on these sentences; the preflight reports them before a run starts.
    """
    t = params.train
    # (asked for, setting as params spell it, what it needs, its package, the fix without a GPU)
    needs = [
        (t.method == "qlora", "train.method: qlora", "a CUDA GPU (4-bit NF4 weights through bitsandbytes)",
         "bitsandbytes", "use train.method: lora or dora here"),
        (t.precision != "fp32", f"train.precision: {t.precision}", "a CUDA GPU", None,
         "set train.precision: fp32 (and train.device: cpu) here"),
        (t.attn_implementation == "flash_attention_2", "train.attn_implementation: flash_attention_2", "a CUDA GPU",
         "flash_attn", "set train.attn_implementation: sdpa (or remove it)"),
        (t.liger is True, "train.liger: true", "a CUDA GPU (Triton kernels)", "liger_kernel",
         "set train.liger: auto (on where it can run) or false"),
    ]
    if not any(asked for asked, *_ in needs):
        return []
    import torch

    cuda = bool(torch.cuda.is_available())
    on_cpu = "train.device is cpu" if cuda else "this machine has none"
    usable = cuda and t.device == "auto"
    problems: list[str] = []
    for asked, setting, need, package, fix in needs:
        if not asked:
            continue
        if not usable:
            problems.append(f"{setting} needs {need} and {on_cpu}; {fix}, or run on a GPU machine with train.device: auto")
        elif package and not _has_module(package):
            install = {"flash_attn": "flash-attn --no-build-isolation", "liger_kernel": "liger-kernel"}.get(package, package)
            problems.append(f"{setting} needs the {package} package: .venv/bin/pip install {install}")
        elif setting == "train.precision: bf16" and not torch.cuda.is_bf16_supported():
            problems.append(
                f"train.precision: bf16: the GPU ({torch.cuda.get_device_name(0)}) does not support bfloat16; "
                "set train.precision: fp16"
            )
    return problems


def liger_enabled(params: Params) -> bool:
    """Whether this run uses Liger's kernels: ``train.liger: true`` (checked above), or ``auto`` on a CUDA
    device with the liger-kernel package installed. Never on CPU; imports torch only off CPU."""
    t = params.train
    if t.liger is False or t.device == "cpu":
        return False
    if t.liger is True:
        return True
    if not _has_module("liger_kernel"):
        return False
    import torch

    return bool(torch.cuda.is_available())
