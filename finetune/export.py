"""Export the twin for the wider ecosystem: a Hugging Face transformers model or a PEFT LoRA adapter.

    python -m finetune.export --checkpoint-dir CKPT --lora-path ADAPTER --out DIR [--format merged|peft]

`merged` (default) folds the LoRA update into the base weights and converts them with litgpt's Falcon
converter into a transformers `FalconForCausalLM` folder (config.json, model*.safetensors, tokenizer files,
generation_config.json) that vLLM, TGI or `AutoModelForCausalLM` load as is. `peft` writes a PEFT LoRA
adapter (adapter_config.json + adapter_model.safetensors) for the HF Falcon base; when that base is not on
the Hugging Face Hub (the tiny demo checkpoint), its converted weights go to `OUT/base/`.

litgpt fuses q, k and v into one `attn.qkv` layer with a separate rank-r LoRA per enabled part (A is
`(r·n, in)`, B the n parts stacked). HF Falcon's `query_key_value` is one linear layer too, so the update
maps exactly onto one LoRA of rank `R = r·n`: A' = the n A-blocks stacked, B' = block-diagonal (zeros for
the q/k/v parts that are off) with its rows permuted into HF's head layout, and alpha' = alpha·n keeps
alpha'/R = alpha/r. Other layers are padded with zeros to the same rank so the adapter has one rank and
one alpha, which every LoRA loader understands.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from litgpt.config import Config
from litgpt.scripts.convert_lit_checkpoint import qkv_reassemble
from tqdm import tqdm

from common.files import make_private_dir, write_private_atomic
from finetune.errors import UserError
from finetune.hf_falcon import (
    base_weights,
    copy_tokenizer,
    falcon_problems,
    save_private_safetensors,
    token_ids,
    write_hf_model,
)

log = logging.getLogger(__name__)

FORMATS = ("merged", "peft")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ADAPTER_FILE = "lit_model_lora_finetuned.pth"
HPARAMS_FILE = "hyperparameters.yaml"
# litgpt module (inside a block, or at the top) → its HF Falcon name; the LoRA flag that enables it
LIT_TO_HF = {
    "attn.qkv": "query_key_value",
    "attn.proj": "dense",
    "mlp.fc": "dense_h_to_4h",
    "mlp.proj": "dense_4h_to_h",
}
FLAG_OF = {
    "attn.proj": "lora_projection",
    "mlp.fc": "lora_mlp",
    "mlp.proj": "lora_mlp",
    "lm_head": "lora_head",
}


@dataclass(frozen=True)
class LoraSpec:
    """The LoRA settings of a fine-tuning run (the `lora_*` keys of its hyperparameters.yaml)."""

    lora_r: int
    lora_alpha: float
    lora_dropout: float = 0.0
    lora_query: bool = False
    lora_key: bool = False
    lora_value: bool = False
    lora_projection: bool = False
    lora_mlp: bool = False
    lora_head: bool = False

    @property
    def qkv(self) -> tuple[bool, bool, bool]:
        return (self.lora_query, self.lora_key, self.lora_value)

    @property
    def n_qkv(self) -> int:
        """How many of q, k, v carry an update (the factor between litgpt's and HF's rank)."""
        return sum(self.qkv)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.lora_r

    @property
    def export_rank(self) -> int:
        """The single rank of the exported adapter (the fused qkv LoRA needs r per enabled part)."""
        return self.lora_r * max(1, self.n_qkv)


# ------------------------------------------------------------------------------------------ reading inputs
def resolve_adapter(lora_path: Path) -> tuple[Path, Path]:
    """(adapter .pth, hyperparameters.yaml) from the adapter file or the finetune out-dir holding it."""
    pth = lora_path / ADAPTER_FILE if lora_path.is_dir() else lora_path
    if not pth.is_file():
        raise UserError(
            f"no LoRA adapter at {lora_path}: train one first (`make train`, or `make demo` for the tiny "
            f"model), then pass the {ADAPTER_FILE} it wrote or its out-dir, e.g. --lora-path out/twin"
        )
    hparams = pth.parent / HPARAMS_FILE
    if not hparams.is_file():
        raise UserError(
            f"{hparams} is missing: the adapter's LoRA settings (rank, alpha, layers) are read from it"
        )
    return pth, hparams


def load_lora_spec(hparams_path: Path) -> LoraSpec:
    try:
        hparams = yaml.safe_load(hparams_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{hparams_path} is not valid YAML: {e}") from None
    if not isinstance(hparams, dict):
        raise UserError(f"{hparams_path}: expected a mapping of hyperparameters")
    known = {k: hparams[k] for k in LoraSpec.__dataclass_fields__ if k in hparams}
    if "lora_r" not in known or "lora_alpha" not in known:
        raise UserError(f"{hparams_path} has no lora_r/lora_alpha: is it a `python -m finetune` out-dir?")
    spec = LoraSpec(**known)
    if (
        spec.lora_r < 1
        or not any(getattr(spec, f) for f in ("lora_projection", "lora_mlp", "lora_head"))
        and not spec.n_qkv
    ):
        raise UserError(
            f"{hparams_path}: the adapter has no LoRA layers (lora_r={spec.lora_r}, no layer enabled)"
        )
    return spec


def load_config(checkpoint_dir: Path) -> Config:
    if (
        not (checkpoint_dir / "model_config.yaml").is_file()
        or not (checkpoint_dir / "lit_model.pth").is_file()
    ):
        raise UserError(
            f"{checkpoint_dir} is not a litgpt checkpoint (model_config.yaml + lit_model.pth): run "
            "`make download` for Falcon-7B or `python -m finetune.tiny` for the tiny demo model"
        )
    return Config.from_file(checkpoint_dir / "model_config.yaml")


def load_adapter(pth: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise UserError(f"cannot read the adapter {pth}: {e}") from None
    sd = sd.get("model", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or not any("lora_A" in k for k in sd):
        raise UserError(f"{pth} holds no LoRA tensors (lora_A/lora_B): is it a `python -m finetune` adapter?")
    return {k.replace(".linear.", "."): v for k, v in sd.items() if "lora_" in k}


# ------------------------------------------------------------------------------- the LoRA update, per layer
def module_names(config: Config, spec: LoraSpec) -> list[str]:
    """litgpt names of the layers that carry LoRA (`transformer.h.0.attn.qkv`, ..., `lm_head`)."""
    names = []
    for i in range(config.n_layer):
        if spec.n_qkv:
            names.append(f"transformer.h.{i}.attn.qkv")
        for sub in ("attn.proj", "mlp.fc", "mlp.proj"):
            if getattr(spec, FLAG_OF[sub]):
                names.append(f"transformer.h.{i}.{sub}")
    if spec.lora_head:
        names.append("lm_head")
    return names


def qkv_part_sizes(config: Config) -> tuple[int, int, int]:
    return (
        config.n_head * config.head_size,
        config.n_query_groups * config.head_size,
        config.n_query_groups * config.head_size,
    )


def lora_factors(
    name: str, adapter: Mapping[str, torch.Tensor], config: Config, spec: LoraSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of one layer in litgpt's row layout with ΔW = B @ A · scaling, at rank `spec.export_rank`."""
    try:
        a, b = adapter[f"{name}.lora_A"], adapter[f"{name}.lora_B"]
    except KeyError as e:
        raise UserError(
            f"the adapter has no {e.args[0]}: it does not match its hyperparameters.yaml"
        ) from None
    r, rank = spec.lora_r, spec.export_rank
    if name.endswith("attn.qkv"):
        sizes = qkv_part_sizes(config)
        enabled = [s for s, on in zip(sizes, spec.qkv, strict=True) if on]
        if a.shape[0] != r * len(enabled) or b.shape != (sum(enabled), r):
            raise UserError(
                f"{name}: LoRA shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit r={r} on "
                f"q,k,v={spec.qkv} of this checkpoint: is --checkpoint-dir the base it was trained on?"
            )
        full_b = b.new_zeros(sum(sizes), rank)  # (q+k+v rows, R): block-diagonal, zero rows for parts off
        row, col, part = 0, 0, 0
        for size, on in zip(sizes, spec.qkv, strict=True):
            if on:
                full_b[row : row + size, col : col + r] = b[part : part + size]
                col += r
                part += size
            row += size
        return a, full_b  # A is already the enabled A-blocks stacked: (R, in)
    if a.shape[0] != r or b.shape[1] != r:
        raise UserError(f"{name}: LoRA rank {a.shape[0]} does not match lora_r={r} in hyperparameters.yaml")
    pad = rank - r  # zero rows of A and columns of B leave B @ A unchanged
    return torch.cat([a, a.new_zeros(pad, a.shape[1])]), torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1)


def hf_module_name(name: str) -> str:
    """`transformer.h.3.attn.qkv` → `transformer.h.3.self_attention.query_key_value`, and so on."""
    if name == "lm_head":
        return name
    layer, kind = name.removeprefix("transformer.h.").split(".", 1)
    parent = "self_attention" if kind.startswith("attn.") else "mlp"
    return f"transformer.h.{layer}.{parent}.{LIT_TO_HF[kind]}"


@torch.inference_mode()
def export_merged(checkpoint_dir: Path, lora_path: Path, out: Path, dtype: str = "auto") -> list[Path]:
    """LoRA merged into the base, written as an HF transformers Falcon folder; returns the weight files."""
    config, spec, adapter = check_inputs(checkpoint_dir, lora_path)
    lit = dict(base_weights(checkpoint_dir))
    target = resolve_dtype(dtype)
    for name in tqdm(module_names(config, spec), desc="merging LoRA", unit="layer"):
        a, b = lora_factors(name, adapter, config, spec)
        weight = lit[f"{name}.weight"]
        delta = (b.float() @ a.float()) * spec.scaling  # (out, in), litgpt's row layout
        lit[f"{name}.weight"] = (weight.float() + delta).to(weight.dtype if target is None else target)
    return write_hf_model(lit, config, checkpoint_dir, out, target or next(iter(lit.values())).dtype)


@torch.inference_mode()
def export_peft(
    checkpoint_dir: Path, lora_path: Path, out: Path, base_model: str | None = None, dtype: str = "auto"
) -> list[Path]:
    """A PEFT LoRA adapter for the HF Falcon base (which goes to OUT/base unless it is on the Hub)."""
    config, spec, adapter = check_inputs(checkpoint_dir, lora_path)
    make_private_dir(out)
    files: list[Path] = []
    if base_model is None:
        hub = config.hf_config or {}
        if hub.get("org") and hub.get("name"):
            base_model = f"{hub['org']}/{hub['name']}"
        else:
            lit = base_weights(checkpoint_dir)
            files += write_hf_model(
                dict(lit),
                config,
                checkpoint_dir,
                out / "base",
                resolve_dtype(dtype) or next(iter(lit.values())).dtype,
            )
            base_model = str((out / "base").resolve())
    tensors: dict[str, torch.Tensor] = {}
    targets = set()
    for name in tqdm(module_names(config, spec), desc="mapping LoRA", unit="layer"):
        a, b = lora_factors(name, adapter, config, spec)
        if name.endswith("attn.qkv"):
            b = qkv_reassemble(b, config)  # rows into HF's per-group [q.., k, v] layout, as the weights
        hf_name = hf_module_name(name)
        targets.add(hf_name.rsplit(".", 1)[-1])
        tensors[f"base_model.model.{hf_name}.lora_A.weight"] = a
        tensors[f"base_model.model.{hf_name}.lora_B.weight"] = b
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": spec.export_rank,
        "lora_alpha": spec.lora_alpha * max(1, spec.n_qkv),  # alpha'/R == alpha/r
        "lora_dropout": spec.lora_dropout,
        "target_modules": sorted(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    write_private_atomic(out / "adapter_config.json", json.dumps(adapter_config, indent=2) + "\n")
    save_private_safetensors(tensors, out / "adapter_model.safetensors", {"format": "pt"})
    bos_id, eos_id = token_ids(checkpoint_dir)
    copy_tokenizer(checkpoint_dir, out, bos_id, eos_id)
    return [out / "adapter_model.safetensors", *files]


def resolve_dtype(dtype: str) -> torch.dtype | None:
    """None for `auto` (keep the checkpoint's dtype), else the named torch dtype."""
    return None if dtype == "auto" else getattr(torch, dtype)


def check_inputs(checkpoint_dir: Path, lora_path: Path) -> tuple[Config, LoraSpec, dict[str, torch.Tensor]]:
    config = load_config(checkpoint_dir)
    if problems := falcon_problems(config):
        raise UserError(
            "this checkpoint has no exact Hugging Face Falcon equivalent, so it cannot be exported: "
            + "; ".join(problems)
        )
    pth, hparams = resolve_adapter(lora_path)
    spec = load_lora_spec(hparams)
    return config, spec, load_adapter(pth)


# -------------------------------------------------------------------------------------------------- CLI
def option(default: Any = MISSING, help: str = "", choices: Sequence[str] | None = None) -> Any:
    """A dataclass field that is also a CLI flag: its default and help live here and nowhere else."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class ExportArgs:
    """What `python -m finetune.export` exports, and where (saved as export.json next to the output)."""

    checkpoint_dir: Path = option(help="the litgpt base checkpoint the adapter was trained on")
    lora_path: Path = option(help="the adapter (lit_model_lora_finetuned.pth) or its finetune out-dir")
    out: Path = option(Path("out/twin-hf"), "the folder to write")
    format: str = option("merged", "merged: a full transformers model; peft: a LoRA adapter", FORMATS)
    dtype: str = option("auto", "weight dtype of the written model (auto: the base checkpoint's)", DTYPES)
    base_model: str | None = option(
        None, "peft: the base's HF name or path to record (default: its Hub name, else OUT/base)"
    )


def parse_args(argv: Sequence[str] | None = None) -> ExportArgs:
    p = argparse.ArgumentParser(prog="python -m finetune.export", description=__doc__.split("\n\n")[0])
    for f in fields(ExportArgs):
        flag, required = f"--{f.name.replace('_', '-')}", f.default is MISSING
        kind = Path if "Path" in str(f.type) else str
        help_text = f.metadata["help"] + ("" if required or f.default is None else " (default: %(default)s)")
        p.add_argument(flag, type=kind, required=required, default=None if required else f.default,
                       choices=f.metadata["choices"], help=help_text)  # fmt: skip
    return ExportArgs(**vars(p.parse_args(argv)))


def directory_size(paths: Iterable[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.format == "merged":
            files = export_merged(args.checkpoint_dir, args.lora_path, args.out, args.dtype)
        else:
            files = export_peft(args.checkpoint_dir, args.lora_path, args.out, args.base_model, args.dtype)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    resolved = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()}
    write_private_atomic(args.out / "export.json", json.dumps(resolved, indent=2) + "\n")
    size = directory_size(files) / 2**20
    what = "merged transformers model" if args.format == "merged" else "PEFT LoRA adapter"
    print(f"exported the twin as a {what} to {args.out} ({size:.1f} MiB, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
