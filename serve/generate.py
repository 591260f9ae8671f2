"""Generation on litgpt's GPT in the gpt-fast manner: sample → prefill → decode one token.

The decode step runs every *slot* of a static batch at once, each slot at its own position, so requests
that arrived at different times share one forward pass (continuous batching, driven by `serve.engine`).
Four additions to litgpt make that possible and fast:

- `SlotKVCache`: a static KV cache of shape (slots, kv heads, max_seq, head size) that writes each batch
  row at its own position while decoding, and one chosen slot while prefilling a prompt.
- `DecodeAttention`: one-token steps of grouped/multi-query attention never broadcast the key/value
  heads to the query heads (litgpt's `repeat_interleave` copies the whole cache every step): the query
  heads of a group attend to that group's cache as one small matmul, or one Triton kernel.
- `ParallelBlock`: a parallel-residual block with a shared norm (Falcon's) reads its four weight matrices
  as two: `[qkv; fc]` on the normed input and `[proj | mlp.proj]` on `[attention heads, gelu(fc)]`, whose
  sum is exactly `attention_output + mlp_output`.
- `SequentialBlock`: a sequential-residual block with a gated MLP (Llama, SmolLM2, Mistral, Qwen2.5/3,
  Gemma 1) reads its MLP's gate and up matrices as one `[gate; up]`; on one token the activation and
  product ride in that GEMV's epilogue and both residual adds in the output projections'.
One big GEMV streams the weights closer to the memory bandwidth than two small ones, and the step has
fewer kernels. One-token steps on a GPU run these (and the LM head, and the decode attention) as
`serve.kernels`' Triton kernels. `fuse_blocks` picks the fused block per litgpt block; blocks over an
NF4 base (`--quantize`, the adapter unmerged) get `serve.blocks_nf4`'s, whose decode steps run the 4-bit
GEMVs of `serve.kernels_nf4`; a block of another kind (MoE, Gemma 2/3's extra norms, LoRA layers over a
full-precision base) stays litgpt's own, correct but slower.

The sampler (`sample`) runs inside the decode step's graph too. This module imports only torch, litgpt
and `serve.kernels` (Triton where installed): the GPU benchmark runs it without the web stack.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from litgpt import lora
from litgpt.config import Config
from litgpt.model import (
    GPT,
    Block,
    CausalSelfAttention,
    GemmaMLP,
    GptNeoxMLP,
    KVCache,
    LLaMAMLP,
    apply_rope,
    apply_rope_interleave,
    build_mask_cache,
)
from torch import nn

from serve import blocks_nf4, kernels
from serve.fused import FusedBlock, gated_activation
from serve.kernels_lora import LoraBank, add_delta

log = logging.getLogger(__name__)


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
        # advanced indices around a slice put the indexed dims first: (bs, T, G, hs). Written into the
        # whole buffer, not into a `[:bs]` view of it: under torch.compile a write through the view
        # copies the view's slots (a slot's whole cache, every layer, every step) before writing
        self.k[rows, :, input_pos] = k.transpose(1, 2)
        self.v[rows, :, input_pos] = v.transpose(1, 2)
        return self.k[:bs], self.v[:bs]  # (bs, G, max_seq, hs)


class DecodeAttention(CausalSelfAttention):
    """litgpt's attention; one-token steps of grouped/multi-query attention skip the head broadcast."""

    attention_kernel: bool = False
    """One-token steps on a GPU run `serve.kernels.decode_attention` (set by `setup_caches`)."""

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        input_pos_maxp1: int | None = None,
    ) -> torch.Tensor:
        """litgpt's forward, but a one-token step with a KV cache keeps the cache's key/value groups as
        they are: litgpt repeats them to every query head (`repeat_interleave`), a copy of the whole
        cache every layer and step (Llama-3.1-8B: 4 of its 32 heads' worth read, 32 written, 32 read)."""
        config = self.config
        B, T, _ = x.shape
        if (
            T != 1
            or input_pos is None
            or self.apply_sliding_window_attention
            or config.attention_logit_softcapping is not None
        ):
            return super().forward(x, cos, sin, mask, input_pos, input_pos_maxp1)
        hs, n_head, n_groups = config.head_size, config.n_head, config.n_query_groups
        n_rope = config.rope_n_elem
        qkv = self.qkv(x)  # (B, 1, (n_head + 2 * n_groups) * hs)
        q, k, v = qkv.split((n_head * hs, n_groups * hs, n_groups * hs), dim=-1)
        if config.norm_qk and config.norm_qk_type == "olmo2":
            q, k = self.norm_q(q), self.norm_k(k)
        q = q.view(B, T, n_head, hs).transpose(1, 2)  # (B, nh_q, 1, hs)
        k = k.view(B, T, n_groups, hs).transpose(1, 2)  # (B, nh_kv, 1, hs)
        v = v.view(B, T, n_groups, hs).transpose(1, 2)  # (B, nh_kv, 1, hs)
        if config.norm_qk and config.norm_qk_type == "default":
            q, k = self.norm_q(q), self.norm_k(k)
        rope = apply_rope_interleave if config.rope_interleave else apply_rope
        q = torch.cat((rope(q[..., :n_rope], cos, sin), q[..., n_rope:]), dim=-1)
        k = torch.cat((rope(k[..., :n_rope], cos, sin), k[..., n_rope:]), dim=-1)
        if not isinstance(self.kv_cache, KVCache):
            raise TypeError("call serve.generate.setup_caches first")
        k, v = self.kv_cache(input_pos, k, v)  # (B, nh_kv, S, hs): the groups, not broadcast
        if input_pos_maxp1 is not None:
            k, v = k[..., :input_pos_maxp1, :], v[..., :input_pos_maxp1, :]
        y = self.scaled_dot_product_attention(q, k, v, mask)  # (B, 1, nh_q, hs)
        return self.proj(y.reshape(B, T, n_head * hs))

    def scaled_dot_product_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # q: (B, nh_q, T, hs); k, v: (B, nh_kv, S, hs), nh_kv dividing nh_q (not broadcast when decoding)
        B, nh_q, T, hs = q.shape
        nh_kv = k.size(1)
        softcapping = self.config.attention_logit_softcapping is not None
        if softcapping and mask is not None and mask.dtype == torch.bool:
            # litgpt 0.5.13's soft-capping path adds the mask to the scores: a boolean one (its KV-cache
            # mask) would add 1 where allowed and mask nothing (Gemma 2 attended to the empty cache)
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                ~mask, torch.finfo(q.dtype).min
            )
        if T != 1 or mask is None or softcapping:
            return super().scaled_dot_product_attention(q, k, v, mask)
        # query head h uses key/value group h // q_per_kv (litgpt's repeat_interleave order), so the
        # q_per_kv heads of a group become q_per_kv "positions" attending to that group's cache
        scale = 1.0 / math.sqrt(self.config.attention_scores_scalar or self.config.head_size)
        scale = scale * self.mscale * self.mscale  # as litgpt's
        if self.attention_kernel and kernels.attention_supported(q, k):  # one Triton kernel, not three
            return kernels.decode_attention(q, k, v, mask, scale)
        q = q.reshape(B, nh_kv, nh_q // nh_kv, hs)  # (B, nh_kv, q_per_kv, hs)
        # mask: (B, 1, 1, S) bool, the same row for every query of a slot. Plain matmuls and a softmax,
        # not F.scaled_dot_product_attention: for one query token the fused kernels are latency-bound
        # (cuDNN's flash kernel took ~32 us a layer on an H100, 15% of a Falcon-7B decode step)
        att = (q @ k.transpose(-2, -1)).float() * scale  # (B, nh_kv, q_per_kv, S)
        att = att.masked_fill(~mask, float("-inf"))
        y = torch.softmax(att, dim=-1).to(v.dtype) @ v  # (B, nh_kv, q_per_kv, hs)
        return y.reshape(B, nh_q, 1, hs).transpose(1, 2)  # (B, 1, nh_q, hs)


# litgpt's LoRA attention too: an NF4 base is served with the adapter unmerged (`--quantize`)
SERVABLE_ATTENTION = (CausalSelfAttention, lora.CausalSelfAttention)


class ParallelBlock(FusedBlock):
    """A parallel-residual, shared-norm litgpt `Block` (Falcon's) with its matmuls fused two by two.

    `x + proj(attn(qkv(n))) + mlp.proj(gelu(mlp.fc(n)))`, n = norm_1(x), computed as
    `x + w_out([attn(h[:qkv]), gelu(h[qkv:])])` with `h = w_in(n)`, `w_in = [qkv; fc]` (rows stacked) and
    `w_out = [proj | mlp.proj]` (columns side by side). The block's attention module is kept, its `qkv`
    and `proj` replaced by identities: it receives the fused GEMM's qkv part and returns the heads side
    by side, so its KV cache and `DecodeAttention` work unchanged.
    """

    def __init__(self, block: Block, gemv: bool = True) -> None:
        super().__init__()
        attn, mlp = block.attn, block.mlp
        self.config = block.config
        self.norm_1 = block.norm_1
        # one token on a GPU: Triton GEMVs that also do the GELU, concatenation and residual add
        self.gemv = gemv and kernels.available()
        self.qkv_size = attn.qkv.out_features
        self.w_in = _stack_linear(attn.qkv, mlp.fc, dim=0)
        self.w_out = _stack_linear(attn.proj, mlp.proj, dim=1)
        attn.qkv, attn.proj = nn.Identity(), nn.Identity()
        self.attn = attn
        # several twins on one base (`serve.multi_lora`): each batch row's LoRA update of w_in and w_out
        self.lora_w_in: LoraBank | None = None
        self.lora_w_out: LoraBank | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        input_pos_maxp1: int | None = None,
    ) -> torch.Tensor:
        approximate = self.config.gelu_approximate
        # one token: Triton GEMVs, the first giving [qkv, gelu(fc)], the second adding x (static under
        # torch.compile: shapes are fixed)
        one_token = self.gemv and kernels.use_gemv(x)
        n = self.norm_1(x)
        lora_in, lora_out = self.lora_w_in, self.lora_w_out  # a twin bank's update: before the GELU
        if one_token:
            lora = None if lora_in is None else lora_in.term(n)
            h = kernels.gemv(n, self.w_in.weight, self.w_in.bias, self.qkv_size, approximate, lora=lora)
        else:
            h = add_delta(self.w_in(n), None if lora_in is None else lora_in(n))  # (B, T, qkv + intermediate)
        qkv, mlp = h.split((self.qkv_size, h.size(-1) - self.qkv_size), dim=-1)
        heads = self.attn(qkv, cos, sin, mask, input_pos, input_pos_maxp1)  # (B, T, n_head * hs)
        if one_token:  # mlp is gelu(fc) already
            lora = None if lora_out is None else lora_out.term(heads, mlp)
            return kernels.cat_gemv(heads, mlp, self.w_out.weight, self.w_out.bias, x, lora=lora)
        both = torch.cat((heads, F.gelu(mlp, approximate=approximate)), dim=-1)
        return add_delta(self.w_out(both), None if lora_out is None else lora_out(both)) + x


class SequentialBlock(FusedBlock):
    """A sequential-residual litgpt `Block` with a gated MLP (Llama's SwiGLU, Gemma's GeGLU), its MLP's
    gate and up matrices read as one.

    `x = x + proj(attn(qkv(norm_1(x))))`, then `x + down(act(gate(n)) * up(n))` with n = norm_2(x),
    computed with `w_in = [gate; up]` (rows stacked). One token on a GPU is four Triton GEMVs: qkv;
    proj, adding x; `[gate; up]`, giving `act(gate) * up`; down, adding x. The norms stay torch's
    (Inductor fuses each with its neighbours; folding the norm into a GEMV's prologue was slower at
    Falcon-7B's shape). The attention module is kept, its `qkv` and `proj` replaced by identities, as in
    `ParallelBlock`.
    """

    def __init__(self, block: Block, gemv: bool = True) -> None:
        super().__init__()
        attn, mlp = block.attn, block.mlp
        self.config = block.config
        self.norm_1, self.norm_2 = block.norm_1, block.norm_2
        # one token on a GPU: Triton GEMVs that also do the activation, product and residual adds
        self.gemv = gemv and kernels.available()
        self.activation = gated_activation(type(mlp) is GemmaMLP, self.config.gelu_approximate)
        self.qkv, self.proj = attn.qkv, attn.proj
        self.intermediate_size = mlp.fc_1.out_features
        self.w_in = _stack_linear(mlp.fc_1, mlp.fc_2, dim=0)  # [gate; up]
        self.w_down = mlp.proj
        attn.qkv, attn.proj = nn.Identity(), nn.Identity()
        self.attn = attn
        # several twins on one base (`serve.multi_lora`): each batch row's LoRA update of each matrix
        self.lora_qkv: LoraBank | None = None
        self.lora_proj: LoraBank | None = None
        self.lora_w_in: LoraBank | None = None
        self.lora_w_down: LoraBank | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        input_pos_maxp1: int | None = None,
    ) -> torch.Tensor:
        # one token: Triton GEMVs (static under torch.compile: shapes are fixed)
        one_token = self.gemv and kernels.use_gemv(x)
        n = self.norm_1(x)
        if one_token:  # a twin bank's update inside each GEMV (before the activation)
            qkv = kernels.gemv(n, self.qkv.weight, self.qkv.bias, lora=_term(self.lora_qkv, n))
        else:
            qkv = add_delta(self.qkv(n), _update(self.lora_qkv, n))
        heads = self.attn(qkv, cos, sin, mask, input_pos, input_pos_maxp1)  # (B, T, n_head * hs)
        if one_token:
            lora = _term(self.lora_proj, heads)
            x = kernels.gemv(heads, self.proj.weight, self.proj.bias, residual=x, lora=lora)
        else:
            x = add_delta(self.proj(heads), _update(self.lora_proj, heads)) + x  # (B, T, C)
        n = self.norm_2(x)
        if one_token:
            lora = _term(self.lora_w_in, n)
            act = kernels.glu_gemv(n, self.w_in.weight, self.w_in.bias, self.activation, lora=lora)
            lora = _term(self.lora_w_down, act)
            return kernels.gemv(act, self.w_down.weight, self.w_down.bias, residual=x, lora=lora)
        # 2 x (B, T, intermediate)
        gate, up = add_delta(self.w_in(n), _update(self.lora_w_in, n)).split(self.intermediate_size, dim=-1)
        act = self.act(gate) * up
        return add_delta(self.w_down(act), _update(self.lora_w_down, act)) + x


def _update(bank: LoraBank | None, x: torch.Tensor) -> torch.Tensor | None:
    """A twin bank's LoRA update of token rows `x` (`serve.multi_lora`), or None without one."""
    return None if bank is None else bank(x)


def _term(bank: LoraBank | None, x: torch.Tensor) -> kernels.LoraTerm | None:
    """A twin bank's LoRA update of one token, for its GEMV to add, or None without one."""
    return None if bank is None else bank.term(x)


class GemvLinear(nn.Linear):
    """An `nn.Linear` (same weights) that multiplies one token with the Triton GEMV (the LM head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.use_gemv(x):
            return kernels.gemv(x, self.weight, self.bias)
        return super().forward(x)


def _stack_linear(a: nn.Linear, b: nn.Linear, dim: int) -> nn.Linear:
    """One Linear computing `cat(a(x), b(x))` (dim 0: rows stacked) or `a(x1) + b(x2)` on `cat(x1, x2)`
    (dim 1: columns side by side). Frees `a`'s and `b`'s weights as it goes (peak: one extra layer)."""
    weight = torch.cat((a.weight, b.weight), dim=dim)
    a.weight = b.weight = None  # type: ignore[assignment]  # drop the originals before the next layer
    out_features, in_features = weight.shape
    fused = nn.Linear(in_features, out_features, bias=a.bias is not None or b.bias is not None, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if fused.bias is not None:
        if dim == 0:
            parts: list[torch.Tensor] = [
                lin.bias if lin.bias is not None else weight.new_zeros(lin.out_features) for lin in (a, b)
            ]
            bias = torch.cat(parts)
        else:
            bias = sum(lin.bias for lin in (a, b) if lin.bias is not None)  # type: ignore[assignment]
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def fusion_for(block: nn.Module) -> tuple[type[FusedBlock] | None, str]:
    """The fused block that computes `block` exactly, or None and why there is none: a plain litgpt
    Block (no LoRA, no NF4) without extra norms around attention and MLP, either parallel-residual with
    one shared norm and a GELU MLP (Falcon) or sequential-residual with a gated MLP (Llama's kind). A
    block over an NF4 base (LoRA or not) gets its NF4 counterpart (`serve.blocks_nf4`)."""
    if blocks_nf4.holds_nf4(block):
        return blocks_nf4.fusion_for(block)
    if type(block) is not Block:
        return None, f"{type(block).__module__}.{type(block).__name__} blocks (LoRA or another kind)"
    config: Config = block.config
    attn: Any = block.attn
    mlp: Any = block.mlp
    if type(attn) not in (CausalSelfAttention, DecodeAttention):
        return None, f"{type(attn).__name__} attention"
    if not all(isinstance(n, nn.Identity) for n in (block.post_attention_norm, block.post_mlp_norm)):
        return None, "norms after attention and MLP (Gemma 2/3)"
    linears = [attn.qkv, attn.proj, *(getattr(mlp, name, None) for name in ("fc", "fc_1", "fc_2", "proj"))]
    if not all(lin is None or type(lin) is nn.Linear for lin in linears):
        return None, "LoRA or quantized linear layers"
    if config.parallel_residual:
        if config.shared_attention_norm and type(mlp) is GptNeoxMLP:
            return ParallelBlock, ""
        return None, f"a parallel residual with {'one' if config.shared_attention_norm else 'two'} norms" + (
            f" and {type(mlp).__name__}" if type(mlp) is not GptNeoxMLP else ""
        )
    if type(mlp) in (LLaMAMLP, GemmaMLP):
        return SequentialBlock, ""
    return None, f"a sequential residual with {type(mlp).__name__}"


def can_fuse(block: nn.Module) -> bool:
    """Whether a fused block (`ParallelBlock` or `SequentialBlock`) computes `block` exactly."""
    return fusion_for(block)[0] is not None


def fuse_blocks(model: GPT, gemv: bool = True) -> int:
    """Replace every fusable block of `model` by its fused block, in place; returns how many.

    Blocks of a kind no fused block covers stay litgpt's own (correct, slower); a log line says which
    and why. With `gemv` (and Triton installed) one-token steps on a GPU run `serve.kernels`' GEMVs, the
    LM head's too. Inference only: the fused model has other parameter names (it is never saved or
    trained).
    """
    blocks = model.transformer.h
    n = 0
    left: dict[str, int] = {}
    for i, block in enumerate(blocks):
        if isinstance(block, FusedBlock):
            continue
        kind, why = fusion_for(block)
        if kind is None:
            left[why] = left.get(why, 0) + 1
            continue
        blocks[i] = kind(block, gemv=gemv)
        n += 1
    for why, count in left.items():
        log.warning(
            "%s: %d of %d blocks run as litgpt's own blocks, not fused (%s): same results, slower decoding",
            model.config.name,
            count,
            len(blocks),
            why,
        )
    if gemv and kernels.available() and type(model.lm_head) is nn.Linear:
        model.lm_head.__class__ = GemvLinear  # same module and weight; only the one-token path differs
    return n


fuse_parallel_blocks = fuse_blocks
"""`fuse_blocks`' old name, from when Falcon's parallel blocks were the only fused kind."""


def setup_caches(model: GPT, max_batch: int, max_seq: int, attention_kernel: bool = True) -> None:
    """Give `model` a static (max_batch, max_seq) slot KV cache and the decode attention, in place.

    With `attention_kernel` (and Triton installed) one-token steps on a GPU run the Triton decode
    attention. Also rebuilds the RoPE cache on the model's device (a model built on the meta device has
    none), with the config's RoPE settings (e.g. Llama-3.1's `rope_adjustments`). Sliding-window
    attention (Mistral v0.1, Gemma 2/3) is served up to its window, where it is plain causal attention.
    """
    config = model.config
    if config.latent_attention:
        raise ValueError(f"{config.name}: latent attention is not supported by the server")
    if max_seq > config.block_size:
        raise ValueError(f"max_seq {max_seq} exceeds the model's context length {config.block_size}")
    windowed = [block.attn for block in model.transformer.h if block.attn.apply_sliding_window_attention]
    if windowed:
        window = config.sliding_window_size
        if window is None or max_seq > window:
            raise ValueError(
                f"{config.name}: sliding-window attention ({window} tokens) is not supported by the server "
                f"beyond its window: use a max_seq_length of at most {window} (now {max_seq})"
            )
        for attn in windowed:  # a window as long as the cache is plain causal attention
            attn.apply_sliding_window_attention = False
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
        attn.attention_kernel = attention_kernel and kernels.available()
        v_shape = (max_batch, config.n_query_groups, max_seq, config.head_size)
        k_shape = (*v_shape[:3], rope_n + config.head_size - config.rope_n_elem)
        attn.kv_cache = SlotKVCache(k_shape, v_shape, device=device, dtype=dtype)
    model.mask_cache = build_mask_cache(max_seq, device)  # (1, 1, max_seq, max_seq) bool


def select_kernels(model: GPT, gemv: bool, attention: bool) -> None:
    """Switch a built model's one-token paths between `serve.kernels`' Triton kernels and torch, in place:
    the fused blocks' and the LM head's GEMVs (`gemv`), the decode attention (`attention`).

    For the runner's compile fallback (a compile with the kernels failed: try without) and benchmarks
    that compare both paths on the same weights; call it before the step is traced, not during.
    """
    gemv, attention = gemv and kernels.available(), attention and kernels.available()
    for block in model.transformer.h:
        if isinstance(block, FusedBlock):
            block.gemv = gemv
        if isinstance(block.attn, DecodeAttention):
            block.attn.attention_kernel = attention
    if type(model.lm_head) in (nn.Linear, GemvLinear):
        model.lm_head.__class__ = GemvLinear if gemv else nn.Linear


def uses_kernels(model: GPT) -> bool:
    """Whether any of `model`'s one-token paths runs a `serve.kernels` Triton kernel (on a GPU)."""
    return isinstance(model.lm_head, GemvLinear) or any(
        (isinstance(block, FusedBlock) and block.gemv)
        or (isinstance(block.attn, DecodeAttention) and block.attn.attention_kernel)
        for block in model.transformer.h
    )


def set_prefill_slot(model: GPT, slot: int) -> None:
    for block in model.transformer.h:
        cache = block.attn.kv_cache
        assert isinstance(cache, SlotKVCache), "call setup_caches first"
        cache.prefill_slot = slot


TOP_P_CANDIDATES = 1024
"""Top-p sampling (top_p < 1) picks its nucleus among this many most likely tokens."""


ARGMAX_CHUNK = 256


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """`x.argmax(-1)` for (B, V), as a max over chunks of 256 and an argmax over the chunk maxima: the
    same index (the first of equal maxima), but a wide row is no longer one reduction for one GPU block
    (Inductor does not split argmax; over Falcon's 65k vocabulary that took ~50 us a step)."""
    B, V = x.shape
    pad = -V % ARGMAX_CHUNK
    if pad:
        x = F.pad(x, (0, pad), value=float("-inf"))
    values, within = x.view(B, -1, ARGMAX_CHUNK).max(dim=-1)  # (B, chunks)
    chunk = values.argmax(dim=-1, keepdim=True)  # (B, 1)
    return (chunk * ARGMAX_CHUNK + within.gather(-1, chunk)).squeeze(-1)


def sample(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, candidates: int = TOP_P_CANDIDATES
) -> torch.Tensor:
    """One token per row: greedy where temperature is 0, else sampling at that temperature from the
    top-p nucleus (top_p < 1; found among the `candidates` most likely tokens) or the whole vocabulary.

    logits: (B, V) float; temperature, top_p: (B,) float. Returns (B,) int64. No host syncs, no
    data-dependent shapes, no full-vocabulary sort: this runs inside the decode step's CUDA graph. The
    nucleus comes from a `topk` prefix, so its cumsum is short (Inductor cannot generate a
    65k-wide scan fused with the argmax: "NYI TritonSplitDimKernel reductions"); a nucleus wider than
    `candidates` tokens is cut there. The exponential race replaces `multinomial`:
    argmax(p / Exp(1)) is distributed as Categorical(p).
    """
    greedy = argmax_rows(logits)  # (B,)
    probs = torch.softmax(logits / temperature.clamp_min(1e-5).unsqueeze(-1), dim=-1)  # (B, V)
    race = torch.empty_like(probs).exponential_(1)  # (B, V), i.i.d.
    whole = argmax_rows(probs / race)  # (B,) sampled from the whole vocabulary
    top_probs, top_ids = probs.topk(min(candidates, probs.size(-1)), dim=-1)  # (B, k), descending
    before = top_probs.cumsum(dim=-1) - top_probs  # mass of the more likely tokens
    top_probs = top_probs.masked_fill(before > top_p.unsqueeze(-1), 0.0)  # keeps the top token
    choice = (top_probs / race[:, : top_probs.size(-1)]).argmax(dim=-1, keepdim=True)  # (B, 1)
    nucleus = top_ids.gather(-1, choice).squeeze(-1)  # (B,)
    sampled = torch.where(top_p < 1.0, nucleus, whole)
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

    tokens, input_pos: (B, 1) int64. Returns the next-token logits, (B, vocab_size) float32.
    """
    logits = model(tokens, input_pos)  # (B, 1, V)
    # padded vocabulary rows are no tokens: sample among the first vocab_size only
    return logits[:, -1, : model.config.vocab_size].float()  # (B, vocab_size)


def decode_step(
    model: GPT,
    tokens: torch.Tensor,
    input_pos: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
) -> torch.Tensor:
    """One decode step for slots [0, B), sampling included: the function the engine compiles into CUDA
    graphs (model and sampler in one graph, no kernel launched from Python per step).

    tokens, input_pos: (B, 1) int64; temperature, top_p: (B,) float. Returns the next tokens, (B,) int64.
    """
    return sample(decode_logits(model, tokens, input_pos), temperature, top_p)
