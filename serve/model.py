"""Load a litgpt checkpoint, merge a LoRA adapter into its weights, and build random models for benchmarks.

Checkpoint folder: `model_config.yaml`, `lit_model.pth`, `tokenizer.json` (+ `tokenizer_config.json`).
Adapter: `lit_model_lora_finetuned.pth` (LoRA tensors only, litgpt key names) with `hyperparameters.yaml`
beside it (`lora_r`, `lora_alpha`, ... as the finetune stage writes them). The adapter is merged once at
load time with litgpt's own `merge_lora_weights`; the server then runs a plain `GPT` (no LoRA branches).

Imports only torch, litgpt and yaml (the GPU benchmark uses this module without the web stack).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from litgpt import lora
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("model_config.yaml", "lit_model.pth", "tokenizer.json")
LORA_KEYS = (
    "lora_r",
    "lora_alpha",
    "lora_query",
    "lora_key",
    "lora_value",
    "lora_projection",
    "lora_mlp",
    "lora_head",
)
HPARAMS_FILE = "hyperparameters.yaml"


class ModelLoadError(ValueError):
    """A checkpoint or adapter that cannot be served; the message says what to fix."""


def check_checkpoint_dir(checkpoint_dir: Path) -> None:
    if not checkpoint_dir.is_dir():
        raise ModelLoadError(
            f"checkpoint folder {str(checkpoint_dir)!r} does not exist: pass --checkpoint-dir "
            "(checkpoints/tiiuae/falcon-7b after `make download`, checkpoints/tiny-falcon after `make tiny`)"
        )
    missing = [name for name in CHECKPOINT_FILES if not (checkpoint_dir / name).is_file()]
    if missing:
        raise ModelLoadError(
            f"checkpoint folder {str(checkpoint_dir)!r} lacks {', '.join(missing)}: point --checkpoint-dir "
            "at a litgpt checkpoint (`litgpt download ...` or `make tiny` writes one)"
        )


def load_tokenizer(checkpoint_dir: Path) -> Tokenizer:
    check_checkpoint_dir(checkpoint_dir)
    return Tokenizer(checkpoint_dir)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    return state.get("model", state)


def read_lora_hparams(lora_path: Path) -> dict[str, Any]:
    """The LoRA hyperparameters from the `hyperparameters.yaml` next to the adapter file."""
    hparams_file = lora_path.parent / HPARAMS_FILE
    if not hparams_file.is_file():
        raise ModelLoadError(
            f"{str(hparams_file)!r} is missing: the adapter's out-dir must hold the hyperparameters.yaml "
            "that `python -m finetune` writes next to lit_model_lora_finetuned.pth"
        )
    hparams = yaml.safe_load(hparams_file.read_text(encoding="utf-8")) or {}
    missing = [key for key in LORA_KEYS if key not in hparams]
    if missing:
        raise ModelLoadError(f"{str(hparams_file)!r} lacks {', '.join(missing)}")
    return {key: hparams[key] for key in LORA_KEYS}


def check_adapter(lora_path: Path) -> None:
    if not lora_path.is_file():
        raise ModelLoadError(
            f"LoRA adapter {str(lora_path)!r} does not exist: pass --lora-path "
            "out/twin/lit_model_lora_finetuned.pth (written by `make train`), or none to serve the base model"
        )
    read_lora_hparams(lora_path)


def merge_lora(
    config: Config, base: dict[str, torch.Tensor], lora_path: Path, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Base weights + LoRA adapter → merged plain-GPT weights (on `device`, in `dtype`)."""
    check_adapter(lora_path)
    adapter = _load_state(lora_path)
    if not adapter or any("lora_" not in key for key in adapter):
        raise ModelLoadError(
            f"{str(lora_path)!r} is not a LoRA adapter (expected only lora_A/lora_B tensors)"
        )
    lora_config = lora.Config(**{**asdict(config), **read_lora_hparams(lora_path), "lora_dropout": 0.0})
    with torch.device("meta"):
        model = lora.GPT(lora_config)
    weights = {k: v.to(device=device, dtype=dtype) for k, v in {**base, **adapter}.items()}
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelLoadError(
            f"{str(lora_path)!r} does not fit the checkpoint and its hyperparameters.yaml "
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
    """The checkpoint's GPT on `device` in `dtype`, with the adapter (if any) merged into its weights;
    with `quantize` (nf4, nf4-dq) the base in NF4 and the adapter on top, unmerged."""
    check_checkpoint_dir(checkpoint_dir)
    config = Config.from_file(checkpoint_dir / "model_config.yaml")
    base = _load_state(checkpoint_dir / "lit_model.pth")
    if quantize != "none":
        return load_quantized(config, base, lora_path, device, dtype, quantize)
    if lora_path is not None:
        state = merge_lora(config, base, lora_path, device, dtype)
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
    from finetune.quantize import QuantizationUnavailableError, check_quantize_support

    try:
        check_quantize_support(mode, device)
    except QuantizationUnavailableError as e:
        raise ModelLoadError(str(e)) from e


def load_quantized(
    config: Config,
    base: dict[str, torch.Tensor],
    lora_path: Path | None,
    device: torch.device,
    dtype: torch.dtype,
    mode: str,
) -> GPT:
    """The base in NF4 (finetune.quantize), quantized layer by layer on `device`, with the adapter applied
    on top of it, not merged: merging would re-quantize the weights and round most of the adapter away.

    Returns litgpt's LoRA GPT (a `GPT`), its LoRA-less layers unwrapped so that it looks like a plain one.
    """
    from finetune.quantize import load_quantized_model, strip_unused_lora

    check_quantize(mode, device)
    hparams = read_lora_hparams(lora_path) if lora_path is not None else {"lora_r": 0}
    lora_config = lora.Config(**{**asdict(config), **hparams, "lora_dropout": 0.0})
    try:
        model = load_quantized_model(lora_config, base, mode, device, dtype)
    except ValueError as e:
        raise ModelLoadError(f"lit_model.pth does not match its model_config.yaml: {e}") from e
    if lora_path is not None:
        adapter = _load_state(lora_path)
        if not adapter or any("lora_" not in key for key in adapter):
            raise ModelLoadError(
                f"{str(lora_path)!r} is not a LoRA adapter (expected only lora_A/lora_B tensors)"
            )
        try:
            result = model.load_state_dict(adapter, strict=False)
            problems = [f"missing {k}" for k in result.missing_keys if "lora_" in k]
            problems += [f"unexpected {k}" for k in result.unexpected_keys]
        except RuntimeError as e:  # shape mismatches
            problems = [str(e)]
        if problems:
            raise ModelLoadError(
                f"{str(lora_path)!r} does not fit the checkpoint and its hyperparameters.yaml "
                f"(trained on another base model?): {'; '.join(problems[:4])}"
            )
    strip_unused_lora(model)
    return model.eval().requires_grad_(False)


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
