"""Generation on litgpt's GPT in the gpt-fast manner: sample → prefill → decode one token.

The decode step runs every *slot* of a static batch at once, each slot at its own position, so requests
that arrived at different times share one forward pass (continuous batching, driven by `serve.engine`).
Two small additions to litgpt make that possible, both subclasses of litgpt's own modules:

- `SlotKVCache`: a static KV cache of shape (slots, kv heads, max_seq, head size) that writes each batch
  row at its own position while decoding, and one chosen slot while prefilling a prompt.
- `DecodeAttention`: for multi-query attention (Falcon-7B: 71 query heads, 1 key/value head) it folds the
  query heads into the query-length axis while decoding, so attention reads the cache once instead of
  broadcasting it to 71 heads (which makes the math kernel copy the cache on every step).

This module imports only torch and litgpt: the GPU benchmark runs it without the web stack.
"""

from __future__ import annotations

import math

import torch
from litgpt import lora
from litgpt.model import GPT, CausalSelfAttention, KVCache, build_mask_cache


class SlotKVCache(KVCache):
    """litgpt's KV cache, one row per slot; rows are written at per-row positions.

    Buffers `k`, `v`: (slots, n_query_groups, max_seq, head_size).
    """

    prefill_slot: int = 0
    """The slot a 1-D `input_pos` (a prompt) is written to; `prefill` sets it around its forward."""

    def forward(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: (bs, G, T, hs)
        bs = k.size(0)
        if input_pos.dim() == 1:  # prefill: positions (T,) of slots [prefill_slot, prefill_slot + bs)
            first = self.prefill_slot
            k_rows = self.k[first : first + bs]
            v_rows = self.v[first : first + bs]
            k_rows.index_copy_(2, input_pos, k)
            v_rows.index_copy_(2, input_pos, v)
            return k_rows, v_rows  # (bs, G, max_seq, hs)
        # decode: batch row i is slot i, at its own positions input_pos[i]: (bs, T)
        rows = torch.arange(bs, device=k.device).unsqueeze(1)  # (bs, 1)
        k_rows = self.k[:bs]
        v_rows = self.v[:bs]
        # advanced indices around a slice put the indexed dims first: (bs, T, G, hs)
        k_rows[rows, :, input_pos] = k.transpose(1, 2)
        v_rows[rows, :, input_pos] = v.transpose(1, 2)
        return k_rows, v_rows  # (bs, G, max_seq, hs)


class DecodeAttention(CausalSelfAttention):
    """litgpt's attention; one-token steps of grouped/multi-query attention skip the head broadcast."""

    def scaled_dot_product_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # q: (B, nh_q, T, hs); k, v: (B, nh_kv, S, hs) — litgpt leaves nh_kv = 1 un-broadcast when decoding
        B, nh_q, T, hs = q.shape
        nh_kv = k.size(1)
        if T != 1 or nh_kv == nh_q or mask is None or self.config.attention_logit_softcapping is not None:
            return super().scaled_dot_product_attention(q, k, v, mask)
        # query head h uses key/value group h // q_per_kv (litgpt's repeat_interleave order), so the
        # q_per_kv heads of a group become q_per_kv "positions" attending to that group's cache
        q = q.reshape(B, nh_kv, nh_q // nh_kv, hs)  # (B, nh_kv, q_per_kv, hs)
        scale = 1.0 / math.sqrt(self.config.attention_scores_scalar or self.config.head_size)
        scale = scale * self.mscale * self.mscale  # as litgpt's
        # mask: (B, 1, 1, S) bool, the same row for every query of a slot. Plain matmuls and a softmax,
        # not F.scaled_dot_product_attention: for one query token the fused kernels are latency-bound
        # (cuDNN's flash kernel took ~32 us a layer on an H100, 15% of a Falcon-7B decode step)
        att = (q @ k.transpose(-2, -1)).float() * scale  # (B, nh_kv, q_per_kv, S)
        att = att.masked_fill(~mask, float("-inf"))
        y = torch.softmax(att, dim=-1).to(v.dtype) @ v  # (B, nh_kv, q_per_kv, hs)
        return y.reshape(B, nh_q, 1, hs).transpose(1, 2)  # (B, 1, nh_q, hs)


# litgpt's LoRA attention too: an NF4 base is served with the adapter unmerged (`--quantize`)
SERVABLE_ATTENTION = (CausalSelfAttention, lora.CausalSelfAttention)


def setup_caches(model: GPT, max_batch: int, max_seq: int) -> None:
    """Give `model` a static (max_batch, max_seq) slot KV cache and the decode attention, in place.

    Also rebuilds the RoPE cache on the model's device (a model built on the meta device has none).
    """
    config = model.config
    if config.sliding_window_size is not None or config.latent_attention:
        raise ValueError(
            f"{config.name}: sliding-window and latent attention are not supported by the server"
        )
    if max_seq > config.block_size:
        raise ValueError(f"max_seq {max_seq} exceeds the model's context length {config.block_size}")
    weight = model.transformer.wte.weight  # not lm_head: it may be a LoRA layer (`--quantize`)
    device, dtype = weight.device, weight.dtype
    model.mask_cache = None
    model.max_seq_length = max_seq
    model.cos, model.sin = model.rope_cache(device=device)
    rope_n = model.rope_cache_length()
    for block in model.transformer.h:
        attn = block.attn
        if type(attn) not in SERVABLE_ATTENTION and not isinstance(attn, DecodeAttention):
            raise ValueError(f"unsupported attention module {type(attn).__name__}: serve a plain litgpt GPT")
        attn.__class__ = DecodeAttention  # same module and weights; only the attention kernel call differs
        v_shape = (max_batch, config.n_query_groups, max_seq, config.head_size)
        k_shape = (*v_shape[:3], rope_n + config.head_size - config.rope_n_elem)
        attn.kv_cache = SlotKVCache(k_shape, v_shape, device=device, dtype=dtype)
    model.mask_cache = build_mask_cache(max_seq, device)  # (1, 1, max_seq, max_seq) bool


def set_prefill_slot(model: GPT, slot: int) -> None:
    for block in model.transformer.h:
        cache = block.attn.kv_cache
        assert isinstance(cache, SlotKVCache), "call setup_caches first"
        cache.prefill_slot = slot


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """One token per row: greedy where temperature is 0, else top-p sampling at that temperature.

    logits: (B, V) float; temperature, top_p: (B,) float. Returns (B,) int64. No host syncs, no
    data-dependent shapes (CUDA-graph friendly): the exponential race below replaces `multinomial`.
    """
    greedy = logits.argmax(dim=-1)  # (B,)
    probs = torch.softmax(logits / temperature.clamp_min(1e-5).unsqueeze(-1), dim=-1)  # (B, V)
    sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)  # (B, V)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
    sorted_probs = sorted_probs.masked_fill(before > top_p.unsqueeze(-1), 0.0)  # keeps the top token
    race = torch.empty_like(sorted_probs).exponential_(1)  # argmax(p / Exp(1)) ~ Categorical(p)
    choice = (sorted_probs / race).argmax(dim=-1, keepdim=True)  # (B, 1)
    sampled = sorted_ids.gather(-1, choice).squeeze(-1)  # (B,)
    return torch.where(temperature > 0, sampled, greedy)


def prefill(
    model: GPT, prompt: torch.Tensor, slot: int, temperature: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Write `prompt`'s keys/values into `slot` and sample the first new token.

    prompt: (T,) int; temperature, top_p: (1,). Returns (1,) int64.
    """
    T = prompt.size(0)
    input_pos = torch.arange(T, device=prompt.device)  # (T,)
    set_prefill_slot(model, slot)
    try:
        logits = model(prompt.view(1, T), input_pos, input_pos_maxp1=T)  # (1, T, V)
    finally:
        set_prefill_slot(model, 0)
    return sample(logits[:, -1, : model.config.vocab_size].float(), temperature, top_p)


def decode_logits(model: GPT, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """The model half of a decode step for slots [0, B): token i sits at position input_pos[i] of slot i.

    tokens, input_pos: (B, 1) int64. Returns the next-token logits, (B, vocab_size) float32. This is the
    part the engine compiles into CUDA graphs. `sample` stays outside them: Inductor (torch 2.11,
    Triton) cannot generate the top-p cumsum fused with the sampling argmax over a 65k vocabulary
    ("NYI TritonSplitDimKernel reductions"), and the eager sampling kernels cost far less than the
    weights' read.
    """
    logits = model(tokens, input_pos)  # (B, 1, V)
    # padded vocabulary rows are no tokens: sample among the first vocab_size only
    return logits[:, -1, : model.config.vocab_size].float()  # (B, vocab_size)
