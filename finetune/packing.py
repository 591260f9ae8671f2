"""Packing without cross-talk: several records back to back in one row, each attending only to itself.

`--packing` fills rows of up to `min(--micro-batch-tokens, max sequence length)` tokens with whole records
(first-fit decreasing), so padding is only the tail of a row. Three things keep a packed row numerically
the same as one padded row per record:

- attention: a query sees a key only in its own record, at or before itself (`document_mask`); on CUDA
  as the records' boundaries for torch's FlashAttention variable-length kernel (`torch.nn.attention.varlen`:
  each record its own sequence, nothing computed across them; the default, `PACKED_ATTENTION`) or as a
  FlexAttention `BlockMask` (blocks across records skipped, not computed and masked; where this torch has
  no varlen kernel, or with `PACKED_ATTENTION = "flex"`); on a CPU as a dense boolean mask through SDPA
  (FlexAttention has no backward on CPUs);
- positions: RoPE positions restart at 0 for each record (`PackedGPT` takes them per token);
- loss: only the reply tokens of each record are targets, never a boundary (`finetune.data.collate`).

The padding at the end of a row is one more "record" of its own: every query attends to something
(an all-masked row would make SDPA return NaN), and no target lies there.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from litgpt.lora import GPT, Config
from litgpt.lora import CausalSelfAttention as LoRACausalSelfAttention
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention


# ------------------------------------------------------------------------------------------------- rows
def pack_rows(lengths: Sequence[tuple[int, int]], capacity: int) -> list[list[int]]:
    """(index, length) items into rows of at most `capacity` tokens, first-fit decreasing; rows fullest
    first. An item longer than `capacity` gets a row of its own (callers keep items within it)."""
    rows: list[list[int]] = []
    fill: list[int] = []
    for index, length in sorted(lengths, key=lambda item: (-item[1], item[0])):
        for r, used in enumerate(fill):
            if used + length <= capacity:
                rows[r].append(index)
                fill[r] += length
                break
        else:
            rows.append([index])
            fill.append(length)
    order = sorted(range(len(rows)), key=lambda r: (-fill[r], r))
    return [rows[r] for r in order]


# ------------------------------------------------------------------------------------------------- mask
PACKED_ATTENTION = "varlen"
"""How packed rows attend on CUDA: "varlen" (torch's FlashAttention variable-length kernel over the
records' boundaries; FlexAttention where this torch has no `torch.nn.attention.varlen`) or "flex"
(FlexAttention, a document BlockMask). On an H200 at Falcon-7B's shape varlen was faster in both
precisions (FP8 base 25,077 vs 23,780 non-pad tokens/s in the same run; bf16 19,189 vs 18,545-19,182) and
computes the padded step (`--grad-check`: loss 2.8e-5 apart, gradient norm ratio 1.00024) —
docs/BENCHMARKS.md. The benchmark's rows without `-varlen` set "flex"."""


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor | BlockMask:
    """The attention mask of packed rows with record ids `doc_ids` (B, T): a FlexAttention BlockMask on
    CUDA (or, with PACKED_ATTENTION "varlen", `record_boundaries`), else a dense (B, 1, T, T) boolean mask
    (True: may attend)."""
    if doc_ids.device.type == "cuda":
        if PACKED_ATTENTION == "varlen" and VARLEN_ATTENTION is not None:
            return record_boundaries(doc_ids)
        return document_block_mask(doc_ids)
    return dense_document_mask(doc_ids)


def record_boundaries(doc_ids: torch.Tensor) -> torch.Tensor:
    """(n + 1,) int32: where each of the n records of packed rows `doc_ids` (B, T) starts among the B * T
    tokens taken row after row, and B * T — FlashAttention's cumulative sequence lengths. A row always
    starts a record (the next row's ids may repeat the last ones of this row); its padding tail is a
    record of its own, as in the other masks."""
    b, t = doc_ids.shape
    flat = doc_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::t] = True
    end = torch.full((1,), b * t, dtype=torch.int64, device=doc_ids.device)
    return torch.cat((torch.nonzero(starts).flatten(), end)).to(torch.int32)


def is_record_boundaries(mask: Any) -> bool:
    return isinstance(mask, torch.Tensor) and mask.dim() == 1 and mask.dtype == torch.int32


@functools.cache
def varlen_attention_fn() -> Callable[..., torch.Tensor] | None:
    """torch's `varlen_attn` called causally with a given scale, `f(q, k, v, cu_seqlens, max_len, scale)`
    on (tokens, heads, head size) tensors, or None where this torch has none. Its arguments changed
    between releases (`is_causal` then `window_size=(-1, 0)`; `scale` added): both are handled."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    with_scale = "scale" in params

    def attend(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int, scale: float
    ) -> torch.Tensor:
        if with_scale:
            return cast(torch.Tensor, varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scale, **causal))
        default = 1.0 / math.sqrt(q.size(-1))  # the kernel's own scale: fold the difference into q
        q = q if math.isclose(scale, default) else q * (scale / default)
        return cast(torch.Tensor, varlen_attn(q, k, v, cu, cu, max_len, max_len, **causal))

    return attend


VARLEN_ATTENTION = varlen_attention_fn()
"""Resolved once at import: the compiled forward reads it (dynamo would trace through the cache)."""


def dense_document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    t = doc_ids.size(1)
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    return (same & causal).unsqueeze(1)  # (B, 1, T, T)


def document_block_mask(doc_ids: torch.Tensor) -> BlockMask:
    b, t = doc_ids.shape

    def same_record_causal(
        batch: torch.Tensor, head: torch.Tensor, q: torch.Tensor, kv: torch.Tensor
    ) -> torch.Tensor:
        return (doc_ids[batch, q] == doc_ids[batch, kv]) & (q >= kv)

    return create_block_mask(same_record_causal, b, None, t, t, device=doc_ids.device)


@functools.cache
def compiled_flex_attention() -> Callable[..., torch.Tensor]:
    # eager FlexAttention is a slow reference implementation: compiled, it is one fused kernel
    return cast(Callable[..., torch.Tensor], torch.compile(flex_attention, dynamic=True))


# ------------------------------------------------------------------------------------------------ model
class PackedAttention(LoRACausalSelfAttention):
    """litgpt's LoRA attention that also takes a FlexAttention `BlockMask`, or `record_boundaries` for
    the variable-length kernel, as its mask."""

    varlen: Callable[..., torch.Tensor] | None = None
    """The variable-length attention `record_boundaries` masks go to (None: `varlen_attention_fn`'s; the
    tests put a CPU reference here)."""

    def scaled_dot_product_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None
    ) -> torch.Tensor:
        if not isinstance(mask, BlockMask) and not is_record_boundaries(mask):
            return super().scaled_dot_product_attention(q, k, v, mask)
        scale = 1.0 / (self.config.attention_scores_scalar or self.config.head_size) ** 0.5
        scale = scale * self.mscale * self.mscale
        if is_record_boundaries(mask):
            attend = self.varlen or VARLEN_ATTENTION
            if attend is None:
                raise RuntimeError("record boundaries given, but this torch has no variable-length attention")
            b, heads, t, size = q.shape  # each record one sequence of the B * T tokens; none is longer than T

            def tokens(x: torch.Tensor) -> torch.Tensor:
                return x.transpose(1, 2).reshape(b * t, x.size(1), size)

            y = attend(tokens(q), tokens(k), tokens(v), mask, t, scale)  # (B * T, nh, hs)
            return y.view(b, t, heads, size)
        # inside a compiled block it fuses anyway; on a CPU (tests, forward only) the reference runs
        plain = torch.compiler.is_compiling() or q.device.type != "cuda"
        flex = cast(Callable[..., Any], flex_attention) if plain else compiled_flex_attention()
        y = flex(q, k, v, block_mask=mask, scale=scale)  # (B, nh, T, hs)
        return cast(torch.Tensor, y).transpose(1, 2)


class PackedGPT(GPT):
    """litgpt's LoRA GPT whose forward also takes per-token RoPE positions and an attention mask.

    Without them (generation with a KV cache, unpacked batches) it is litgpt's forward unchanged.
    """

    def forward(
        self,
        idx: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        input_pos_maxp1: int | None = None,
        lm_head_chunk_size: int = 0,
        *,
        token_pos: torch.Tensor | None = None,
        attn_mask: torch.Tensor | BlockMask | None = None,
    ) -> Any:
        if token_pos is None:
            return super().forward(idx, input_pos, input_pos_maxp1, lm_head_chunk_size)
        # RoPE from each token's position in its own record: (B, T, rope_n_elem)
        cos = self.cos.index_select(0, token_pos.reshape(-1)).view(*token_pos.shape, -1)
        sin = self.sin.index_select(0, token_pos.reshape(-1)).view(*token_pos.shape, -1)
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.config.scale_embeddings:
            x = x * torch.tensor(self.config.n_embd**0.5, dtype=x.dtype)
        for block in self.transformer.h:
            x = block(x, cos, sin, attn_mask)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab), or the loss rows (LossPositions)


def packing_problem(config: Config) -> str | None:
    """Why `--packing` cannot run on a base of this config (None: it can)."""
    if config.sliding_window_size is not None and config.sliding_window_indices is not None:
        if any(config.sliding_window_indices):
            return f"--packing does not support {config.name}'s sliding-window attention: drop --packing"
    if config.attention_logit_softcapping is not None or config.final_logit_softcapping is not None:
        return f"--packing does not support {config.name}'s logit soft-capping: drop --packing"
    if config.rope_indices is not None or config.latent_attention:
        return f"--packing does not support {config.name}'s attention layout: drop --packing"
    return None


def enable_packing(model: GPT) -> None:
    """Let `model` (litgpt's LoRA GPT) take packed rows: swaps classes in place, names unchanged."""
    if problem := packing_problem(model.config):
        raise ValueError(problem)
    model.__class__ = PackedGPT
    for module in model.modules():
        if type(module) is LoRACausalSelfAttention:
            module.__class__ = PackedAttention
