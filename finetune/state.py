"""What a run leaves in its out-dir: resumable checkpoints, the adapter and the hyperparameters.

- `checkpoints/step-000050.pth`: LoRA tensors, optimizer, LR scheduler, step/epoch position and the
  settings that must not change on `--resume` (written to a temp name and renamed, so a kill never
  leaves a half-written newest checkpoint).
- `lit_model_lora_finetuned.pth`: a flat `{name: tensor}` dict of the LoRA tensors only, under
  litgpt's names (`transformer.h.0.attn.qkv.lora_A`, ...), loadable with `load_state_dict(strict=False)`
  into `litgpt.lora.GPT` and accepted by litgpt's `merge_lora`.
- `hyperparameters.yaml`: every resolved setting, flat, including litgpt merge_lora's keys
  (`lora_*`, `checkpoint_dir`, `precision`), `max_seq_length` and the adapter's spec (`finetune.twin`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from litgpt.lora import lora_filter

from common.files import make_private_dir, write_private_atomic
from finetune.errors import UserError
from finetune.twin import ADAPTER_FILE, CHECKPOINTS_DIR, HPARAMS_FILE, LORA_FIELDS

CHECKPOINT_RE = re.compile(r"^step-(\d{6,})\.pth$")

# Settings that shape the data order, the LR schedule or the model: a resumed run must keep them.
RESUME_KEYS = (
    "checkpoint_dir",
    "epochs",
    "max_steps",
    "global_batch_size",
    "length_grouping",
    "max_seq_length",
    "learning_rate",
    "warmup_steps",
    "weight_decay",
    "grad_clip",
    "seed",
    *LORA_FIELDS,
    "train_records",
    "train_fingerprint",
)


@dataclass
class Position:
    """Where training stands: optimizer steps done, and the epoch and step within it to run next."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINTS_DIR / f"step-{step:06d}.pth"


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp files of an interrupted save are ignored)."""
    folder = out_dir / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    fabric: L.Fabric,
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: Position,
    resume_key: dict[str, Any],
    keep: int,
) -> Path:
    """Write a resumable checkpoint (all ranks call this) and prune all but the newest `keep`."""
    path = checkpoint_path(out_dir, position.step)
    tmp = path.with_name(f".{path.name}.tmp")
    if fabric.is_global_zero:
        make_private_dir(path.parent)
    fabric.barrier()
    state = {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "position": vars(position).copy(),
        "resume_key": resume_key,
    }
    fabric.save(tmp, state, filter={"model": lora_filter})
    if fabric.is_global_zero:
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        for old in list_checkpoints(out_dir)[:-keep]:
            old.unlink()
    fabric.barrier()
    return path


def load_checkpoint(
    fabric: L.Fabric,
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    resume_key: dict[str, Any],
) -> Position:
    """Restore LoRA tensors, optimizer and scheduler in place; refuse a run with other settings."""
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    older = [p.name for p in list_checkpoints(path.parent.parent) if p != path]
    fix = (
        f"delete it to resume from {older[-1]}" if older else "delete it (and --resume starts from step 0)"
    ) + ", or start a new run in another --out-dir"
    if path.is_file():  # (FSDP writes a folder of shards, which Fabric checks itself)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception:  # cut short (a full disk, a copy that stopped) or not a torch file
            raise UserError(f"cannot resume from {path}: it is truncated or unreadable; {fix}") from None
        if not (isinstance(raw, dict) and isinstance(raw.get("position"), dict) and "resume_key" in raw):
            raise UserError(f"cannot resume from {path}: not a checkpoint of `python -m finetune`; {fix}")
        del raw
    remainder = fabric.load(path, state, strict=False, weights_only=False)
    saved = remainder.get("resume_key", {})
    changed = [
        f"{k} ({saved.get(k)!r} -> {resume_key.get(k)!r})"
        for k in RESUME_KEYS
        if saved.get(k) != resume_key.get(k)
    ]
    if changed:
        raise UserError(
            f"cannot resume {path}: these settings differ from the saved run: {', '.join(changed)}. "
            "Resume with the same settings and data, or start a new run in another --out-dir"
        )
    return Position(**remainder["position"])


def save_adapter(fabric: L.Fabric, model: torch.nn.Module, out_dir: Path) -> Path:
    """Write the LoRA tensors (only) as a flat dict to `lit_model_lora_finetuned.pth` (all ranks call)."""
    path = out_dir / ADAPTER_FILE
    tmp = out_dir / f".{ADAPTER_FILE}.gather"
    fabric.save(tmp, {"model": model}, filter={"model": lora_filter})  # gathers FSDP shards on rank 0
    if fabric.is_global_zero:
        lora = {k: v.detach().cpu() for k, v in torch.load(tmp, weights_only=True)["model"].items()}
        os.unlink(tmp)
        staging = path.with_name(f".{path.name}.tmp")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            torch.save(lora, f)
        os.replace(staging, path)
    fabric.barrier()
    return path


def save_hyperparameters(out_dir: Path, hparams: dict[str, Any]) -> Path:
    path = out_dir / HPARAMS_FILE
    write_private_atomic(path, yaml.safe_dump(hparams, sort_keys=False))
    return path
