"""Batched, chunked prefill: several prompts' next pieces in one forward pass, each into its own slot.

A *chunk* is a padded batch of rows, one row per prompt: row i holds the next `len(tokens)` tokens of a
prompt whose first `start` tokens are already in its slot's KV cache (0 for a new prompt), at positions
`start, start + 1, ...`. Rows are padded on the right to the chunk's longest row; litgpt's causal mask,
gathered at each row's own positions, keeps the prompts apart (a row attends to its own slot only) and
keeps each real token from seeing the padding after it. The padding's keys/values land in the slot past
the prompt's tokens written so far, where the next chunk or decode step overwrites them before anything
reads them (a decode step writes its position before attending to it).

`plan_chunk` packs prompts into a chunk under a token budget (rows x longest row, the padded cost);
`chunk_logits` runs one chunk and returns the next-token logits of the rows whose prompt ends in it.
Both are pure functions over explicit state, driven by `serve.runner.Runner.prefill_chunk` and
`serve.engine`'s scheduler. Imports only torch, litgpt and `serve.generate`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from litgpt.model import GPT, do_softcapping

from serve.generate import SlotKVCache


@dataclass
class ChunkRow:
    """One prompt's piece of a prefill chunk."""

    slot: int
    """The KV-cache slot the prompt is written to."""
    start: int
    """Tokens of the prompt already in the slot (its position of `tokens[0]`)."""
    tokens: list[int]
    """The prompt's next tokens (at least one)."""
    last: bool
    """The prompt ends with this piece: its first new token is sampled from the chunk."""


def plan_chunk(remaining: Sequence[int], budget: int) -> list[int]:
    """How many tokens of each candidate prompt (in order, `remaining` tokens left each) the next chunk
    takes: a prefix of the candidates, each row as long as the padded cost (rows x longest row) stays
    within `budget`. The first candidate always gets min(remaining, budget) tokens; a later one whose
    row would not fit ends the chunk, and one may get fewer tokens than it has left (continued in the next
    chunk)."""
    lengths: list[int] = []
    longest = 0
    for left in remaining:
        cap = budget // (len(lengths) + 1)  # the longest row with one more row in the chunk
        if lengths and cap < longest:
            break
        n = min(left, max(cap, 1))
        lengths.append(n)
        longest = max(longest, n)
    return lengths


class ChunkKVCache(SlotKVCache):
    """A `SlotKVCache` while a chunk runs (`chunk_caches` swaps the class in and out): batch row i is
    slot `chunk_slots[i]`, written at its own positions, and attends over the slot's first `chunk_span`
    positions. The decode step's compiled graphs never see this class."""

    chunk_slots: torch.Tensor  # (R,) int64
    chunk_span: int

    def forward(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # input_pos: (R, T); k, v: (R, G, T, hs)
        rows = self.chunk_slots.unsqueeze(1)  # (R, 1)
        # advanced indices around a slice put the indexed dims first: (R, T, G, hs)
        self.k[rows, :, input_pos] = k.transpose(1, 2)
        self.v[rows, :, input_pos] = v.transpose(1, 2)
        span = self.chunk_span
        return self.k[self.chunk_slots, :, :span], self.v[self.chunk_slots, :, :span]  # (R, G, span, hs)


@contextlib.contextmanager
def chunk_caches(model: GPT, slots: torch.Tensor, span: int) -> Iterator[None]:
    """Within the block, `model`'s slot caches write batch row i to slot `slots[i]` (see ChunkKVCache)."""
    caches = [block.attn.kv_cache for block in model.transformer.h]
    if not all(type(cache) is SlotKVCache for cache in caches):
        raise TypeError("call serve.generate.setup_caches first")
    for cache in caches:
        cache.__class__ = ChunkKVCache  # same buffers; only the row → slot mapping differs
        cache.chunk_slots, cache.chunk_span = slots, span
    try:
        yield
    finally:
        for cache in caches:
            cache.__class__ = SlotKVCache
            del cache.chunk_slots, cache.chunk_span


def chunk_logits(
    model: GPT,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    span: int,
    pick_rows: torch.Tensor,
    pick_cols: torch.Tensor,
) -> torch.Tensor:
    """Run one chunk through `model` (its keys/values into the slots) and return the next-token logits at
    the picked tokens (each finishing row's last real token).

    tokens, positions: (R, T) int64; slots: (R,) int64; span: the longest slot prefix attended to
    (max position + 1); pick_rows, pick_cols: (D,) int64. Returns (D, vocab_size) float32.

    litgpt's `GPT.forward` with batched positions, except that the final norm and LM head run on the
    picked tokens only (a chunk of 4096 tokens would otherwise make ~0.5 GB of logits at a 65k
    vocabulary to keep a few rows).
    """
    config = model.config
    if model.mask_cache is None:
        raise TypeError("call serve.generate.setup_caches first")
    cos, sin = model.cos[positions], model.sin[positions]  # (R, T, rope_n)
    mask = model.mask_cache[0, 0][positions][..., :span].unsqueeze(1)  # (R, 1, T, span) bool
    x = model.transformer.wte(tokens)  # (R, T, C)
    if config.scale_embeddings:
        x = x * torch.tensor(config.n_embd**0.5, dtype=x.dtype)
    with chunk_caches(model, slots, span):
        for i, block in enumerate(model.transformer.h):
            if config.rope_indices is not None:
                idx = config.rope_indices[i]
                x = block(x, cos[..., idx], sin[..., idx], mask, positions, span)
            else:
                x = block(x, cos, sin, mask, positions, span)
    x = model.transformer.ln_f(x[pick_rows, pick_cols].unsqueeze(1))  # (D, 1, C)
    logits = model.lm_head(x)  # (D, 1, padded_vocab)
    if config.final_logit_softcapping is not None:
        logits = do_softcapping(logits, config.final_logit_softcapping)
    return logits[:, 0, : config.vocab_size].float()  # (D, vocab_size)


def pad_chunk(rows: Sequence[ChunkRow], max_seq: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The chunk's tokens and positions, (R, T) int64 on the host, and its span (max real position + 1).
    Padding positions run on past each row's tokens, clamped into the cache (never onto a real token:
    a prompt ends at least one position before the cache does)."""
    # at least 2 wide: a one-token chunk would take the decode step's one-token paths (Triton kernels
    # specialised on the attended length, compiled on first use: not while serving)
    T = max(2, *(len(row.tokens) for row in rows))
    tokens = torch.zeros(len(rows), T, dtype=torch.int64)  # (R, T)
    for i, row in enumerate(rows):
        tokens[i, : len(row.tokens)] = torch.tensor(row.tokens, dtype=torch.int64)
    starts = torch.tensor([row.start for row in rows], dtype=torch.int64).unsqueeze(1)  # (R, 1)
    positions = (starts + torch.arange(T)).clamp_(max=max_seq - 1)  # (R, T)
    span = max(row.start + len(row.tokens) for row in rows)
    return tokens, positions, span
