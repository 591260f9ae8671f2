"""Build the served model: a litgpt checkpoint with its LoRA adapter merged in; random ones for benchmarks.

What a checkpoint folder and an adapter are, and how they are checked and read, is `finetune.twin` (the
trained-twin contract); this module only builds the model from them. The adapter is merged once at load
time with litgpt's own `merge_lora_weights`; the server then runs a plain `GPT` (no LoRA branches). With
`quantize` the base is held in NF4 (`common.nf4`) and the adapter stays on top of it, unmerged; the
engine's fused NF4 blocks (`serve.blocks_nf4`) repack it once and decode with 4-bit GEMVs.

Imports only torch, litgpt, `common` and the twin contract (the GPU benchmark uses it without the web stack).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from litgpt import lora
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer

from common.nf4 import load_quantized_model, strip_unused_lora
from common.quantize import QuantizationUnavailableError, check_quantize_support
from finetune.twin import (
    Adapter,
    TwinError,
    check_base,
    check_checkpoint_dir,
    load_adapter,
    load_base_config,
    load_base_weights,
    lora_config,
)

log = logging.getLogger(__name__)

ModelLoadError = TwinError
"""A checkpoint or adapter that cannot be served (the contract's error); the message says what to fix."""


def load_tokenizer(checkpoint_dir: Path) -> Tokenizer:
    check_checkpoint_dir(checkpoint_dir)
    return Tokenizer(checkpoint_dir)


def merge_lora(
    config: Config, base: dict[str, torch.Tensor], adapter: Adapter, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Base weights + LoRA adapter → merged plain-GPT weights (on `device`, in `dtype`)."""
    with torch.device("meta"):
        model = lora.GPT(lora_config(config, adapter.spec))
    weights = {k: v.to(device=device, dtype=dtype) for k, v in {**base, **adapter.tensors}.items()}
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelLoadError(
            f"{str(adapter.path)!r} does not fit the checkpoint and its hyperparameters.yaml "
            f"(trained on another base model?): {e}"
        ) from e
    lora.merge_lora_weights(model)
    # litgpt's merge script does the same: drop lora_A/B and the `linear.` level of LoRALinear
    return {k.replace("linear.", ""): v for k, v in model.state_dict().items() if not lora.lora_filter(k, v)}


def load_model(
    checkpoint_dir: Path,
    lora_path: Path | None,
    device: torch.device,
    dtype: torch.dtype,
    quantize: str = "none",
) -> GPT:
    """The checkpoint's GPT on `device` in `dtype`, with the adapter (its file or out-dir; if any) merged
    into its weights; with `quantize` (nf4, nf4-dq) the base in NF4 and the adapter on top, unmerged."""
    config = load_base_config(checkpoint_dir)
    adapter = None
    if lora_path is not None:
        adapter = load_adapter(lora_path)
        check_base(adapter.spec, config, checkpoint_dir)
    base = load_base_weights(checkpoint_dir, config)
    if quantize != "none":
        return load_quantized(config, base, adapter, device, dtype, quantize)
    if adapter is not None:
        state = merge_lora(config, base, adapter, device, dtype)
    else:
        state = {k: v.to(device=device, dtype=dtype) for k, v in base.items()}
    with torch.device("meta"):
        model = GPT(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelLoadError(
            f"lit_model.pth in {str(checkpoint_dir)!r} does not match its model_config.yaml: {e}"
        ) from e
    model.cos, model.sin = model.rope_cache(device=device)  # buffers built on meta above
    return model.eval().requires_grad_(False)


def check_quantize(mode: str, device: torch.device) -> None:
    """Fail early, with what to install or which flag to drop, where `--quantize mode` cannot run."""
    try:
        check_quantize_support(mode, device)
    except QuantizationUnavailableError as e:
        raise ModelLoadError(str(e)) from e


def load_quantized(
    config: Config,
    base: dict[str, torch.Tensor],
    adapter: Adapter | None,
    device: torch.device,
    dtype: torch.dtype,
    mode: str,
) -> GPT:
    """The base in NF4 (common.nf4), quantized layer by layer on `device`, with the adapter applied on
    top of it, not merged: merging would re-quantize the weights and round most of the adapter away.

    Returns litgpt's LoRA GPT (a `GPT`), its LoRA-less layers unwrapped so that it looks like a plain one.
    """
    check_quantize(mode, device)
    if adapter is not None:
        quantized_config = lora_config(config, adapter.spec)
    else:
        quantized_config = lora.Config(**asdict(config), lora_r=0, lora_dropout=0.0)
    try:
        model = load_quantized_model(quantized_config, base, mode, device, dtype)
    except ValueError as e:
        raise ModelLoadError(f"lit_model.pth does not match its model_config.yaml: {e}") from e
    if adapter is not None:
        load_lora_tensors(model, adapter)
    strip_unused_lora(model)
    return model.eval().requires_grad_(False)


def load_lora_tensors(model: lora.GPT, adapter: Adapter, assign: bool = False) -> None:
    """Put the adapter's LoRA tensors into litgpt's LoRA GPT (its base weights untouched); refuses an
    adapter that does not fit, naming the file and the first mismatches."""
    try:
        result = model.load_state_dict(adapter.tensors, strict=False, assign=assign)
        problems = [f"missing {k}" for k in result.missing_keys if "lora_" in k]
        problems += [f"unexpected {k}" for k in result.unexpected_keys]
    except RuntimeError as e:  # shape mismatches
        problems = [str(e)]
    if problems:
        raise ModelLoadError(
            f"{str(adapter.path)!r} does not fit the checkpoint and its hyperparameters.yaml "
            f"(trained on another base model?): {'; '.join(problems[:4])}"
        )


def random_model(config: Config, device: torch.device, dtype: torch.dtype, seed: int = 0) -> GPT:
    """A GPT of `config`'s shape with random weights (benchmarks: speed does not depend on the values)."""
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = GPT(config)
    finally:
        torch.set_default_dtype(default_dtype)
    return model.eval().requires_grad_(False)
