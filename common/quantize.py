"""Which quantization modes exist, and whether one can run here (the NF4 layers are in `common.nf4`).

Light to import (torch loads inside the functions): settings classes name `Quantize` from here.

Two modes, as in litgpt's `bnb.nf4` / `bnb.nf4-dq`:
- `nf4`: 4-bit NormalFloat weights with per-block absmax scalers (one per 64 weights) kept exactly.
- `nf4-dq`: double quantization (QLoRA paper, 3.1): the scalers themselves stored as int8 around their
  mean with one scale factor per block of up to 256 scalers — torchao's `NF4Tensor.from_tensor`.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

if TYPE_CHECKING:
    import torch

QuantizeMode = Literal["nf4", "nf4-dq"]
Quantize = Literal["none", QuantizeMode]
"""The `--quantize` setting of finetune and serve: none (full precision), or a mode."""
QUANTIZE_MODES: tuple[str, ...] = get_args(QuantizeMode)

TORCHAO_MIN_VERSION = "0.18"  # NF4Tensor under `torchao.quantization` (tested with 0.18.0)
SUPPORTED_DEVICE_TYPES = ("cuda", "cpu")


class QuantizationUnavailableError(RuntimeError):
    """The quantized path was asked for where it cannot run; the message says what to install or drop."""


def _install_hint(instead: str) -> str:
    wheel = f"pip install 'torchao>={TORCHAO_MIN_VERSION}', a 3 MiB pure-PyTorch wheel"
    return f"install torchao ({wheel}), or {instead}"


def import_torchao(module: str, flag: str, instead: str) -> Any:
    """torchao's `module`; if it is missing, a QuantizationUnavailableError says what to install or do."""
    # torchao logs a warning per CUDA/cutlass extension it cannot load (always so on a CPU-only box) and
    # torch one on its pytree registrations; none concerns NF4 or the optimizers, so keep them quiet.
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise QuantizationUnavailableError(f"{flag} needs torchao ({e}): {_install_hint(instead)}") from e
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@functools.cache
def nf4_tensor_class() -> Any:
    """torchao's NF4Tensor class; raises QuantizationUnavailableError with what to install."""
    drop = "drop --quantize to train/serve the base in bf16"
    return import_torchao("torchao.quantization", "--quantize", drop).NF4Tensor


def parse_quantize_mode(mode: str) -> QuantizeMode:
    """`mode` checked against QUANTIZE_MODES; a ValueError names the valid ones."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")
    return cast(QuantizeMode, mode)


def check_quantize_support(
    mode: str, device: torch.device | str, *, devices: int = 1, compile_dequant: bool = False
) -> None:
    """Raise (with what to install or which flag to drop) unless `mode` can run on `device` here."""
    import torch

    parse_quantize_mode(mode)
    device = torch.device(device)
    if devices > 1:
        raise QuantizationUnavailableError(
            f"--quantize {mode} trains on one GPU (its point is a single small card): "
            f"drop --devices {devices}, or drop --quantize to train in bf16 across {devices} GPUs"
        )
    if device.type not in SUPPORTED_DEVICE_TYPES:
        raise QuantizationUnavailableError(
            f"--quantize {mode} runs on CUDA GPUs (and slowly on CPUs), not on {device.type!r}: "
            "drop --quantize, or run on a CUDA GPU"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise QuantizationUnavailableError(
            f"--quantize {mode} on {device} but this torch ({torch.__version__}) sees no CUDA GPU: install a "
            "CUDA build of torch (https://pytorch.org/get-started/locally/) or drop --quantize"
        )
    nf4_tensor_class()
    if compile_dequant and device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major < 7:
            raise QuantizationUnavailableError(
                f"compiled NF4 dequantization needs Triton, which needs a GPU of compute capability 7.0+ "
                f"({torch.cuda.get_device_name(device)} is {major}.x): drop the compile option"
            )
