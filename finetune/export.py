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

import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from litgpt.config import Config
from litgpt.scripts.convert_lit_checkpoint import qkv_reassemble
from tqdm import tqdm

from common.cli import parse_dataclasses, run
from common.device import resolve_dtype
from common.files import make_private_dir, write_private_atomic
from finetune.errors import UserError
from finetune.hf_falcon import (
    copy_tokenizer,
    falcon_problems,
    save_private_safetensors,
    token_ids,
    write_hf_model,
)
from finetune.twin import (
    TOKENIZER_CONFIG_FILE,
    AdapterSpec,
    LoraArgs,
    check_base,
    load_adapter,
    load_base_config,
    load_base_weights,
    read_adapter_spec,
)

log = logging.getLogger(__name__)

Format = Literal["merged", "peft"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
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


def qkv_flags(lora: LoraArgs) -> tuple[bool, bool, bool]:
    return (lora.lora_query, lora.lora_key, lora.lora_value)


def export_rank(lora: LoraArgs) -> int:
    """The single rank of the exported adapter (the fused qkv LoRA needs r per enabled part)."""
    return lora.lora_r * max(1, sum(qkv_flags(lora)))


# ------------------------------------------------------------------------------- the LoRA update, per layer
def module_names(config: Config, lora: LoraArgs) -> list[str]:
    """litgpt names of the layers that carry LoRA (`transformer.h.0.attn.qkv`, ..., `lm_head`)."""
    names = []
    for i in range(config.n_layer):
        if any(qkv_flags(lora)):
            names.append(f"transformer.h.{i}.attn.qkv")
        for sub in ("attn.proj", "mlp.fc", "mlp.proj"):
            if getattr(lora, FLAG_OF[sub]):
                names.append(f"transformer.h.{i}.{sub}")
    if lora.lora_head:
        names.append("lm_head")
    return names


def qkv_part_sizes(config: Config) -> tuple[int, int, int]:
    return (
        config.n_head * config.head_size,
        config.n_query_groups * config.head_size,
        config.n_query_groups * config.head_size,
    )


def lora_factors(
    name: str, adapter: Mapping[str, torch.Tensor], config: Config, lora: LoraArgs
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of one layer in litgpt's row layout with ΔW = B @ A · scaling, at rank `export_rank`."""
    try:
        a, b = adapter[f"{name}.lora_A"], adapter[f"{name}.lora_B"]
    except KeyError as e:
        raise UserError(
            f"the adapter has no {e.args[0]}: it does not match its hyperparameters.yaml"
        ) from None
    r, rank, qkv = lora.lora_r, export_rank(lora), qkv_flags(lora)
    if name.endswith("attn.qkv"):
        sizes = qkv_part_sizes(config)
        enabled = [s for s, on in zip(sizes, qkv, strict=True) if on]
        if a.shape[0] != r * len(enabled) or b.shape != (sum(enabled), r):
            raise UserError(
                f"{name}: LoRA shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit r={r} on "
                f"q,k,v={qkv} of this checkpoint: is --checkpoint-dir the base it was trained on?"
            )
        full_b = b.new_zeros(sum(sizes), rank)  # (q+k+v rows, R): block-diagonal, zero rows for parts off
        row, col, part = 0, 0, 0
        for size, on in zip(sizes, qkv, strict=True):
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
    config, lora, adapter = check_inputs(checkpoint_dir, lora_path)
    lit = dict(load_base_weights(checkpoint_dir))
    target = output_dtype(dtype)
    for name in tqdm(module_names(config, lora), desc="merging LoRA", unit="layer"):
        a, b = lora_factors(name, adapter, config, lora)
        weight = lit[f"{name}.weight"]
        delta = (b.float() @ a.float()) * lora.scaling  # (out, in), litgpt's row layout
        lit[f"{name}.weight"] = (weight.float() + delta).to(weight.dtype if target is None else target)
    return write_hf_model(lit, config, checkpoint_dir, out, target or next(iter(lit.values())).dtype)


@torch.inference_mode()
def export_peft(
    checkpoint_dir: Path, lora_path: Path, out: Path, base_model: str | None = None, dtype: str = "auto"
) -> list[Path]:
    """A PEFT LoRA adapter for the HF Falcon base (which goes to OUT/base unless it is on the Hub)."""
    config, lora, adapter = check_inputs(checkpoint_dir, lora_path)
    make_private_dir(out)
    files: list[Path] = []
    if base_model is None:
        hub = config.hf_config or {}
        if hub.get("org") and hub.get("name"):
            base_model = f"{hub['org']}/{hub['name']}"
        else:
            lit = load_base_weights(checkpoint_dir)
            files += write_hf_model(
                dict(lit),
                config,
                checkpoint_dir,
                out / "base",
                output_dtype(dtype) or next(iter(lit.values())).dtype,
            )
            base_model = str((out / "base").resolve())
    tensors: dict[str, torch.Tensor] = {}
    targets = set()
    for name in tqdm(module_names(config, lora), desc="mapping LoRA", unit="layer"):
        a, b = lora_factors(name, adapter, config, lora)
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
        "r": export_rank(lora),
        "lora_alpha": lora.lora_alpha * max(1, sum(qkv_flags(lora))),  # alpha'/R == alpha/r
        "lora_dropout": lora.lora_dropout,
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


def output_dtype(dtype: str) -> torch.dtype | None:
    """None for `auto` (keep the checkpoint's dtype), else the named dtype."""
    return None if dtype == "auto" else resolve_dtype(dtype)


def check_inputs(checkpoint_dir: Path, lora_path: Path) -> tuple[Config, LoraArgs, dict[str, torch.Tensor]]:
    """The base's config, the adapter's LoRA settings and tensors; refused with a reason unless the
    base has an exact HF Falcon equivalent and is the one the adapter was trained on."""
    config = load_base_config(checkpoint_dir)
    if problems := falcon_problems(config):
        raise UserError(
            "this checkpoint has no exact Hugging Face Falcon equivalent, so it cannot be exported: "
            + "; ".join(problems)
        )
    adapter = load_adapter(lora_path)
    check_base(adapter.spec, config, checkpoint_dir)
    return config, adapter.spec.lora, adapter.tensors


# -------------------------------------------------------------------------------------------------- CLI
@dataclass
class ExportArgs:
    """What `python -m finetune.export` exports, and where (saved as export.json next to the output)."""

    checkpoint_dir: Path
    """The litgpt base checkpoint the adapter was trained on."""
    lora_path: Path
    """The adapter (lit_model_lora_finetuned.pth) or its finetune out-dir."""
    out: Path = Path("out/twin-hf")
    """The folder to write."""
    format: Format = "merged"
    """merged: a full transformers model; peft: a LoRA adapter."""
    dtype: Dtype = "auto"
    """Weight dtype of the written model (auto: the base checkpoint's)."""
    base_model: str | None = None
    """peft: the base's HF name or path to record (default: its Hub name, else OUT/base)."""


def parse_args(argv: Sequence[str] | None = None) -> ExportArgs:
    """ExportArgs from command-line flags (a bad flag exits 2 with one line)."""
    description = (__doc__ or "").split("\n\n")[0]
    (args,) = parse_dataclasses([ExportArgs], argv, prog="python -m finetune.export", description=description)
    return args


def directory_size(paths: Iterable[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(lambda: export(parse_args(argv)), errors=(UserError,))


def write_chat_template(out: Path, spec: AdapterSpec) -> None:
    """A chat-template twin's template (the one it was trained with) as the exported tokenizer's
    `chat_template`, so that `apply_chat_template` renders prompts as training did."""
    path = out / TOKENIZER_CONFIG_FILE
    if spec.chat_template is None or not path.is_file():
        return
    tokenizer_config = json.loads(path.read_text(encoding="utf-8"))
    tokenizer_config["chat_template"] = spec.chat_template.source
    write_private_atomic(path, json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")


def export(args: ExportArgs) -> None:
    """Write the export `args` asks for, with export.json (the resolved settings) beside it."""
    t0 = time.perf_counter()
    if args.format == "merged":
        files = export_merged(args.checkpoint_dir, args.lora_path, args.out, args.dtype)
    else:
        files = export_peft(args.checkpoint_dir, args.lora_path, args.out, args.base_model, args.dtype)
    spec = read_adapter_spec(args.lora_path)
    write_chat_template(args.out, spec)
    resolved = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()}
    resolved["prompt_format"] = spec.prompt_format
    write_private_atomic(args.out / "export.json", json.dumps(resolved, indent=2) + "\n")
    size = directory_size(files) / 2**20
    what = "merged transformers model" if args.format == "merged" else "PEFT LoRA adapter"
    print(f"exported the twin as a {what} to {args.out} ({size:.1f} MiB, {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
