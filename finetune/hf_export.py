"""litgpt checkpoints as Hugging Face transformers model folders, for every supported family.

A litgpt `Config` of a supported family (`finetune.bases`) maps onto one transformers architecture: its
*layout* names that architecture, the transformers config class that describes it and litgpt's own
converter for its weights (`litgpt.scripts.convert_lit_checkpoint`'s `copy_weights_*`: names, the split
of the fused q/k/v into q_proj/k_proj/v_proj, Falcon's per-group q/k/v rows):

    Falcon                          FalconForCausalLM    copy_weights_falcon
    Llama (Llama-2/3.x, SmolLM2)    LlamaForCausalLM     copy_weights_llama
    Mistral                         MistralForCausalLM   copy_weights_llama
    Qwen2.5 (q/k/v biases)          Qwen2ForCausalLM     copy_weights_qwen_2_5
    Qwen3 (q/k norms)               Qwen3ForCausalLM     copy_weights_qwen_3
    Gemma                           GemmaForCausalLM     copy_weights_llama
    Gemma-2 (post norms)            Gemma2ForCausalLM    copy_weights_gemma_2
    Gemma-3 (and q/k norms)         Gemma3ForCausalLM    copy_weights_gemma_3

`config.json` is built with that transformers config class from the litgpt config (sizes, grouped-query
heads, head_dim, RMSNorm eps, RoPE theta and scaling, sliding windows and soft-capping, tied embeddings,
special token ids) and carries the older `rope_theta` / `rope_scaling` keys too, so transformers 4.x and
engines that read them compute the same positions. A config that a family's transformers class cannot
express exactly (`hf_problems`) is refused with the reasons, before anything is written. One caveat is
transformers' own: it soft-caps Gemma-2's attention scores only with `attn_implementation="eager"` (its
default SDPA attention skips that, for the Hub's Gemma-2 too), so an exported Gemma-2 is exact when loaded
that way.

The folder holds what transformers expects, all owner-only (`common.files`): `config.json`,
`model.safetensors` (sharded with an index past 5 GiB), the tokenizer files and `generation_config.json`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

import torch
from litgpt.config import Config
from litgpt.scripts import convert_lit_checkpoint as litgpt_convert
from safetensors import SafetensorError
from safetensors.torch import save_file
from tqdm import tqdm

from common.files import open_private, temp_path, write_private_atomic
from finetune.bases import Family, check_supported
from finetune.errors import UserError, make_out_dir

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MAX_SHARD_BYTES = 5 * 2**30
LLAMA3_ROPE = ("factor", "low_freq_factor", "high_freq_factor", "original_max_seq_len")
BUILT_LOCALLY = "source.json"
"""`finetune.embedded`'s record: a checkpoint built from a quantized file, not the Hub's weights."""
MULTIMODAL_ON_HUB = ("Gemma-3-4b", "Gemma-3-12b", "Gemma-3-27b")
"""Their Hub repos are image+text models whose module names differ from the text model exported here."""


class Arch(StrEnum):
    """A transformers architecture a litgpt config is exported as (its `model_type`)."""

    FALCON = "falcon"
    LLAMA = "llama"
    MISTRAL = "mistral"
    QWEN2 = "qwen2"
    QWEN3 = "qwen3"
    GEMMA = "gemma"
    GEMMA2 = "gemma2"
    GEMMA3 = "gemma3_text"


@dataclass(frozen=True)
class HFLayout:
    """How transformers holds one litgpt architecture."""

    arch: Arch
    architecture: str
    """The transformers model class (`architectures` in config.json)."""
    config_class: str
    """The transformers config class that describes it."""
    copy_weights: Callable[..., None]
    """litgpt's converter: `copy(config, hf_state, lit_state)`."""

    @property
    def fused_qkv(self) -> bool:
        """One `query_key_value` module for q, k and v (Falcon); else q_proj/k_proj/v_proj."""
        return self.arch is Arch.FALCON


def falcon_converter(config: Config, hf: dict[str, torch.Tensor], lit: Mapping[str, torch.Tensor]) -> None:
    """litgpt's `copy_weights_falcon`, which picks the norm names by model name: give it the matching one."""
    named = copy.copy(config)
    named.name = "falcon-7b" if config.shared_attention_norm else "falcon-40b"
    litgpt_convert.copy_weights_falcon(named, hf, dict(lit))


LAYOUTS = {
    Arch.FALCON: HFLayout(Arch.FALCON, "FalconForCausalLM", "FalconConfig", falcon_converter),
    # untie_weights=False: lm_head is converted whenever it is there; `write_hf_model` drops a tied one
    Arch.LLAMA: HFLayout(Arch.LLAMA, "LlamaForCausalLM", "LlamaConfig", litgpt_convert.copy_weights_llama),
    Arch.MISTRAL: HFLayout(
        Arch.MISTRAL, "MistralForCausalLM", "MistralConfig", litgpt_convert.copy_weights_llama
    ),
    Arch.QWEN2: HFLayout(Arch.QWEN2, "Qwen2ForCausalLM", "Qwen2Config", litgpt_convert.copy_weights_qwen_2_5),
    Arch.QWEN3: HFLayout(Arch.QWEN3, "Qwen3ForCausalLM", "Qwen3Config", litgpt_convert.copy_weights_qwen_3),
    Arch.GEMMA: HFLayout(Arch.GEMMA, "GemmaForCausalLM", "GemmaConfig", litgpt_convert.copy_weights_llama),
    Arch.GEMMA2: HFLayout(
        Arch.GEMMA2,
        "Gemma2ForCausalLM",
        "Gemma2Config",
        partial(litgpt_convert.copy_weights_gemma_2, untie_weights=False),
    ),
    Arch.GEMMA3: HFLayout(
        Arch.GEMMA3,
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        partial(litgpt_convert.copy_weights_gemma_3, untie_weights=False),
    ),
}


# ------------------------------------------------------------------------------------------- layouts
def arch_of(config: Config) -> Arch:
    """The transformers architecture of a supported litgpt config (refused in one line otherwise)."""
    family = check_supported(config)
    if family is Family.FALCON:
        return Arch.FALCON
    if family is Family.QWEN:
        return Arch.QWEN3 if config.norm_qk else Arch.QWEN2
    if family is Family.GEMMA:
        if config.norm_qk or config.rope_local_base_freq is not None:
            return Arch.GEMMA3
        return Arch.GEMMA2 if config.post_attention_norm or config.post_mlp_norm else Arch.GEMMA
    return Arch.MISTRAL if family is Family.MISTRAL else Arch.LLAMA


def hf_layout(config: Config) -> HFLayout:
    """The transformers layout of `config`; a `UserError` naming every reason when it has no exact one."""
    arch = arch_of(config)
    if problems := hf_problems(config, arch):
        raise UserError(
            f"{config.name} has no exact Hugging Face {LAYOUTS[arch].architecture} equivalent, so it cannot "
            f"be exported: {'; '.join(problems)}"
        )
    return LAYOUTS[arch]


def hf_problems(config: Config, arch: Arch) -> list[str]:
    """Why `config` does not compute exactly what transformers' `arch` computes (empty when it does)."""
    if arch is Arch.FALCON:
        return falcon_problems(config)
    gemma = arch in (Arch.GEMMA, Arch.GEMMA2, Arch.GEMMA3)
    later_gemma = arch in (Arch.GEMMA2, Arch.GEMMA3)
    windows = config.sliding_window_indices or []
    sliding = config.sliding_window_size is not None and any(windows)
    no_local_rope = config.rope_local_base_freq is None and config.rope_indices is None
    no_softcap = config.attention_logit_softcapping is None and config.final_logit_softcapping is None
    checks = {
        "q/k/v biases exactly in Qwen2.5": bool(config.attn_bias) == (arch is Arch.QWEN2),
        "per-head query/key norms exactly in Qwen3 and Gemma-3": bool(config.norm_qk)
        == (arch in (Arch.QWEN3, Arch.GEMMA3))
        and config.norm_qk_type == "default",
        "post-attention and post-MLP norms exactly in Gemma-2/3": config.post_attention_norm
        == config.post_mlp_norm
        == later_gemma,
        "scaled embeddings and unit-offset RMSNorm (a Gemma name) exactly in Gemma": config.scale_embeddings
        == ("Gemma" in config.name)
        == gemma,
        "both pre-norms": config.norm_1 and config.norm_2,
        "non-interleaved rotary embeddings": not config.rope_interleave,
        "soft-capping only in Gemma-2/3": later_gemma or no_softcap,
        "an attention scale other than 1/sqrt(head_size) only in Gemma-2/3": later_gemma
        or config.attention_scores_scalar in (None, config.head_size),
        "sliding windows on all layers or none (Mistral), per layer (Gemma-2/3), else none": not sliding
        or later_gemma
        or (arch is Arch.MISTRAL and all(windows)),
        "a local RoPE base exactly on Gemma-3's sliding-window layers": no_local_rope
        or (arch is Arch.GEMMA3 and config.rope_indices == config.sliding_window_indices),
    }
    problems = [why for why, ok in checks.items() if not ok]
    if (rope := rope_problem(config, arch)) is not None:
        problems.append(rope)
    return [f"{config.name}: {why}" for why in problems]


def falcon_problems(config: Config) -> list[str]:
    """Why this litgpt architecture has no exact HF Falcon equivalent (empty when it has one)."""
    checks = {
        "the MLP must be Falcon's (GptNeoxMLP)": config.mlp_class_name == "GptNeoxMLP",
        "the norm must be LayerNorm": config.norm_class_name == "LayerNorm",
        "attention and MLP must run in parallel (parallel_residual)": config.parallel_residual,
        "rotary embeddings must cover the whole head (rotary_percentage 1.0)": config.rotary_percentage
        == 1.0,
        "linear layers must have no biases": not config.bias
        and not config.attn_bias
        and not config.lm_head_bias,
        "n_embd must equal n_head * head_size": config.n_embd == config.n_head * config.head_size,
        "GELU must be exact (gelu_approximate 'none')": config.gelu_approximate == "none",
        "no RoPE scaling, sliding windows, soft-capping, q/k or post norms, experts, embedding scale": not (
            config.rope_condense_ratio != 1
            or config.rope_adjustments
            or config.sliding_window_size
            or config.attention_logit_softcapping
            or config.final_logit_softcapping
            or config.norm_qk
            or config.post_attention_norm
            or config.post_mlp_norm
            or config.n_expert
            or config.scale_embeddings
        ),
    }
    return [f"{config.name}: {why}" for why, ok in checks.items() if not ok]


# ------------------------------------------------------------------------------------------- RoPE
def rope_problem(config: Config, arch: Arch) -> str | None:
    """Why `config`'s RoPE scaling has no transformers equivalent, or None."""
    adjustments = config.rope_adjustments or {}
    if adjustments and config.rope_condense_ratio != 1:
        return "RoPE adjustments together with a condense ratio"
    if adjustments and set(adjustments) not in ({"factor"}, set(LLAMA3_ROPE)):
        return f"RoPE adjustments {sorted(adjustments)}: only Llama-3's and linear scaling are exported"
    if adjustments and set(adjustments) == set(LLAMA3_ROPE) and arch is Arch.GEMMA3:
        return "Llama-3 RoPE scaling on Gemma-3"
    return None


def rope_scaling(config: Config) -> dict[str, Any] | None:
    """transformers' scaling entry for `config`'s (global) RoPE, or None for plain RoPE."""
    adjustments = config.rope_adjustments or {}
    if set(adjustments) == set(LLAMA3_ROPE):
        return {
            "rope_type": "llama3",
            "factor": float(adjustments["factor"]),
            "low_freq_factor": float(adjustments["low_freq_factor"]),
            "high_freq_factor": float(adjustments["high_freq_factor"]),
            "original_max_position_embeddings": int(adjustments["original_max_seq_len"]),
        }
    if "factor" in adjustments:  # litgpt divides the frequencies by it: linear scaling
        return {"rope_type": "linear", "factor": float(adjustments["factor"])}
    if config.rope_condense_ratio != 1:  # litgpt divides the positions by it: the same
        return {"rope_type": "linear", "factor": float(config.rope_condense_ratio)}
    return None


def rope_keys(config: Config, arch: Arch) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`rope_parameters` for transformers 5, the same as transformers 4's `rope_theta`/`rope_scaling`)."""
    scaling = rope_scaling(config)
    theta = float(config.rope_base)
    parameters = {"rope_type": "default", "rope_theta": theta} | (scaling or {})
    legacy: dict[str, Any] = {"rope_theta": theta} | ({"rope_scaling": scaling} if scaling else {})
    if arch is Arch.GEMMA3:
        local = float(config.rope_local_base_freq or theta)
        legacy["rope_local_base_freq"] = local
        local_parameters = {"rope_type": "default", "rope_theta": local}
        return {"full_attention": parameters, "sliding_attention": local_parameters}, legacy
    return parameters, legacy


# ------------------------------------------------------------------------------------------- config.json
def architecture_kwargs(config: Config, arch: Arch) -> dict[str, Any]:
    """The transformers config arguments that describe `config`'s architecture."""
    if arch is Arch.FALCON:
        classic = config.n_query_groups == 1 and config.shared_attention_norm  # falcon-7b: multi-query
        kwargs: dict[str, Any] = {
            "vocab_size": config.padded_vocab_size,
            "hidden_size": config.n_embd,
            "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head,
            "num_kv_heads": config.n_query_groups,
            "multi_query": config.n_query_groups == 1,
            "new_decoder_architecture": not classic,
            "parallel_attn": True,
            "bias": False,
            "alibi": False,
            "ffn_hidden_size": config.intermediate_size,
            "activation": "gelu",
            "layer_norm_epsilon": config.norm_eps,
            "max_position_embeddings": config.block_size,
        }
        if not classic:
            kwargs["num_ln_in_parallel_attn"] = 1 if config.shared_attention_norm else 2
        return kwargs
    kwargs = {
        "vocab_size": config.padded_vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_query_groups,
        "head_dim": config.head_size,
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
    }
    if arch in (Arch.GEMMA, Arch.GEMMA2, Arch.GEMMA3):
        activation = "gelu_pytorch_tanh" if config.gelu_approximate == "tanh" else "gelu"
        kwargs["hidden_act" if arch is Arch.GEMMA else "hidden_activation"] = activation
        kwargs["attention_bias"] = False
    else:
        kwargs["hidden_act"] = "silu"
    if arch in (Arch.GEMMA2, Arch.GEMMA3):
        windows = config.sliding_window_indices or [0] * config.n_layer
        kwargs |= {
            "query_pre_attn_scalar": config.attention_scores_scalar or config.head_size,
            "attn_logit_softcapping": config.attention_logit_softcapping,
            "final_logit_softcapping": config.final_logit_softcapping,
            "sliding_window": config.sliding_window_size or config.block_size,
            "layer_types": [
                "sliding_attention" if w else "full_attention" for w in windows[: config.n_layer]
            ],
        }
    if arch is Arch.MISTRAL:
        kwargs["sliding_window"] = (
            config.sliding_window_size if any(config.sliding_window_indices or []) else None
        )
    if arch in (Arch.LLAMA, Arch.QWEN3):
        kwargs["attention_bias"] = False
    if arch is Arch.LLAMA:
        kwargs["mlp_bias"] = False
    if arch in (Arch.QWEN2, Arch.QWEN3):
        kwargs["use_sliding_window"] = False
    return kwargs


def hf_config(
    config: Config,
    layout: HFLayout,
    tied: bool,
    dtype: torch.dtype,
    bos_id: int | None,
    eos_ids: Sequence[int],
) -> dict[str, Any]:
    """config.json for `config`: built with transformers' own config class for the layout (which checks
    it), plus the RoPE keys older transformers read."""
    import transformers

    rope_parameters, legacy = rope_keys(config, layout.arch)
    kwargs = architecture_kwargs(config, layout.arch) | {
        "rope_parameters": rope_parameters,
        "tie_word_embeddings": tied,
        "bos_token_id": bos_id,
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else list(eos_ids),
        "pad_token_id": None,
        "use_cache": True,
    }
    hf = getattr(transformers, layout.config_class)(**kwargs)
    full = hf.to_dict()
    out = hf.to_diff_dict() | {key: full[key] for key in kwargs if key in full}
    dtype_name = str(dtype).removeprefix("torch.")
    return (
        out
        | legacy
        | {"architectures": [layout.architecture], "dtype": dtype_name, "torch_dtype": dtype_name}
    )


# ------------------------------------------------------------------------------------------- weights
def convert_weights(
    config: Config, layout: HFLayout, lit: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """litgpt weights (no LoRA) → transformers names and layout, by litgpt's converter."""
    hf: dict[str, torch.Tensor] = {}
    layout.copy_weights(config, hf, dict(lit))
    return hf


def hf_weight_names(config: Config, layout: HFLayout, lit_name: str) -> list[str]:
    """The transformers weight name(s) litgpt's converter writes `lit_name` to: one, or q_proj, k_proj and
    v_proj (in that order) for a fused qkv that the layout splits. Read off the converter itself, on a
    meta tensor, so the names always agree with the merged export."""
    q, k, v = qkv_part_sizes(config)
    rows = q + k + v if lit_name.endswith("attn.qkv.weight") else 1
    hf: dict[str, torch.Tensor] = {}
    layout.copy_weights(config, hf, {lit_name: torch.empty(rows, 1, device="meta")})
    return list(hf)


def qkv_part_sizes(config: Config) -> tuple[int, int, int]:
    """Rows of q, k and v in litgpt's fused qkv weight (all q, then all k, then all v)."""
    kv = config.n_query_groups * config.head_size
    return (config.n_head * config.head_size, kv, kv)


def hub_model_id(config: Config, checkpoint_dir: Path) -> str | None:
    """The Hub repo whose weights and module names `checkpoint_dir` holds, or None: not from the Hub, built
    locally from a quantized file (`finetune.embedded`), or an image+text repo (Gemma-3 4b and up)."""
    hub = config.hf_config or {}
    if not (hub.get("org") and hub.get("name")):
        return None
    if (checkpoint_dir / BUILT_LOCALLY).is_file() or config.name.startswith(MULTIMODAL_ON_HUB):
        return None
    return f"{hub['org']}/{hub['name']}"


# ------------------------------------------------------------------------------------------- files
def save_private_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """`save_file` into a file that is 0600 from its first byte, replaced atomically. A write that fails
    (a full disk) removes the temp file and is an `OSError` naming `path`, as Python's own writes are."""
    tmp = temp_path(path)
    open_private(tmp, "wb").close()
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    except SafetensorError as e:  # the Rust writer's I/O errors: "... No space left on device (os error 28)"
        tmp.unlink(missing_ok=True)
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def save_sharded(
    state: dict[str, torch.Tensor], out: Path, max_shard_bytes: int = MAX_SHARD_BYTES
) -> list[Path]:
    """transformers' layout: `model.safetensors`, or shards plus `model.safetensors.index.json`."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for shard, fname in tqdm(
        list(zip(shards, names, strict=True)), desc="writing", unit="file", disable=len(names) == 1
    ):
        save_private_safetensors(shard, out / fname, {"format": "pt"})
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {
            "metadata": {"total_size": total},
            "weight_map": {k: n for s, n in zip(shards, names, strict=True) for k in s},
        }
        write_private_atomic(out / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
    return [out / n for n in names]


def token_ids(checkpoint_dir: Path) -> tuple[int | None, list[int]]:
    """(bos, eos ids): from generation_config.json, else the tokenizer's own special tokens."""
    gen = checkpoint_dir / "generation_config.json"
    if gen.is_file():
        cfg = json.loads(gen.read_text(encoding="utf-8"))
        if cfg.get("eos_token_id") is not None:
            eos = cfg["eos_token_id"]
            eos_ids = [int(i) for i in eos] if isinstance(eos, list) else [int(eos)]
            bos = cfg.get("bos_token_id", eos_ids[0])
            return (None if bos is None else int(bos)), eos_ids
    tok = json.loads((checkpoint_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tok_cfg_path = checkpoint_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8")) if tok_cfg_path.is_file() else {}
    ids = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    eos_tok = tok_cfg.get("eos_token", "<|endoftext|>")
    eos_tok = eos_tok.get("content") if isinstance(eos_tok, dict) else eos_tok
    if eos_tok not in ids:
        raise UserError(
            f"cannot find the end-of-text token {eos_tok!r} in {checkpoint_dir / 'tokenizer.json'}"
        )
    bos_tok = tok_cfg.get("bos_token", eos_tok)
    bos_tok = bos_tok.get("content") if isinstance(bos_tok, dict) else bos_tok
    return ids.get(bos_tok, ids[eos_tok]), [ids[eos_tok]]


def copy_tokenizer(checkpoint_dir: Path, out: Path, bos_id: int | None, eos_ids: Sequence[int]) -> None:
    """The checkpoint's tokenizer files, and a generation_config.json that stops at `eos_ids`."""
    if not (checkpoint_dir / "tokenizer.json").is_file():
        raise UserError(
            f"{checkpoint_dir} has no tokenizer.json: the export needs the checkpoint's tokenizer"
        )
    for name in TOKENIZER_FILES:
        if (checkpoint_dir / name).is_file():
            with (checkpoint_dir / name).open("rb") as src, open_private(out / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    eos: int | list[int] = eos_ids[0] if len(eos_ids) == 1 else list(eos_ids)
    generation = {"bos_token_id": bos_id, "eos_token_id": eos, "_from_model_config": False}
    write_private_atomic(out / "generation_config.json", json.dumps(generation, indent=2) + "\n")


def write_hf_model(
    lit: Mapping[str, torch.Tensor],
    config: Config,
    checkpoint_dir: Path,
    out: Path,
    dtype: torch.dtype,
    eos_ids: Sequence[int] | None = None,
) -> list[Path]:
    """Convert litgpt weights (no LoRA) with litgpt's converter for the family and write an HF model folder
    (`eos_ids`: where generation stops; default the checkpoint's own); returns the weight files."""
    layout = hf_layout(config)
    weights = {k: v.to(dtype) for k, v in lit.items()}
    # transformers ties lm_head to the embeddings itself; storing it twice would waste the space
    tied = "lm_head.weight" not in weights or torch.equal(
        weights["transformer.wte.weight"], weights["lm_head.weight"]
    )
    if tied:
        weights.pop("lm_head.weight", None)
    hf = convert_weights(config, layout, weights)
    bos_id, own_eos = token_ids(checkpoint_dir)
    eos_ids = list(eos_ids or own_eos)
    make_out_dir(out, "--out")
    cfg = hf_config(config, layout, tied, dtype, bos_id, eos_ids)
    write_private_atomic(out / "config.json", json.dumps(cfg, indent=2) + "\n")
    copy_tokenizer(checkpoint_dir, out, bos_id, eos_ids)
    log.info("%s as %s (%d tensors)", config.name, layout.architecture, len(hf))
    if config.attention_logit_softcapping is not None:
        log.warning(
            "%s soft-caps attention scores, which transformers does only in its eager attention: load it "
            "with attn_implementation='eager' (as Google's own Gemma-2)",
            config.name,
        )
    size = sum(t.numel() * t.element_size() for t in hf.values())
    log.info("writing the weights of %s (%.1f MiB)", config.name, size / 2**20)
    return save_sharded(hf, out)
