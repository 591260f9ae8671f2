"""The Hugging Face anchor of `bench/finetune_bench.py`: what a user of transformers + PEFT gets.

The model is transformers' own class for the shape (`FalconForCausalLM`, `LlamaForCausalLM`) built from
a config matching the litgpt one, random weights in the bench's dtype, SDPA attention, no KV cache in
training (`use_cache=False`, as SFT recipes set). PEFT LoRA goes on the modules that hold the same
targets: q/k/v are Falcon's fused `query_key_value` (PEFT cannot adapt part of a fused weight, so its B
also projects onto k) and Llama's `q_proj`/`k_proj`/`v_proj`; proj → `dense`/`o_proj`; mlp → every MLP
linear; head → `lm_head`. PEFT keeps the adapter in fp32 over a bf16 base (its default,
`autocast_adapter_dtype`), so the steps run under bf16 autocast as Trainer's `bf16=True` does.

Batches are what Trainer's `group_by_length=True` makes: transformers' own `get_length_grouped_indices`
over a step's worth of sequences (`per_device_train_batch_size × gradient_accumulation_steps`), sorted
within mega-batches, the longest batch first; each micro-batch padded to its longest sequence (to a
multiple of 8) with an attention mask, labels -100 on the prompt and the padding; the loss of a
micro-batch weighted by its share of the step's reply tokens (Trainer's `num_items_in_batch`); AdamW
fused, gradient clipping at 1.0. The first step of the epoch (the longest, where a user's run would run
out of memory) is a warm-up step, and the timed steps are a seeded sample of the epoch's others, so their
length mix is the data's, not the longest mega-batch's.

`torch.compile` comes in the two ways Trainer offers: "whole" (`torch_compile=True`: accelerate compiles
the whole PEFT model) and "regional" (accelerate's `compile_regions`, `ACCELERATE_DYNAMO_USE_REGIONAL_
COMPILATION=1`: each decoder layer compiled, the rest eager). The sequence dimension is marked dynamic
from the first call (a user's run recompiles it so after the second shape; this skips that compile).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100

# litgpt LoRA target → the Hugging Face module names that hold it, per family
HF_MODULES: dict[str, dict[str, tuple[str, ...]]] = {
    "falcon": {
        "q": ("query_key_value",),
        "k": ("query_key_value",),
        "v": ("query_key_value",),
        "proj": ("dense",),
        "mlp": ("dense_h_to_4h", "dense_4h_to_h"),
        "head": ("lm_head",),
    },
    "llama": {
        "q": ("q_proj",),
        "k": ("k_proj",),
        "v": ("v_proj",),
        "proj": ("o_proj",),
        "mlp": ("gate_proj", "up_proj", "down_proj"),
        "head": ("lm_head",),
    },
}
LORA_LAYOUT = {"falcon": "peft-fused", "llama": "peft-split"}
"""How `train_flops.model_shape` lays out PEFT's q/k/v LoRA for each family."""


@dataclass(frozen=True)
class HFRow:
    name: str
    micro_batch_size: int | None
    """Trainer's `per_device_train_batch_size` (gradient accumulation makes up the global batch);
    None: the shape's <= 24 GB choice, `GC_MICRO_BATCH`."""
    compile: str = ""
    """"" (eager), "whole" (torch.compile of the whole PEFT model) or "regional" (each decoder layer)."""
    gradient_checkpointing: bool = False
    step_s: float = 3.0
    """Guessed GPU seconds per optimizer step of 128 chat sequences at a 7–8B shape (time budget)."""
    compile_s: float = 0.0
    """Guessed GPU seconds to compile (the warm-up's extra time)."""
    note: str = ""


HF_ROWS = [
    HFRow(
        "hf-compile", 16, "whole", step_s=2.1, compile_s=100, note="Trainer group_by_length + torch_compile"
    ),
    HFRow("hf-compile-gc", None, "whole", True, step_s=3.6, compile_s=100, note="<= 24 GB setting"),
    HFRow("hf-regional", 16, "regional", step_s=2.1, compile_s=40, note="accelerate regional compilation"),
    HFRow("hf-regional-gc", None, "regional", True, step_s=3.6, compile_s=40, note="<= 24 GB setting"),
    HFRow("hf-eager", 16, step_s=2.7),
    HFRow("hf-eager-gc", None, "", True, step_s=5.0, note="<= 24 GB setting"),
]
GC_MICRO_BATCH = {"falcon": 8, "llama": 4}
"""Micro-batch of the gradient-checkpointing rows: about the largest that peaks under 24 GB (by an
estimate, logits included: Falcon-7B's 65k vocabulary at 8 x ~630 tokens, Llama-3's 128k at 4)."""


def micro_batch_size(row: HFRow, config: Any) -> int:
    return row.micro_batch_size or GC_MICRO_BATCH[family(config)]


def family(config: Any) -> str:
    """ "falcon" or "llama": the Hugging Face class that has this litgpt config's architecture."""
    if config.mlp_class_name == "LLaMAMLP" and not config.parallel_residual:
        return "llama"
    if config.mlp_class_name == "GptNeoxMLP" and config.parallel_residual and config.shared_attention_norm:
        return "falcon"
    raise ValueError(
        f"{config.name}: no Hugging Face anchor for this architecture (Falcon-7B and Llama kinds)"
    )


def hf_config(config: Any) -> Any:
    """A transformers config with the litgpt config's shapes (vocabulary = litgpt's padded one)."""
    from transformers import FalconConfig, LlamaConfig

    original_context = (config.rope_adjustments or {}).get("original_max_seq_len", 0)
    common = dict(
        vocab_size=config.padded_vocab_size,
        hidden_size=config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        # transformers wants llama3 RoPE's original context below this (a tiny --smoke model's is not)
        max_position_embeddings=max(config.block_size, 2 * original_context),
        use_cache=False,
    )
    if family(config) == "falcon":
        if config.n_embd // config.n_head != config.head_size:
            raise ValueError(f"{config.name}: Hugging Face Falcon needs head_size = n_embd / n_head")
        return FalconConfig(
            **common,
            num_kv_heads=config.n_query_groups,
            multi_query=config.n_query_groups == 1,
            new_decoder_architecture=False,
            parallel_attn=True,
            bias=config.bias,
            alibi=False,
            layer_norm_epsilon=config.norm_eps,
            ffn_hidden_size=config.intermediate_size,
            rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_base)},
        )
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(config.rope_base)}
    if config.rope_adjustments:
        adj = config.rope_adjustments
        rope = {
            "rope_type": "llama3",
            "rope_theta": float(config.rope_base),
            "factor": adj["factor"],
            "low_freq_factor": adj["low_freq_factor"],
            "high_freq_factor": adj["high_freq_factor"],
            "original_max_position_embeddings": adj["original_max_seq_len"],
        }
    return LlamaConfig(
        **common,
        intermediate_size=config.intermediate_size,
        num_key_value_heads=config.n_query_groups,
        head_dim=config.head_size,
        rms_norm_eps=config.norm_eps,
        attention_bias=config.attn_bias,
        mlp_bias=config.bias,
        tie_word_embeddings=False,
        rope_parameters=rope,
    )


def build_model(
    config: Any,
    targets: Sequence[str],
    r: int,
    alpha: int,
    dropout: float,
    device: torch.device,
    dtype: torch.dtype,
) -> Any:
    """transformers' model for `config`, random weights made on `device`, wrapped by PEFT LoRA."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config(config), dtype=dtype, attn_implementation="sdpa")
    modules = sorted({m for t in targets for m in HF_MODULES[family(config)][t]})
    lora = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    return peft_model


def set_gradient_checkpointing(model: Any, enabled: bool) -> None:
    """Trainer's `gradient_checkpointing=True` (non-reentrant, transformers' default). transformers also
    hooks the embedding so its output carries a gradient (for adapters); disabling leaves that hook on a
    PEFT-wrapped model, so it is removed here: a later row without checkpointing runs as a fresh one."""
    base = model.base_model.model
    if enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
        base.disable_input_require_grads()
    base.config.use_cache = False


def embedding_carries_gradient(model: Any) -> bool:
    """Whether the embedding's output is made to carry a gradient (the first block's input-gradients
    then run too): what `gradient_checkpointing_enable` does in transformers 5."""
    return bool(getattr(model.base_model.model, "_require_grads_hooks", None))


def compiled(model: Any, mode: str) -> Any:
    if mode == "whole":
        return torch.compile(model)
    if mode == "regional":
        from accelerate.utils import compile_regions

        return compile_regions(model)
    return model


def length_grouped_steps(
    lengths: Sequence[int], micro_batch_size: int, global_batch: int, warmup: int, timed: int, seed: int
) -> list[list[list[int]]]:
    """`warmup` steps from the start of an epoch in Trainer's order (the longest first), then `timed`
    steps sampled from the rest of the epoch (seeded); each step a list of micro-batches of indices."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    if global_batch % micro_batch_size:
        raise ValueError(f"global batch {global_batch} is not a multiple of micro-batch {micro_batch_size}")
    accumulation = global_batch // micro_batch_size
    order = get_length_grouped_indices(
        list(lengths), global_batch, generator=torch.Generator().manual_seed(seed)
    )
    micro = [order[k : k + micro_batch_size] for k in range(0, len(order), micro_batch_size)]
    steps = [micro[k : k + accumulation] for k in range(0, len(micro) - accumulation + 1, accumulation)]
    if len(steps) < warmup + timed:
        raise ValueError(f"{len(lengths)} records make {len(steps)} steps; {warmup + timed} are needed")
    rest = steps[warmup:]
    picked = sorted(random.Random(seed).sample(range(len(rest)), timed))
    return steps[:warmup] + [rest[k] for k in picked]


def collate(
    indices: Sequence[int], examples: Sequence[Any], pad_id: int, pad_multiple: int
) -> dict[str, torch.Tensor]:
    """DataCollatorForSeq2Seq's padding: right-padded ids, attention mask, labels -100 off the reply."""
    length = -(-max(len(examples[i]) for i in indices) // pad_multiple) * pad_multiple
    input_ids = torch.full((len(indices), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), length), dtype=torch.long)
    labels = torch.full((len(indices), length), IGNORE_INDEX, dtype=torch.long)
    for row, i in enumerate(indices):
        ex = examples[i]
        n = len(ex)
        input_ids[row, :n] = ex.input_ids
        attention_mask[row, :n] = 1
        labels[row, :n] = ex.labels
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Sequence[int]],
    examples: Sequence[Any],
    pad_id: int,
    device: torch.device,
    mark_dynamic: bool,
    max_grad_norm: float = 1.0,
) -> torch.Tensor:
    """One optimizer step over `micro_batches` as Trainer runs it; returns the (device) loss sum."""
    step_loss_tokens = sum(examples[i].loss_tokens for mb in micro_batches for i in mb)
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    loss_sum = torch.zeros((), device=device)
    for indices in micro_batches:
        batch = collate(indices, examples, pad_id, 8)
        if cuda:
            batch = {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
        if mark_dynamic:
            for t in batch.values():
                torch._dynamo.maybe_mark_dynamic(t, 1)
        loss_tokens = sum(examples[i].loss_tokens for i in indices)
        with autocast:
            loss = model(**batch).loss  # mean over this micro-batch's reply tokens
        (loss * (loss_tokens / step_loss_tokens)).backward()
        loss_sum += loss.detach() * loss_tokens
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


def make_optimizer(model: Any, device: torch.device) -> torch.optim.Optimizer:
    """Trainer's default optimizer (`adamw_torch_fused` on CUDA), its default weight decay 0."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0, fused=device.type == "cuda")
