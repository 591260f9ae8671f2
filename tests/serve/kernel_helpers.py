"""Helpers of the Triton kernel tests: the bf16/fp32 closeness they share, and compiling a kernel for an
H200 (sm_90) through Triton's own compiler in a fresh process, without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Equal within the kernels' rounding: fp32 tight; bf16 1-2 ulps of the output (the kernels round
    where the modules round, but sum in another order)."""
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 0.07, "rtol": 0.02}
    torch.testing.assert_close(actual.float(), expected.float(), **tol)


def compile_for_sm90(code: str, tmp_path: Path) -> list[int]:
    """Run `code` (which compiles kernels to sm_90 and prints one integer a kernel) in a new Python
    process without the interpreter and with an empty Triton cache; the integers it printed. Skips where
    this machine has no ptxas for sm_90."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile, not a cached kernel
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=600
    )
    if proc.returncode and "ptxas" in proc.stderr.lower():
        pytest.skip(f"no ptxas for sm_90 here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [int(line) for line in proc.stdout.split()]
