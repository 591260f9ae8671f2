"""common/device.py: the one device resolver and the one dtype resolver every stage uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.device import DeviceUnavailableError, resolve_device, resolve_dtype

REPO = Path(__file__).resolve().parents[2]


def test_devices() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceUnavailableError, match="--accelerator 'tpu9' is not a device"):
        resolve_device("tpu9", "--accelerator")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="torch sees no CUDA GPU: use --device cpu"):
            resolve_device("cuda:1")


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("auto", torch.float32),  # on the CPU
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("bf16-true", torch.bfloat16),
        ("fp16", torch.float16),
        ("16-true", torch.float16),
        ("fp32", torch.float32),
        ("bf16-mixed", torch.float32),  # Lightning's mixed precision keeps float32 parameters
    ],
)
def test_every_spelling_of_a_dtype(precision: str, dtype: torch.dtype) -> None:
    assert resolve_dtype(precision, torch.device("cpu")) == dtype


def test_unknown_precision_names_the_choices() -> None:
    with pytest.raises(ValueError, match="one of auto, bf16, fp16, fp32; got 'int3'"):
        resolve_dtype("int3")


def test_settings_modules_name_the_choices_without_loading_torch() -> None:
    code = (
        "import sys, common.device, common.quantize, finetune.twin\n"
        "assert 'torch' not in sys.modules and 'litgpt' not in sys.modules, 'torch or litgpt loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
