"""litgpt's Falcon as a Hugging Face transformers `FalconForCausalLM` folder.

Which litgpt configs have an exact HF Falcon equivalent, the `config.json` for one, the weights converted by
litgpt's own `copy_weights_falcon` (names and the q/k/v row layout), and the owner-only files transformers
expects next to them: `model.safetensors` (sharded with an index past 5 GiB), tokenizer files and
`generation_config.json`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from litgpt.config import Config
from litgpt.scripts.convert_lit_checkpoint import copy_weights_falcon
from safetensors.torch import save_file
from tqdm import tqdm

from common.files import make_private_dir, open_private, write_private_atomic
from finetune.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MAX_SHARD_BYTES = 5 * 2**30


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


def hf_falcon_config(config: Config, tied: bool, torch_dtype: torch.dtype, bos_id: int, eos_id: int) -> dict:
    """transformers' FalconConfig for a Falcon-shaped litgpt config (Falcon-7B's own layout if it is one)."""
    classic = config.n_query_groups == 1 and config.shared_attention_norm  # falcon-7b: multi-query
    hf: dict[str, Any] = {
        "architectures": ["FalconForCausalLM"],
        "model_type": "falcon",
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
        "rope_theta": float(config.rope_base),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_base)},
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": tied,
        "torch_dtype": str(torch_dtype).removeprefix("torch."),
        "use_cache": True,
    }
    if not classic:
        hf["num_ln_in_parallel_attn"] = 1 if config.shared_attention_norm else 2
    return hf


def converter_config(config: Config) -> Config:
    """litgpt's `copy_weights_falcon` picks the norm names by model name: give it the matching one."""
    named = copy.copy(config)
    named.name = "falcon-7b" if config.shared_attention_norm else "falcon-40b"
    return named


def save_private_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """`save_file` into a file that is 0600 from its first byte, replaced atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    open_private(tmp, "wb").close()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
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


def token_ids(checkpoint_dir: Path) -> tuple[int, int]:
    """(bos, eos) ids: from generation_config.json, else the tokenizer's own special tokens."""
    gen = checkpoint_dir / "generation_config.json"
    if gen.is_file():
        cfg = json.loads(gen.read_text(encoding="utf-8"))
        if "eos_token_id" in cfg:
            eos = cfg["eos_token_id"]
            eos = eos[0] if isinstance(eos, list) else eos
            return int(cfg.get("bos_token_id", eos)), int(eos)
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
    return ids.get(bos_tok, ids[eos_tok]), ids[eos_tok]


def copy_tokenizer(checkpoint_dir: Path, out: Path, bos_id: int, eos_id: int) -> None:
    if not (checkpoint_dir / "tokenizer.json").is_file():
        raise UserError(
            f"{checkpoint_dir} has no tokenizer.json: the export needs the checkpoint's tokenizer"
        )
    for name in TOKENIZER_FILES:
        if (checkpoint_dir / name).is_file():
            with (checkpoint_dir / name).open("rb") as src, open_private(out / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    generation = {"bos_token_id": bos_id, "eos_token_id": eos_id, "_from_model_config": False}
    write_private_atomic(out / "generation_config.json", json.dumps(generation, indent=2) + "\n")


def write_hf_model(
    lit: dict[str, torch.Tensor], config: Config, checkpoint_dir: Path, out: Path, dtype: torch.dtype
) -> list[Path]:
    """Convert litgpt weights (no LoRA) with litgpt's Falcon converter and write an HF model folder."""
    hf: dict[str, torch.Tensor] = {}
    copy_weights_falcon(converter_config(config), hf, {k: v.to(dtype) for k, v in lit.items()})
    tied = torch.equal(hf["transformer.word_embeddings.weight"], hf["lm_head.weight"])
    if tied:  # transformers ties lm_head to the embeddings itself; storing it twice would waste the space
        del hf["lm_head.weight"]
    bos_id, eos_id = token_ids(checkpoint_dir)
    make_private_dir(out)
    cfg = hf_falcon_config(config, tied, dtype, bos_id, eos_id)
    write_private_atomic(out / "config.json", json.dumps(cfg, indent=2) + "\n")
    copy_tokenizer(checkpoint_dir, out, bos_id, eos_id)
    return save_sharded(hf, out)
