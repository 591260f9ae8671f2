"""Export the twin for the wider ecosystem: a Hugging Face transformers model or a PEFT LoRA adapter.

    python -m finetune.export --checkpoint-dir CKPT --lora-path ADAPTER --out DIR [--format merged|peft]

Every supported base family goes both ways (`finetune.hf_export` has the per-family transformers layout).
`merged` (default) folds the LoRA update into the base weights with litgpt's own merge and converts them
with litgpt's converter for the family into a transformers folder (config.json, model*.safetensors,
tokenizer files, generation_config.json) that vLLM, TGI or `AutoModelForCausalLM` load as is. `peft` writes
a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) for the HF base: its Hub repo when the
checkpoint holds the Hub's weights, else the base converted into `OUT/base/` (the tiny demo checkpoint, and
the embedded SmolLM2, whose weights are dequantized from a 4-bit file). Both carry the twin's prompt: a
chat-template twin's template in tokenizer_config.json, and generation_config.json stops at the end of the
twin's turn as serve does.

The folder is written whole (`finetune.outdir`): into a hidden temp folder beside --out that takes its name
when complete, so a stopped export (an error, a full disk, Ctrl-C, a kill) leaves --out as it was. An --out
that holds other files is refused; one that holds an earlier export of the same twin with the same settings
is replaced, one of another twin or format only with --overwrite. A disk too small for the weights is
refused before the merge.

litgpt fuses q, k and v into one `attn.qkv` layer with a separate rank-r LoRA per enabled part (A is
`(r·n, in)`, B the n parts stacked). Llama-style layouts (Llama, Mistral, Qwen, Gemma) have separate
q_proj/k_proj/v_proj, so each enabled part's A-block and B-rows become that projection's own rank-r LoRA,
and litgpt's LLaMAMLP fc_1/fc_2/proj become gate_proj/up_proj/down_proj. HF Falcon's `query_key_value` is
one linear layer, so there the update maps exactly onto one LoRA of rank `R = r·n`: A' = the n A-blocks
stacked, B' = block-diagonal (zeros for the q/k/v parts that are off) with its rows permuted into HF's head
layout, and alpha' = alpha·n keeps alpha'/R = alpha/r; its other layers are padded with zeros to the same
rank so the adapter has one rank and one alpha, which every LoRA loader understands.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from litgpt.config import Config
from litgpt.scripts.convert_lit_checkpoint import qkv_reassemble

from common.cli import parse_dataclasses, run
from common.device import resolve_dtype
from common.files import write_private_atomic
from finetune.errors import UserError, make_out_dir, write_errors
from finetune.hf_export import (
    TOKENIZER_FILES,
    HFLayout,
    copy_tokenizer,
    hf_layout,
    hf_weight_names,
    hub_model_id,
    qkv_part_sizes,
    save_private_safetensors,
    token_ids,
    write_hf_model,
)
from finetune.outdir import OutputKind, check_output_folder, staged_folder, target
from finetune.twin import (
    TOKENIZER_CONFIG_FILE,
    AdapterSpec,
    LoraArgs,
    check_base,
    load_adapter,
    load_base_config,
    load_base_weights,
    load_tokenizer,
    lora_config,
    read_adapter_spec,
    stop_token_ids,
)

if TYPE_CHECKING:
    from litgpt.lora import GPT as LoraGPT

log = logging.getLogger(__name__)

Format = Literal["merged", "peft"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
EXPORT_FILE = "export.json"
EXPORT = OutputKind(
    "export",
    EXPORT_FILE,
    re.compile(
        r"(config|generation_config|export|adapter_config|tokenizer|tokenizer_config|special_tokens_map)\.json"
        r"|(model|adapter_model)(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|base"
    ),
)
"""What an export folder holds (`finetune.outdir`: an earlier export is replaced only as a whole)."""
SAME_EXPORT = ("checkpoint_dir", "lora_path", "format", "dtype", "base_model")
"""The settings that make two exports the same: re-running one replaces it without --overwrite."""
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
"""A Hugging Face repo id (`org/name`)."""


@dataclass(frozen=True)
class ExportInputs:
    """A checked base and adapter: the base's config and HF layout, the adapter's spec and LoRA tensors."""

    config: Config
    layout: HFLayout
    spec: AdapterSpec
    tensors: dict[str, torch.Tensor]
    """litgpt's LoRA names (`transformer.h.0.attn.qkv.lora_A`, ...), each checked against the spec."""

    @property
    def lora(self) -> LoraArgs:
        return self.spec.lora


def qkv_flags(lora: LoraArgs) -> tuple[bool, bool, bool]:
    return (lora.lora_query, lora.lora_key, lora.lora_value)


def lora_layers(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """litgpt names of the layers that carry LoRA (`transformer.h.0.attn.qkv`, ..., `lm_head`)."""
    return list(dict.fromkeys(k.rsplit(".", 1)[0] for k in tensors))


def lora_model(config: Config, spec: AdapterSpec) -> LoraGPT:
    """litgpt's LoRA model of the twin on the meta device: its names and shapes, no memory."""
    from litgpt.lora import GPT

    with torch.device("meta"):
        model = GPT(lora_config(config, spec))
    return model


def check_adapter_tensors(model: LoraGPT, inputs: ExportInputs) -> None:
    """Every LoRA tensor the spec implies is in the adapter with its shape, and nothing else."""
    expected = {name: p.shape for name, p in model.named_parameters() if "lora_" in name}
    if missing := [name for name in expected if name not in inputs.tensors]:
        raise UserError(
            f"the adapter has no {missing[0]} ({len(missing)} LoRA tensors missing): it does not match its "
            "hyperparameters.yaml"
        )
    if extra := sorted(set(inputs.tensors) - set(expected)):
        raise UserError(
            f"the adapter has LoRA tensors its hyperparameters.yaml does not enable ({extra[0]}, ...): "
            "it does not match them"
        )
    for name, shape in expected.items():
        if inputs.tensors[name].shape != shape:
            raise UserError(
                f"{name}: LoRA shapes {tuple(inputs.tensors[name].shape)} (expected {tuple(shape)}) do not "
                f"fit r={inputs.lora.lora_r} on q,k,v={qkv_flags(inputs.lora)} of {inputs.config.name}: is "
                "--checkpoint-dir the base it was trained on?"
            )


def check_inputs(checkpoint_dir: Path, lora_path: Path) -> ExportInputs:
    """The base's config and layout and the adapter, checked: refused with a reason unless the base has an
    exact HF equivalent, is the one the adapter was trained on and the tensors fit the adapter's spec."""
    config = load_base_config(checkpoint_dir)
    layout = hf_layout(config)
    adapter = load_adapter(lora_path)
    check_base(adapter.spec, config, checkpoint_dir)
    inputs = ExportInputs(config, layout, adapter.spec, adapter.tensors)
    check_adapter_tensors(lora_model(config, adapter.spec), inputs)
    return inputs


def twin_eos_ids(checkpoint_dir: Path, spec: AdapterSpec) -> list[int]:
    """Where the twin's generation ends: the base's EOS ids, plus the end-of-turn token of the format it
    was trained with (`<|im_end|>`, ...), as serve stops."""

    own = token_ids(checkpoint_dir)[1]
    stops = stop_token_ids(load_tokenizer(checkpoint_dir), spec.prompter)
    return own + [i for i in stops if i not in own]


# ------------------------------------------------------------------------------------------- merged
@torch.inference_mode()
def merged_weights(
    checkpoint_dir: Path, inputs: ExportInputs, dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """The base with the LoRA merged by litgpt (`merge_lora_weights`), under litgpt's plain names.

    As litgpt's `merge_lora` script: the LoRA model is built on the meta device and the memory-mapped base
    weights are assigned into it, so only the merged layers take memory (in `dtype`, default the base's);
    the update B @ A is computed from float32 factors. Unlike that script, a tied checkpoint's embeddings
    stay as they are when the head has a LoRA."""
    from litgpt.lora import lora_filter, merge_lora_weights

    base = load_base_weights(checkpoint_dir, inputs.config)
    state = {k: v if dtype is None else v.to(dtype) for k, v in base.items()}
    # the merge adds in place: a layer's own copy, so that a tensor the checkpoint stores once for two
    # names (tied embeddings: lm_head is wte) changes only under the merged name
    state |= {f"{layer}.weight": state[f"{layer}.weight"].clone() for layer in lora_layers(inputs.tensors)}
    state |= {k: v.float() for k, v in inputs.tensors.items()}
    model = lora_model(inputs.config, inputs.spec)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as e:
        raise UserError(
            f"{checkpoint_dir / 'lit_model.pth'} does not fit its model_config.yaml ({inputs.config.name}): "
            f"{' '.join(str(e).split())[:300]}"
        ) from None
    merge_lora_weights(model)
    return {k.replace("linear.", ""): v for k, v in model.state_dict().items() if not lora_filter(k, v)}


def export_merged(checkpoint_dir: Path, lora_path: Path, out: Path, dtype: str = "auto") -> list[Path]:
    """LoRA merged into the base, written as an HF transformers folder; returns the weight files."""
    inputs = check_inputs(checkpoint_dir, lora_path)
    log.info("merging the LoRA into the weights of %s", inputs.config.name)
    lit = merged_weights(checkpoint_dir, inputs, output_dtype(dtype))
    target = output_dtype(dtype) or next(iter(lit.values())).dtype
    eos_ids = twin_eos_ids(checkpoint_dir, inputs.spec)
    return write_hf_model(lit, inputs.config, checkpoint_dir, out, target, eos_ids)


# ------------------------------------------------------------------------------------------- PEFT
def peft_rank(layout: HFLayout, lora: LoraArgs) -> tuple[int, int]:
    """(r, alpha) of the exported adapter: litgpt's, or for Falcon's fused qkv r and alpha times the
    number of enabled q/k/v parts (the same alpha/r)."""
    parts = max(1, sum(qkv_flags(lora))) if layout.fused_qkv else 1
    return lora.lora_r * parts, lora.lora_alpha * parts


def peft_factors(name: str, inputs: ExportInputs) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(HF module, A, B) for the LoRA of litgpt's layer `name`, with ΔW = B @ A · alpha/r in HF's layout."""
    config, layout, lora = inputs.config, inputs.layout, inputs.lora
    a, b = inputs.tensors[f"{name}.lora_A"], inputs.tensors[f"{name}.lora_B"]
    try:
        modules = [n.removesuffix(".weight") for n in hf_weight_names(config, layout, f"{name}.weight")]
    except (KeyError, NotImplementedError):  # the converter knows no single-layer mapping for it
        modules = []
    r, rank = lora.lora_r, peft_rank(layout, lora)[0]
    is_qkv = name.endswith("attn.qkv")
    if len(modules) != (3 if is_qkv and not layout.fused_qkv else 1):
        raise UserError(
            f"litgpt's {name} becomes {modules} in {layout.architecture}: its LoRA cannot be expressed as a "
            "PEFT adapter; export --format merged"
        )
    sizes, flags = qkv_part_sizes(config), qkv_flags(lora)
    if is_qkv and not layout.fused_qkv:  # part j's A-block and B-rows are its projection's own LoRA
        enabled = [(module, size) for module, size, on in zip(modules, sizes, flags, strict=True) if on]
        row, factors = 0, []
        for j, (module, size) in enumerate(enabled):
            factors.append((module, a[j * r : (j + 1) * r], b[row : row + size]))
            row += size
        return factors
    if is_qkv:  # Falcon: one rank-R LoRA, B block-diagonal over the parts, rows in HF's per-group layout
        full_b = b.new_zeros(sum(sizes), rank)  # (q+k+v rows, R): zero rows for the parts that are off
        row, col, part = 0, 0, 0
        for size, on in zip(sizes, flags, strict=True):
            if on:
                full_b[row : row + size, col : col + r] = b[part : part + size]
                col += r
                part += size
            row += size
        return [(modules[0], a, qkv_reassemble(full_b, config))]  # A: the enabled A-blocks stacked (R, in)
    pad = rank - r  # zero rows of A and columns of B leave B @ A unchanged
    padded_a = torch.cat([a, a.new_zeros(pad, a.shape[1])])
    return [(modules[0], padded_a, torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1))]


def peft_tensors(inputs: ExportInputs) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The PEFT adapter's tensors (`base_model.model.<HF module>.lora_A.weight`, ...) and target modules;
    refused in one line where two litgpt LoRAs would land on one HF module (a fused layer PEFT cannot
    split, as Phi-3's gate_up_proj would be)."""
    tensors: dict[str, torch.Tensor] = {}
    targets = set()
    for name in lora_layers(inputs.tensors):
        for module, a, b in peft_factors(name, inputs):
            key = f"base_model.model.{module}"
            if f"{key}.lora_A.weight" in tensors:
                raise UserError(
                    f"litgpt's {name} and another LoRA layer both become {module} in "
                    f"{inputs.layout.architecture}: one PEFT LoRA cannot express both; export --format merged"
                )
            targets.add(module.rsplit(".", 1)[-1])
            tensors[f"{key}.lora_A.weight"] = a.contiguous()
            tensors[f"{key}.lora_B.weight"] = b.contiguous()
    return tensors, sorted(targets)


@torch.inference_mode()
def export_peft(
    checkpoint_dir: Path,
    lora_path: Path,
    out: Path,
    base_model: str | None = None,
    dtype: str = "auto",
    published: Path | None = None,
) -> list[Path]:
    """A PEFT LoRA adapter for the HF base (which goes to OUT/base unless it is on the Hub). `published`:
    where `out` will be once complete (`finetune.outdir`), so the adapter names its base's final place."""
    inputs = check_inputs(checkpoint_dir, lora_path)
    tensors, targets = peft_tensors(inputs)
    make_out_dir(out, "--out")
    files: list[Path] = []
    if base_model is None:
        base_model = hub_model_id(inputs.config, checkpoint_dir)
    if base_model is None:
        lit = load_base_weights(checkpoint_dir, inputs.config)
        dtype_to = output_dtype(dtype) or next(iter(lit.values())).dtype
        files += write_hf_model(lit, inputs.config, checkpoint_dir, out / "base", dtype_to)
        base_model = str(target(published or out) / "base")
    log.info("PEFT adapter for the base %s", base_model)
    rank, alpha = peft_rank(inputs.layout, inputs.lora)
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,  # alpha/r as litgpt's
        "lora_dropout": inputs.lora.lora_dropout,
        "target_modules": targets,
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
    bos_id = token_ids(checkpoint_dir)[0]
    copy_tokenizer(checkpoint_dir, out, bos_id, twin_eos_ids(checkpoint_dir, inputs.spec))
    return [out / "adapter_model.safetensors", *files]


def output_dtype(dtype: str) -> torch.dtype | None:
    """None for `auto` (keep the checkpoint's dtype), else the named dtype."""
    return None if dtype == "auto" else resolve_dtype(dtype)


# -------------------------------------------------------------------------------------------------- CLI
@dataclass
class ExportArgs:
    """What `python -m finetune.export` exports, and where (saved as export.json next to the output)."""

    checkpoint_dir: Path
    """The litgpt base checkpoint the adapter was trained on."""
    lora_path: Path
    """The adapter (lit_model_lora_finetuned.pth) or its finetune out-dir; or a resumable checkpoint
    (OUT/checkpoints/step-N.pth) of a run that has not finished."""
    out: Path = Path("out/twin-hf")
    """The folder to write (written whole: a stopped export leaves it as it was)."""
    format: Format = "merged"
    """merged: a full transformers model; peft: a LoRA adapter."""
    dtype: Dtype = "auto"
    """Weight dtype of the written model (auto: the base checkpoint's)."""
    base_model: str | None = None
    """peft: the base's HF repo id (org/name) or transformers folder to record (default: its Hub name,
    else OUT/base)."""
    overwrite: bool = False
    """Replace an earlier export of another twin or format in --out (an export of the same twin with the
    same settings is replaced without it)."""


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


def resolved_settings(args: ExportArgs) -> dict[str, object]:
    """export.json's settings (paths as given)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items() if k != "overwrite"}


def same_export(recorded: object, args: ExportArgs) -> bool:
    """Whether an export.json's settings are `args`' (paths compared as the folders they name)."""
    if not isinstance(recorded, dict):
        return False
    now = resolved_settings(args)
    for key in SAME_EXPORT:
        old, new = recorded.get(key), now.get(key)
        if key in ("checkpoint_dir", "lora_path") and isinstance(old, str) and isinstance(new, str):
            old, new = Path(old).resolve(), Path(new).resolve()
        if old != new:
            return False
    return True


def check_out(args: ExportArgs) -> bool:
    """Refuse, before any work, an --out that cannot be written or must not be replaced; True when it
    holds an earlier export that this one replaces."""
    earlier = check_output_folder(args.out, "--out", EXPORT)
    if earlier and not args.overwrite:
        marker = target(args.out) / EXPORT_FILE
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if not same_export(recorded, args):
            was = recorded if isinstance(recorded, dict) else {}
            recorded_as = f"--lora-path {was.get('lora_path', '?')}, --format {was.get('format', '?')}"
            raise UserError(
                f"--out {args.out} already holds an export of another twin or format "
                f"({args.out / EXPORT_FILE}: {recorded_as}): pass --overwrite to replace it, or another --out"
            )
    return earlier


def check_base_model(base_model: str | None) -> str | None:
    """--base-model as the adapter records it: a Hub repo id as given, a local transformers folder as an
    absolute path (the adapter is loaded from other folders); anything else is refused."""
    if base_model is None:
        return None
    path = Path(base_model).expanduser()
    if base_model.strip() and path.is_dir():
        if not (path / "config.json").is_file():
            litgpt = (path / "lit_model.pth").is_file()
            hint = " (a litgpt checkpoint: leave --base-model out to export the base into OUT/base)"
            raise UserError(
                f"--base-model {base_model} is a folder without a config.json, not a transformers model"
                f"{hint if litgpt else ''}: pass a Hugging Face repo id (org/name) or a transformers folder"
            )
        return str(path.resolve())
    if not HUB_ID.fullmatch(base_model) or ".." in base_model or "--" in base_model or len(base_model) > 96:
        raise UserError(
            f"--base-model {base_model!r} is neither a folder nor a Hugging Face repo id such as "
            "tiiuae/falcon-7b: pass one, or leave it out (the Hub name litgpt knows, else OUT/base)"
        )
    return base_model


def needed_bytes(args: ExportArgs) -> int:
    """About how much disk the export takes: the base's weights in the output dtype and its tokenizer (a
    PEFT adapter for a base on the Hub: next to nothing)."""
    config = load_base_config(args.checkpoint_dir)
    hf_layout(config)  # a base with no exact transformers equivalent is refused first, with the reasons
    if args.format == "peft" and (args.base_model or hub_model_id(config, args.checkpoint_dir)):
        return 0
    dtype = output_dtype(args.dtype)
    storages: dict[int, int] = {}  # tied tensors are stored and written once
    for t in load_base_weights(args.checkpoint_dir, config).values():
        size = t.numel() * (dtype.itemsize if dtype is not None else t.element_size())
        storages[t.untyped_storage().data_ptr()] = max(size, storages.get(t.untyped_storage().data_ptr(), 0))
    tokenizer = [args.checkpoint_dir / name for name in TOKENIZER_FILES]
    return sum(storages.values()) + sum(p.stat().st_size for p in tokenizer if p.is_file())


def check_free_space(args: ExportArgs) -> None:
    """Refuse, before minutes of merging, an export the disk under --out cannot hold."""
    need = needed_bytes(args)
    folder = target(args.out).parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > free:
        raise UserError(
            f"--out {args.out}: the export needs about {size_text(need)} and {folder} has {size_text(free)} "
            "free: free some space, choose another --out, or export --format peft (a small adapter) or a "
            "smaller --dtype"
        )


def size_text(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def export(args: ExportArgs) -> None:
    """Write the export `args` asks for, with export.json (the resolved settings) beside it: into a temp
    folder that takes --out's place when complete (`finetune.outdir`)."""
    t0 = time.perf_counter()
    replacing = check_out(args)
    args.base_model = check_base_model(args.base_model)
    spec = read_adapter_spec(args.lora_path)
    check_free_space(args)
    with write_errors("--out"), staged_folder(args.out, "--out") as staging:
        if args.format == "merged":
            files = export_merged(args.checkpoint_dir, args.lora_path, staging, args.dtype)
        else:
            files = export_peft(
                args.checkpoint_dir, args.lora_path, staging, args.base_model, args.dtype, args.out
            )
        write_chat_template(staging, spec)
        resolved = resolved_settings(args) | {"prompt_format": spec.prompt_format}
        write_private_atomic(staging / EXPORT_FILE, json.dumps(resolved, indent=2) + "\n")
        size = directory_size(files) / 2**20
        count = sum(1 for p in staging.rglob("*") if p.is_file())
    what = "merged transformers model" if args.format == "merged" else "PEFT LoRA adapter"
    replaced = " (replacing the earlier export)" if replacing else ""
    print(
        f"exported the twin as a {what} to {args.out}{replaced}: {count} files, {size:.1f} MiB, "
        f"{time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
