"""Triton kernels for one-token decoding (batch 1), where a step is a string of matrix-vector products.

At batch 1 the GPU's time goes to streaming the weights; cuBLAS's GEMV kernels reached 2.7 TB/s on
an H100 at Falcon-7B's shapes, this one about 2.9 (a 4-row tile a program, 512-wide K chunks, loads
marked evict-first). It also takes the work of the kernels around it, each of which costs a launch gap
and a tail inside the CUDA graph:

- `gemv`: `W @ x`, optionally with GELU applied to the output rows from `gelu_from` on (Falcon's
  fused `[qkv; fc]` matmul gives `[qkv, gelu(fc)]`), and a residual added to the output (a Llama
  block's attention output projection with its residual add);
- `cat_gemv`: `W @ cat(a, b) + residual` reading `a` and `b` where they are (no concatenation copy):
  Falcon's fused `[proj | mlp.proj]` matmul with the block's residual add;
- `glu_gemv`: `act(W_gate @ x) * (W_up @ x)` from one stacked `[gate; up]` weight (Llama's SwiGLU,
  Gemma's GeGLU): each program reads its gate rows and the matching up rows and writes only the
  product, so the MLP's activation and product cost no kernel and its down projection reads half
  the bytes (folding them into the down projection's prologue instead would make every program of it
  read both halves and recompute the activation).
(Folding the LayerNorm into the first GEMV's prologue, and the GELU into the second's, was measured
slower at Falcon-7B's shape: every program recomputed them for the whole input vector; the norms stay
Inductor's.)
- `decode_attention`: one query token of grouped/multi-query attention over a slot KV cache (flash
  decoding: chunks of 128 keys in parallel with an online softmax, then one combining kernel; keys past
  the last position the mask allows are never read; the query heads of a key/value group share each
  key and value load), where two matmuls and a softmax were three kernels a layer over the whole cache.

Rounding follows the unfused modules (the matmul output and the activation output are rounded to the
activation dtype where the eager model rounds them). The GEMVs also take an optional per-token addend
(an unmerged LoRA adapter's `x A^T B^T`, e.g. from `serve.kernels_lora`), added to the rounded linear
output and rounded again, as litgpt's LoRA layer rounds `base(x) + lora(x)`, before the activation and
the residual. Used only for a single token on a CUDA device (`use_gemv`); everything else takes
`F.linear`. Tests run them on CPU tensors through Triton's interpreter (`TRITON_INTERPRET=1` and
`cpu_interpreter`).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU install has no Triton: use_gemv() is False and nothing here is called
    triton = None

NUM_STAGES = 3
TILE: tuple[int, int, int] | None = None
"""(rows a program, K chunk, warps) for every GEMV; None: `gemv_tile` picks one per matrix. The tile
sweep of bench/decode_profile.py sets it."""
ACTIVATIONS = {"gelu": 1, "gelu_tanh": 2, "silu": 3}
"""The epilogue activations: `F.gelu` (erf), `F.gelu(approximate="tanh")`, `F.silu`."""


def gemv_tile(K: int, glu: bool) -> tuple[int, int, int]:
    """The GEMV's tile for a weight of K columns: (rows a program, K chunk, warps).

    Measured on an H200 at Llama-3.1-8B's matrices, from HBM (bench/decode_profile.py --gemv-sweep,
    docs/BENCHMARKS.md): two rows a program beat four on every matrix, a 1,024-wide K chunk on the plain
    GEMVs (qkv 6144x4096: 84% of the copy bandwidth vs 66% at (4, 512)), a 512-wide one on the gated
    [gate; up] GEMV, which loads two rows of each (94% vs 74%). At Falcon-7B's [proj | mlp.proj]
    (4544x22720), four rows of 512 (91.5% of the copy bandwidth vs 80.6% at (2, 1024)); Llama's down
    (4096x14336) is within 1% either way: long rows (K >= 16,384) take four rows of 512."""
    if TILE is not None:
        return TILE
    if K >= 16384 and not glu:
        return (4, 512, 4)
    return (2, 512 if glu or K < 1024 else 1024, 4)


def available() -> bool:
    return triton is not None


# Whether a model uses these kernels at all is the model's own choice, made when its blocks are built
# (`serve.generate.fuse_blocks` and `setup_caches`); the checks below only say where they can run.
cpu_interpreter = False
"""Run the kernels on CPU tensors too (tests): needs TRITON_INTERPRET=1 set before triton was imported."""


def _runs_on(x: torch.Tensor) -> bool:
    return triton is not None and (
        x.is_cuda or (cpu_interpreter and os.environ.get("TRITON_INTERPRET") == "1")
    )


def use_gemv(x: torch.Tensor) -> bool:
    """Whether the Triton path serves this input: one token on a CUDA device."""
    return x.numel() == x.size(-1) and _runs_on(x)


class LoraTerm(NamedTuple):
    """A token's unmerged LoRA delta `B[slot] @ t` for a GEMV to add where it adds `add` (rounded the
    same way), so that the expand costs no kernel of its own: `t = A[slot] @ x` (R values, rounded to
    the activation dtype, e.g. `serve.kernels_lora.shrink`'s), B (S, n, R) the stacked adapters' B with
    the scaling folded in, contiguous, covering the weight's first n output rows (the rest get no
    delta), slot a one-element int64 tensor (read on the device: CUDA graphs replay it)."""

    t: torch.Tensor
    B: torch.Tensor
    slot: torch.Tensor

    @property
    def rank(self) -> int:
        return self.B.size(2)

    def check(self, rows: int) -> None:
        if self.B.dim() != 3 or not self.B.is_contiguous() or self.B.size(1) > rows:
            raise ValueError(f"a LoRA B of shape {tuple(self.B.shape)} for a weight of {rows} rows")
        if self.t.numel() != self.rank or not self.t.is_contiguous() or self.slot.numel() != 1:
            raise ValueError(f"a LoRA term with t {tuple(self.t.shape)}, slot {tuple(self.slot.shape)}")


if triton is not None:

    @triton.jit
    def _activation(v, ACT: tl.constexpr):
        if ACT == 1:  # erf GELU, as F.gelu(approximate="none")
            return 0.5 * v * (1.0 + tl.erf(v * 0.7071067811865476))
        elif ACT == 2:  # tanh GELU
            # clamped where tanh is +-1 in fp32 anyway (no exp overflow on the way)
            inner = tl.minimum(tl.maximum(0.7978845608028654 * (v + 0.044715 * v * v * v), -20.0), 20.0)
            return 0.5 * v * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))
        else:  # SiLU, as F.silu
            return v * tl.sigmoid(v)

    @triton.jit
    def _lora_rows(t_ptr, b_ptr, slot_ptr, rows, R, n_rows, stride_s, BLOCK_R: tl.constexpr):
        # B[slot, rows, :R] @ t[:R] in fp32 (B (S, n_rows, R) contiguous; rows past n_rows: 0)
        slot = tl.load(slot_ptr).to(tl.int64)
        ranks = tl.arange(0, BLOCK_R)
        rank_mask = ranks < R
        t = tl.load(t_ptr + ranks, mask=rank_mask, other=0.0).to(tl.float32)
        b = tl.load(
            b_ptr + slot * stride_s + rows[:, None] * R + ranks[None, :],
            mask=((rows >= 0) & (rows < n_rows))[:, None] & rank_mask[None, :],
            other=0.0,
        )
        return tl.sum(b.to(tl.float32) * t[None, :], axis=1)

    @triton.jit
    def _gemv_kernel(
        x_ptr,
        x2_ptr,
        w_ptr,
        bias_ptr,
        add_ptr,
        res_ptr,
        y_ptr,
        lora_t_ptr,
        lora_b_ptr,
        lora_slot_ptr,
        N,
        K1,
        K,
        act_from,
        lora_rank,
        lora_rows,
        lora_stride_s,
        HAS_X2: tl.constexpr,
        ACT: tl.constexpr,
        GLU: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_ADD: tl.constexpr,
        HAS_RES: tl.constexpr,
        HAS_LORA: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        # y[rows] = W[rows, :] @ input (+ bias) (+ add[rows]), act'd from row act_from on, (+ res);
        # a LoRA term adds B[slot, rows, :] @ t where add would (rows below lora_rows; `LoraTerm`);
        # input = cat(x[:K1], x2[:K - K1]) or x. GLU: W has 2N rows [gate; up], add 2N values, and
        # y[rows] = act(W[rows] @ input + bias[rows] (+ add[rows]))
        #           * (W[N + rows] @ input + bias[N + rows] (+ add[N + rows])) (+ res)
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        dtype = y_ptr.dtype.element_ty
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)  # GLU's up rows (dropped otherwise)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_mask = cols < K
            if HAS_X2:
                first = tl.load(x_ptr + cols, mask=cols < K1, other=0.0)
                second = tl.load(x2_ptr + (cols - K1), mask=(cols >= K1) & col_mask, other=0.0)
                a = tl.where(cols < K1, first, second).to(tl.float32)
            else:
                a = tl.load(x_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
            tile_mask = row_mask[:, None] & col_mask[None, :]
            w = tl.load(
                w_ptr + rows[:, None] * K + cols[None, :],
                mask=tile_mask,
                other=0.0,
                eviction_policy="evict_first",  # read once per step: keep L2 for the activations
            )
            acc += w.to(tl.float32) * a[None, :]
            if GLU:
                w_up = tl.load(
                    w_ptr + (rows[:, None] + N) * K + cols[None, :],
                    mask=tile_mask,
                    other=0.0,
                    eviction_policy="evict_first",
                )
                acc_up += w_up.to(tl.float32) * a[None, :]
        y = tl.sum(acc, axis=1)
        if HAS_BIAS:
            y += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
        y = y.to(dtype).to(tl.float32)  # the linear layer's output, rounded as the module rounds it
        if HAS_ADD:
            y += tl.load(add_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
            y = y.to(dtype).to(tl.float32)  # `base(x) + lora(x)`, rounded as litgpt's LoRA layer does
        if HAS_LORA:
            lora = _lora_rows(
                lora_t_ptr, lora_b_ptr, lora_slot_ptr, rows, lora_rank, lora_rows, lora_stride_s, BLOCK_R
            )
            y = (y + lora.to(dtype).to(tl.float32)).to(dtype).to(tl.float32)  # as the expand + add round
        if GLU:
            up = tl.sum(acc_up, axis=1)
            if HAS_BIAS:
                up += tl.load(bias_ptr + N + rows, mask=row_mask, other=0.0).to(tl.float32)
            up = up.to(dtype).to(tl.float32)
            if HAS_ADD:
                up += tl.load(add_ptr + N + rows, mask=row_mask, other=0.0).to(tl.float32)
                up = up.to(dtype).to(tl.float32)
            if HAS_LORA:
                up_rows = N + rows
                lora = _lora_rows(
                    lora_t_ptr, lora_b_ptr, lora_slot_ptr, up_rows, lora_rank, lora_rows,
                    lora_stride_s, BLOCK_R,
                )  # fmt: skip
                up = (up + lora.to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
            # act(gate) rounded as the activation module rounds it, then the product rounded
            y = _activation(y, ACT).to(dtype).to(tl.float32) * up
            y = y.to(dtype).to(tl.float32)
        elif ACT != 0:
            y = tl.where(rows >= act_from, _activation(y, ACT).to(dtype).to(tl.float32), y)
        if HAS_RES:
            y += tl.load(res_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, y.to(dtype), mask=row_mask)


if triton is not None:

    @triton.jit
    def _prefix_length(mask_row_ptr, S, MASK_BLOCK: tl.constexpr):
        # a decode step's mask row is a causal prefix (True up to the token's own position): its length
        every = tl.arange(0, MASK_BLOCK)
        return tl.sum(tl.load(mask_row_ptr + every, mask=every < S, other=0).to(tl.int32), axis=0)

    @triton.jit
    def _attention_split_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        mask_ptr,
        m_ptr,
        l_ptr,
        acc_ptr,
        S,
        nh_q,
        q_per_kv,
        n_splits,
        scale,
        stride_qb,
        stride_qh,
        stride_kb,
        stride_kg,
        stride_ks,
        stride_vb,
        stride_vg,
        stride_vs,
        stride_mb,
        HS: tl.constexpr,
        BLOCK_H: tl.constexpr,
        BLOCK_S: tl.constexpr,
        CHUNK: tl.constexpr,
        MASK_BLOCK: tl.constexpr,
    ):
        # program (b * groups + g, h, split): query heads [h * BLOCK_H, ...) of key/value group g in batch
        # row b, over keys [split * CHUNK, (split + 1) * CHUNK); writes that chunk's softmax max, sum and
        # unnormalized output (flash decoding), combined by _attention_combine_kernel
        bg = tl.program_id(0)
        groups = nh_q // q_per_kv
        b = bg // groups
        g = bg % groups
        split = tl.program_id(2)
        n = _prefix_length(mask_ptr + b * stride_mb, S, MASK_BLOCK)  # keys past it are skipped
        start = split * CHUNK
        if start < n:
            heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
            head_mask = heads < q_per_kv
            q_heads = g * q_per_kv + heads
            dims = tl.arange(0, HS)
            # fp32 dots: TF32 on the GPU holds bf16 inputs exactly (and the interpreter's bf16 dot is wrong)
            q = tl.load(
                q_ptr + b * stride_qb + q_heads[:, None] * stride_qh + dims[None, :],
                mask=head_mask[:, None],
                other=0.0,
            ).to(tl.float32)  # (BLOCK_H, HS)
            m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
            acc = tl.zeros([BLOCK_H, HS], dtype=tl.float32)
            end = tl.minimum(start + CHUNK, n)
            for s0 in range(start, end, BLOCK_S):
                keys = s0 + tl.arange(0, BLOCK_S)
                allowed = tl.load(mask_ptr + b * stride_mb + keys, mask=keys < end, other=0) != 0
                k = tl.load(
                    k_ptr + b * stride_kb + g * stride_kg + keys[:, None] * stride_ks + dims[None, :],
                    mask=allowed[:, None],
                    other=0.0,
                ).to(tl.float32)  # (BLOCK_S, HS)
                # the cast: under torch.compile a Python float argument can arrive as fp64
                scores = (tl.dot(q, tl.trans(k)) * scale).to(tl.float32)  # (BLOCK_H, BLOCK_S)
                scores = tl.where(allowed[None, :], scores, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(scores, axis=1))
                p = tl.exp(scores - m_new[:, None]).to(tl.float32)
                alpha = tl.exp(m_i - m_new)
                v = tl.load(
                    v_ptr + b * stride_vb + g * stride_vg + keys[:, None] * stride_vs + dims[None, :],
                    mask=allowed[:, None],
                    other=0.0,
                ).to(tl.float32)  # (BLOCK_S, HS)
                l_i = l_i * alpha + tl.sum(p, axis=1)
                acc = acc * alpha[:, None] + tl.dot(p, v)
                m_i = m_new
            row = (b * nh_q + q_heads) * n_splits + split  # scratch: (B, nh_q, n_splits[, HS])
            tl.store(m_ptr + row, m_i, mask=head_mask)
            tl.store(l_ptr + row, l_i, mask=head_mask)
            tl.store(acc_ptr + row[:, None] * HS + dims[None, :], acc, mask=head_mask[:, None])

    @triton.jit
    def _attention_combine_kernel(
        mask_ptr,
        m_ptr,
        l_ptr,
        acc_ptr,
        out_ptr,
        S,
        nh_q,
        n_splits,
        stride_mb,
        HS: tl.constexpr,
        BLOCK_H: tl.constexpr,
        CHUNK: tl.constexpr,
        MASK_BLOCK: tl.constexpr,
    ):
        # program (b, h): heads [h * BLOCK_H, ...) of batch row b, combining the chunks that had keys
        b = tl.program_id(0)
        heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        head_mask = heads < nh_q
        dims = tl.arange(0, HS)
        n = _prefix_length(mask_ptr + b * stride_mb, S, MASK_BLOCK)
        used = (n + CHUNK - 1) // CHUNK
        rows = (b * nh_q + heads) * n_splits
        m_all = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        for split in range(0, used):
            m_all = tl.maximum(m_all, tl.load(m_ptr + rows + split, mask=head_mask, other=float("-inf")))
        m_all = tl.where(head_mask, m_all, 0.0)  # padding heads: no -inf - -inf below
        total = tl.zeros([BLOCK_H], dtype=tl.float32)
        out = tl.zeros([BLOCK_H, HS], dtype=tl.float32)
        for split in range(0, used):
            weight = tl.exp(tl.load(m_ptr + rows + split, mask=head_mask, other=float("-inf")) - m_all)
            weight = tl.where(head_mask, weight, 0.0)
            total += weight * tl.load(l_ptr + rows + split, mask=head_mask, other=0.0)
            part = acc_ptr + (rows + split)[:, None] * HS + dims[None, :]
            out += weight[:, None] * tl.load(part, mask=head_mask[:, None], other=0.0)
        out = out / tl.where(head_mask, total, 1.0)[:, None]
        # out: (B, nh_q, HS) contiguous
        tl.store(
            out_ptr + (b * nh_q + heads[:, None]) * HS + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=head_mask[:, None],
        )


ATTENTION_CHUNK = 128
"""Keys per program of the split (flash-decoding) attention."""


def attention_supported(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether `decode_attention` serves q (B, nh_q, 1, hs) over k (B, nh_kv, S, hs)."""
    hs = q.size(-1)
    return (
        _runs_on(q)
        and q.size(2) == 1
        and k.size(-1) == hs
        and hs >= 16
        and hs & (hs - 1) == 0
        and q.size(1) % k.size(1) == 0
    )


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v for one query token, query head h on key/value group h // (nh_q /
    nh_kv). q: (B, nh_q, 1, hs); k, v: (B, nh_kv, S, hs); mask: (B, 1, 1, S) bool, a causal prefix.
    Returns (B, 1, nh_q, hs). Two kernels: chunks of 128 keys in parallel, then their combination."""
    B, nh_q, _, hs = q.shape
    nh_kv, S = k.size(1), k.size(2)
    q_per_kv = nh_q // nh_kv
    q3 = q.reshape(B, nh_q, hs)
    mask2 = mask.reshape(B, S)
    if q3.stride(-1) != 1:
        q3 = q3.contiguous()
    if k.stride(-1) != 1 or v.stride(-1) != 1 or mask2.stride(-1) != 1:
        raise ValueError("decode_attention needs the last dimension of k, v and mask contiguous")
    n_splits = triton.cdiv(S, ATTENTION_CHUNK)
    m = torch.empty(B, nh_q, n_splits, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)  # noqa: E741
    acc = torch.empty(B, nh_q, n_splits, hs, device=q.device, dtype=torch.float32)
    out = torch.empty(B, nh_q, hs, device=q.device, dtype=q.dtype)
    block_h, mask_block = 16, triton.next_power_of_2(S)
    _attention_split_kernel[(B * nh_kv, triton.cdiv(q_per_kv, block_h), n_splits)](
        q3,
        k,
        v,
        mask2,
        m,
        l,
        acc,
        S,
        nh_q,
        q_per_kv,
        n_splits,
        scale,
        q3.stride(0),
        q3.stride(1),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        mask2.stride(0),
        HS=hs,
        BLOCK_H=block_h,
        BLOCK_S=64,
        CHUNK=ATTENTION_CHUNK,
        MASK_BLOCK=mask_block,
        num_warps=4,
    )
    _attention_combine_kernel[(B, triton.cdiv(nh_q, block_h))](
        mask2,
        m,
        l,
        acc,
        out,
        S,
        nh_q,
        n_splits,
        mask2.stride(0),
        HS=hs,
        BLOCK_H=block_h,
        CHUNK=ATTENTION_CHUNK,
        MASK_BLOCK=mask_block,
        num_warps=4,
    )
    return out.view(B, 1, nh_q, hs)


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x2: torch.Tensor | None = None,
    act_from: int | None = None,
    activation: str | None = None,
    glu: bool = False,
    residual: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
    lora: LoraTerm | None = None,
) -> torch.Tensor:
    rows, K = weight.shape
    N = rows // 2 if glu else rows
    out_shape = (*x.shape[:-1], N)
    x = x.reshape(-1)
    k1 = x.numel()
    if x2 is not None:
        x2 = x2.reshape(-1)
    k2 = 0 if x2 is None else x2.numel()
    if k1 + k2 != K:
        raise ValueError(f"an input of {k1} + {k2} values for a {rows}x{K} weight")
    if glu and (rows % 2 or activation is None):
        raise ValueError(f"a gated GEMV needs an activation and a [gate; up] weight, not {rows}x{K}")
    if add is not None:
        add = add.reshape(-1)
        if add.numel() != rows:
            raise ValueError(f"an addend of {add.numel()} values for a {rows}x{K} weight")
        if not add.is_contiguous():
            add = add.contiguous()
    if lora is not None:
        lora.check(rows)
    y = torch.empty(N, device=x.device, dtype=x.dtype)
    block_n, block_k, warps = gemv_tile(K, glu)
    _gemv_kernel[(triton.cdiv(N, block_n),)](
        x,
        x2 if x2 is not None else x,  # pointers a variant does not read
        weight,
        bias if bias is not None else x,
        add if add is not None else x,
        residual.reshape(-1) if residual is not None else x,
        y,
        lora.t if lora is not None else x,
        lora.B if lora is not None else x,
        lora.slot if lora is not None else x,
        N,
        k1,
        K,
        0 if act_from is None else act_from,
        0 if lora is None else lora.rank,
        0 if lora is None else lora.B.size(1),
        0 if lora is None else lora.B.stride(0),
        HAS_X2=x2 is not None,
        ACT=0 if activation is None else ACTIVATIONS[activation],
        GLU=glu,
        HAS_BIAS=bias is not None,
        HAS_ADD=add is not None,
        HAS_RES=residual is not None,
        HAS_LORA=lora is not None,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_R=16 if lora is None else max(16, triton.next_power_of_2(lora.rank)),
        num_warps=warps,
        num_stages=NUM_STAGES,
    )
    return y.view(out_shape)


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    gelu_from: int | None = None,
    approximate: str = "none",
    residual: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
    lora: LoraTerm | None = None,
) -> torch.Tensor:
    """`F.linear(x, weight, bias) (+ add) (+ residual)` for one token; with `gelu_from`, output features
    from that index on go through `F.gelu(..., approximate=approximate)` (after `add`, before the
    residual). `add`: a per-token addend of the output's width (an unmerged LoRA adapter's delta);
    `lora`: the same delta as a `LoraTerm`, its expand done in this kernel."""
    activation = None if gelu_from is None else "gelu_tanh" if approximate == "tanh" else "gelu"
    return _launch(
        x, weight, bias, act_from=gelu_from, activation=activation, residual=residual, add=add, lora=lora
    )


def glu_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "silu",
    add: torch.Tensor | None = None,
    lora: LoraTerm | None = None,
) -> torch.Tensor:
    """`act(gate) * up` with `gate, up = (F.linear(x, weight, bias) (+ add)).chunk(2, -1)` for one token:
    a gated MLP's first half (`activation` one of ACTIVATIONS: silu for SwiGLU, gelu/gelu_tanh for
    GeGLU); `add` has the stacked weight's 2N values, `[gate; up]`."""
    return _launch(x, weight, bias, activation=activation, glu=True, add=add, lora=lora)


def cat_gemv(
    a: torch.Tensor,
    b: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    add: torch.Tensor | None = None,
    lora: LoraTerm | None = None,
) -> torch.Tensor:
    """`F.linear(cat(a, b), weight, bias) (+ add) + residual` for one token."""
    return _launch(a, weight, bias, x2=b, residual=residual, add=add, lora=lora)
