"""Which device a stage runs on and which dtype its weights are held in: one resolver each.

torch is imported inside the functions, so a settings class can name `Precision` without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Precision = Literal["auto", "bf16", "fp16", "fp32"]
"""The dtype weights are held in; auto: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on a CPU."""

# every spelling the stages use: Precision's, torch's (export --dtype) and Lightning's (finetune
# --precision, whose mixed settings keep the parameters in float32)
_DTYPE_NAMES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "bf16-true": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "16-true": "float16",
    "fp32": "float32",
    "float32": "float32",
    "32-true": "float32",
    "bf16-mixed": "float32",
    "16-mixed": "float32",
    "64-true": "float64",
}


class DeviceUnavailableError(ValueError):
    """The device asked for is not there; the message says which flag to change."""


def resolve_device(name: str = "auto", flag: str = "--device") -> torch.device:
    """`name` (auto, cpu, cuda, cuda:1, ...) as a torch device; auto is cuda when torch sees a GPU, else cpu.

    `flag` is the option the user set, named in the error when the device is not there.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceUnavailableError(f"{flag} {name!r} is not a device: use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"{flag} {name} asked for, but torch sees no CUDA GPU: use {flag} cpu")
    return device


def resolve_dtype(precision: str, device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype of weights held in `precision` on `device`.

    `precision` is a `Precision` (auto picks by device), a torch dtype name (bfloat16, float32, ...) or a
    Lightning precision (bf16-true; a mixed one keeps float32 parameters).
    """
    import torch

    if precision == "auto":
        device = torch.device(device)
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if precision not in _DTYPE_NAMES:
        raise ValueError(f"precision must be one of auto, bf16, fp16, fp32; got {precision!r}")
    return getattr(torch, _DTYPE_NAMES[precision])
