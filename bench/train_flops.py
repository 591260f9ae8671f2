"""FLOPs of one LoRA training step as it runs, and the peak they are measured against (MFU).

Only matrix products count (norms, activations, softmax, RoPE and the loss are a few percent of the
time and none of the tensor-core work). For every linear layer of a block with T tokens through it:

- frozen weight (in × out): forward 2·T·in·out; its input-gradient 2·T·in·out when its input carries a
  gradient; no weight-gradient (frozen).
- LoRA A (in × r) and B (r × out) beside it: forward 2·T·(|A|+|B|), weight-gradients 2·T·(|A|+|B|),
  the input-gradient of B 2·T·|B| (A's output always needs one) and of A 2·T·|A| when the input does.
- attention: 2·2·head_size per query head and (query, key) pair forward (QKᵀ and PV), twice that
  backward; a causal sequence of length L has L(L+1)/2 pairs.

The embedding is a lookup (no FLOPs). The first block's input carries no gradient (the embedding is
frozen), so autograd skips the input-gradients that would only lead there: the QKV projection's, and
with a parallel residual (Falcon) the whole MLP backward when the MLP has no LoRA. `block_flops`
follows which activations carry a gradient, block by block, so these savings are counted as they run.
Activation checkpointing recomputes a block's forward only up to the last tensor its backward needs
(torch's non-reentrant checkpoint stops there), so trailing frozen matmuls are not run twice.
`bench/finetune_bench.py --smoke` checks this count against torch's FlopCounterMode on a tiny model of
each family, ours and Hugging Face's, with and without checkpointing ("flop_check": exact).

Two counts per row:
- **model FLOPs** (MFU): the work the step needs — real (non-pad) tokens, attention on the real lengths,
  the LM head on the loss (reply) positions only, no recomputation. The same count for every row of one
  shape, so MFU ratios equal throughput ratios.
- **executed FLOPs**: what that row's code really multiplies — padded micro-batches (B·T tokens,
  attention over the padded T), the head where it runs (on the loss positions in our loop, on every
  position in Hugging Face's), plus the forward recomputed under activation checkpointing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

LORA_TARGETS = ("q", "k", "v", "proj", "mlp", "head")

# name fragment → (dense bf16 spec, bf16 matmul rate measured on such a card or None), FLOP/s.
# H200 measured: 8192³ bf16 products through PyTorch on random data ran at 769–798 TFLOP/s on the
# lent H200s (Oct–Nov 2026); the bench also measures it again at the start of each GPU run.
PEAKS: dict[str, tuple[float, float | None]] = {
    "H200": (989e12, 790e12),
    "H100": (989e12, None),
    "A100": (312e12, None),
}


def device_peak(device_name: str) -> dict[str, Any]:
    """The peaks MFU is measured against, picked by the device's name (spec, and measured where known)."""
    for key, (spec, measured) in PEAKS.items():
        if key in device_name:
            return {
                "device": device_name,
                "spec_dense_bf16_tflops": spec / 1e12,
                "measured_matmul_bf16_tflops": measured / 1e12 if measured else None,
                "mfu_denominator": "spec_dense_bf16_tflops",
            }
    return {"device": device_name, "spec_dense_bf16_tflops": None, "measured_matmul_bf16_tflops": None}


@dataclass(frozen=True)
class Linear:
    """One frozen weight and the LoRA matrices beside it (0, 0 without LoRA)."""

    n_in: int
    n_out: int
    lora_a: int = 0
    lora_b: int = 0


@dataclass(frozen=True)
class Shape:
    """A decoder's matmul shapes: per block, then the LM head."""

    qkv: Linear
    proj: Linear
    mlp_in: tuple[Linear, ...]
    """The MLP's matmuls that read the block input's norm (fc; or fc_1 and fc_2)."""
    mlp_out: Linear
    head: Linear
    n_layer: int
    n_head: int
    head_size: int
    parallel_residual: bool


def model_shape(config: Any, targets: Iterable[str], r: int, lora_layout: str = "litgpt") -> Shape:
    """Matmul shapes of a litgpt `Config` with LoRA rank `r` on `targets` (see `LORA_TARGETS`).

    `lora_layout` says how q/k/v LoRA is laid out: "litgpt" (one A of r rows per enabled part, B onto
    that part), "peft-fused" (Hugging Face Falcon's fused query_key_value: one A and a B onto all of
    q, k and v), "peft-split" (Hugging Face Llama's q_proj/k_proj/v_proj: one A and B per part)."""
    targets = set(targets)
    c, hs = config.n_embd, config.head_size
    parts = {"q": config.n_head * hs, "k": config.n_query_groups * hs, "v": config.n_query_groups * hs}
    qkv_out = sum(parts.values())
    enabled = [p for p in ("q", "k", "v") if p in targets]
    if not enabled or r == 0:
        qkv = Linear(c, qkv_out)
    elif lora_layout == "peft-fused":
        qkv = Linear(c, qkv_out, c * r, r * qkv_out)
    else:  # litgpt and peft-split: A (c → r) and B (r → part) per enabled part
        qkv = Linear(c, qkv_out, c * r * len(enabled), r * sum(parts[p] for p in enabled))

    def linear(n_in: int, n_out: int, target: str) -> Linear:
        on = target in targets and r > 0
        return Linear(n_in, n_out, n_in * r if on else 0, r * n_out if on else 0)

    n_mlp_in = 2 if config.mlp_class_name == "LLaMAMLP" else 1
    if config.mlp_class_name not in ("LLaMAMLP", "GptNeoxMLP"):
        raise ValueError(
            f"no FLOP count for MLP {config.mlp_class_name!r} (LLaMAMLP and GptNeoxMLP are known)"
        )
    i = config.intermediate_size
    return Shape(
        qkv=qkv,
        proj=linear(config.n_head * hs, c, "proj"),
        mlp_in=tuple(linear(c, i, "mlp") for _ in range(n_mlp_in)),
        mlp_out=linear(i, c, "mlp"),
        head=linear(c, config.padded_vocab_size, "head"),
        n_layer=config.n_layer,
        n_head=config.n_head,
        head_size=hs,
        parallel_residual=config.parallel_residual,
    )


def linear_flops(layer: Linear, tokens: float, input_grad: bool) -> tuple[float, float, bool]:
    """(forward, backward, output carries a gradient) of one linear layer over `tokens` rows."""
    w, a, b = layer.n_in * layer.n_out, layer.lora_a, layer.lora_b
    forward = 2 * tokens * (w + a + b)
    backward = 2 * tokens * (a + b) + 2 * tokens * b  # LoRA weight-gradients, B's input-gradient
    if input_grad:
        backward += 2 * tokens * (w + a)
    return forward, backward, input_grad or a > 0


def block_flops(shape: Shape, tokens: float, pairs: float, x_grad: bool) -> tuple[float, float, float, bool]:
    """(forward, backward, recompute, output carries a gradient) of one block over `tokens` rows and
    `pairs` causal (query, key) pairs summed over its sequences; `x_grad`: whether its input carries one.

    `recompute` is what activation checkpointing runs again: torch's non-reentrant checkpoint stops as
    soon as the last tensor the backward needs is rebuilt, so trailing frozen matmuls (they save nothing)
    are not recomputed."""
    fwd = bwd = recompute = 0.0

    def op(f: float, b: float, saves: bool) -> None:
        nonlocal fwd, bwd, recompute
        fwd, bwd = fwd + f, bwd + b
        if saves:
            recompute = fwd

    def linear(layer: Linear, input_grad: bool) -> bool:
        f, b, grad = linear_flops(layer, tokens, input_grad)
        # runs W, then A, then B; a frozen W saves nothing, A and B save their inputs (weight-gradients)
        lora_b = 2 * tokens * layer.lora_b
        op(f - lora_b, b, layer.lora_a > 0)
        op(lora_b, 0.0, False)
        return grad

    qkv_grad = linear(shape.qkv, x_grad)
    attention = 4 * shape.n_head * shape.head_size * pairs
    op(attention, 2 * attention if qkv_grad else 0.0, qkv_grad)
    attn_grad = linear(shape.proj, qkv_grad)
    mlp_in_grad = x_grad if shape.parallel_residual else (x_grad or attn_grad)
    op(0.0, 0.0, mlp_in_grad and not shape.parallel_residual)  # the MLP's own norm saves its input
    mid_grad = False
    for layer in shape.mlp_in:
        mid_grad = linear(layer, mlp_in_grad) or mid_grad
    op(0.0, 0.0, mid_grad)  # the activation saves its input
    mlp_grad = linear(shape.mlp_out, mid_grad)
    return fwd, bwd, recompute, x_grad or attn_grad or mlp_grad


def step_flops(
    shape: Shape,
    tokens: float,
    pairs: float,
    head_tokens: float,
    recompute: bool = False,
    embedding_grad: bool = False,
) -> dict[str, float]:
    """FLOPs of the blocks over `tokens` rows with `pairs` causal pairs, and of the head over
    `head_tokens` rows. `recompute`: activation checkpointing of every block; `embedding_grad`: the
    embedding's output is made to carry a gradient (transformers does so with gradient checkpointing)."""
    fwd = bwd = again = 0.0
    grad = embedding_grad  # else the first block's input carries no gradient: the embedding is frozen
    for _ in range(shape.n_layer):
        f, b, r, grad = block_flops(shape, tokens, pairs, grad)
        fwd, bwd, again = fwd + f, bwd + b, again + r
    again = again if recompute else 0.0
    f, b, _ = linear_flops(shape.head, head_tokens, grad)
    return {"forward": fwd + f, "backward": bwd + b, "recompute": again, "total": fwd + f + bwd + b + again}


def causal_pairs(length: int) -> int:
    return length * (length + 1) // 2


def model_flops(shape: Shape, lengths: Sequence[int], loss_tokens: int) -> float:
    """The work a step needs: real tokens, attention on the real lengths, the head on the loss positions."""
    return step_flops(shape, sum(lengths), sum(map(causal_pairs, lengths)), loss_tokens)["total"]


def executed_flops(
    shape: Shape,
    micro_batches: Iterable[tuple[int, int]],
    head_tokens: int,
    recompute: bool = False,
    embedding_grad: bool = False,
) -> float:
    """What runs on padded micro-batches of (rows, padded length), the head over `head_tokens` rows."""
    tokens = pairs = 0
    for rows, length in micro_batches:
        tokens += rows * length
        pairs += rows * causal_pairs(length)
    return step_flops(shape, tokens, pairs, head_tokens, recompute, embedding_grad)["total"]
