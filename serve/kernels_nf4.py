"""Triton GEMVs on a 4-bit base: NF4 codes dequantized in registers, for decode steps of 1 to 16 tokens.

QLoRA's base (`common.nf4`, torchao's `NF4Tensor`) is dequantized whole by torchao at every forward —
a 7B step wrote and re-read ~14 GB of bf16 — so an NF4 base decoded 4.5x slower than bf16 while holding
3.3x fewer bytes. These kernels read the 4-bit codes and their block scales and multiply in registers,
with the folds of `serve.kernels`' bf16 GEMVs (GELU from an output row on, `act(gate) * up`, an input
read from two tensors, a residual add) and one more: a per-token addend before the activation (the
unmerged LoRA adapter's `x A^T B^T`, computed beside them).

The layout (`PackedNF4`, built once at load by `pack_nf4` from an NF4Tensor, exactly):
- `codes`: (N, K/2) uint8, two 4-bit codes a byte, the even column in the high nibble — torchao's own
  bytes, viewed per row (it packs the flattened weight the same way);
- `scales`: (N, K/g) in the activation dtype, one per group of g columns of a row: torchao's block
  scalers, double-quantized ones (nf4-dq) already dequantized. torchao's blocks (64 weights) run over the
  flattened weight; where K is a multiple of 64 (every matrix of Falcon-7B and Llama-3.1-8B) they are
  the row groups themselves (g = 64); elsewhere the groups are g = gcd(K, block) wide, each inside one
  block, its scale repeated — the same codes and values;
- `table`: the 16 NF4 values (torchao's, in the activation dtype).
A weight dequantizes as `table[code] * scale` rounded to the activation dtype, as torchao rounds it,
so a GEMV equals `F.linear` on torchao's dequantized weight within the summation order.

Why nf4-dq's scalers are expanded at load rather than in the kernel: they would save 0.125 of 4.25 bits
a weight (3%), but the in-kernel form needs a second dependent gather (the int8 scaler's block factor)
and torchao's bf16 division and mean add, whose rounding Triton's approximate fp32 division does not
reproduce; expanded, both modes are one layout and one kernel, and equal torchao's dequantization.

A program takes `BLOCK_N` output rows of one token (programs of the same rows for every token of a step
run side by side, so the tokens after the first read the codes from L2); the codes are loaded with
evict-first, the NF4 table and scales stay in L1. Compiled for sm_90 (tests compile it), a thread reads
its 16 bytes of codes a chunk with one vector load (the row's byte count is an argument, so Triton sees
it divisible by 16), then 32 table and 16 scale gathers from L1: if the kernel falls short of the copy
bandwidth, those gathers (a 256-entry table of code pairs would halve the table's) and the input's
conversion to the weights' layout (two barriers a chunk) are where to look. Batched steps (2..16
tokens) run the same kernel; prefills (longer inputs) dequantize the weight and use `F.linear`. Tests
run the kernels on CPU tensors through Triton's interpreter.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from serve import kernels

if TYPE_CHECKING:
    from torchao.quantization import NF4Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU install has no Triton: use_nf4_gemv() is False and nothing here is launched
    triton = None

MAX_TOKENS = 16
"""Decode steps of up to this many tokens run the kernel (serve's batch buckets); longer inputs
dequantize the weight and use `F.linear`."""
TILE: tuple[int, int, int] | None = None
"""(rows a program, K chunk in weights, warps) for every NF4 GEMV; None: `nf4_tile` picks one. For the
benchmarks' tile sweeps."""
NUM_STAGES = 3


def nf4_tile(K: int) -> tuple[int, int, int]:
    """The tile for a weight of K columns: (rows a program, K chunk, warps). Not yet swept on a GPU: 4
    rows and a 1,024-weight chunk read 2 KiB of codes a program a step, as the bf16 kernel's 2 x 1,024
    reads 4 KiB."""
    if TILE is not None:
        return TILE
    return (4, 1024 if K >= 2048 else 512, 4)


class PackedNF4(nn.Module):
    """An NF4 weight (N, K) in the kernels' layout (see the module docstring); buffers move with `.to`.
    The table may hold any 16 values: `pack_int4` puts symmetric int4 with group scales in it."""

    codes: torch.Tensor
    scales: torch.Tensor
    table: torch.Tensor

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, table: torch.Tensor, group: int) -> None:
        super().__init__()
        N, half = codes.shape
        if codes.dtype != torch.uint8 or scales.shape != (N, 2 * half // group) or table.numel() != 16:
            raise ValueError(f"not a packed NF4 weight: codes {codes.shape}, scales {scales.shape}")
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.register_buffer("table", table)
        self.group = group

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.size(0), 2 * self.codes.size(1)

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.table))

    def dequantize(self) -> torch.Tensor:
        """The (N, K) weight in the scales' dtype (prefills and the torch path)."""
        N, K = self.shape
        codes = torch.stack((self.codes >> 4, self.codes & 15), dim=-1).view(N, K)  # (N, K) uint8
        values = self.table[codes.int()]  # (N, K)
        return values * self.scales.repeat_interleave(self.group, dim=1)

    def extra_repr(self) -> str:
        N, K = self.shape
        return f"{N}x{K}, groups of {self.group}, {str(self.dtype).removeprefix('torch.')} scales"


def pack_nf4(weight: NF4Tensor, dtype: torch.dtype | None = None) -> PackedNF4:
    """torchao's NF4Tensor (N, K) (either mode of `common.nf4`) in the kernels' layout, exactly: the same
    codes, the scalers dequantized (nf4-dq) and laid out per row group. K must be even."""
    N, K = weight.shape
    if K % 2:
        raise ValueError(f"a packed NF4 weight needs an even number of columns, not {N}x{K}")
    dtype = dtype or weight.dtype
    block = weight.block_size
    scalers = weight.dequantize_scalers(
        weight.quantized_scalers, weight.quantization_factor, weight.scaler_block_size
    ).to(dtype)  # (n_blocks,): what torchao's dequantization multiplies by
    group = math.gcd(K, block)  # groups of a row lie inside one flattened block
    starts = torch.arange(N, device=scalers.device)[:, None] * K + torch.arange(0, K, group)[None, :].to(
        scalers.device
    )
    scales = scalers[starts // block]  # (N, K / group)
    codes = weight.quantized_data.view(N, K // 2)
    return PackedNF4(codes.contiguous(), scales.contiguous(), weight.nf4.to(dtype), group)


def pack_int4(weight: torch.Tensor, group: int = 64) -> PackedNF4:
    """`weight` (N, K) in symmetric int4 with group scales, in the same layout (the kernels take any
    16-value table): one scale per `group` columns of a row (absmax / 7), codes `round(w / scale) + 8`,
    table -8..7. K must be a multiple of `group`, `group` even. Not a serve mode yet (`--quantize`
    knows nf4 and nf4-dq); for the kernels' tests and benchmarks."""
    N, K = weight.shape
    if K % group or group % 2:
        raise ValueError(f"int4 groups of {group} need an even group dividing K, not {N}x{K}")
    w = weight.detach().float().view(N, K // group, group)
    scales = (w.abs().amax(dim=-1) / 7).to(weight.dtype)  # (N, K / group), as the kernel reads them
    safe = scales.float().clamp_min(torch.finfo(torch.float32).tiny)[..., None]
    codes = ((w / safe).round().clamp(-8, 7) + 8).to(torch.uint8).view(N, K)
    packed = codes[:, ::2] << 4 | codes[:, 1::2]  # (N, K / 2): the even column in the high nibble
    table = torch.arange(-8, 8, device=weight.device).to(weight.dtype)
    return PackedNF4(packed.contiguous(), scales.contiguous(), table, group)


def _regroup(w: PackedNF4, group: int) -> torch.Tensor:
    return w.scales.repeat_interleave(w.group // group, dim=1)


def stack_rows(a: PackedNF4, b: PackedNF4) -> PackedNF4:
    """One weight computing `cat(a(x), b(x))`: the rows of `a` then `b` (same K)."""
    group = math.gcd(a.group, b.group)
    codes = torch.cat((a.codes, b.codes))
    return PackedNF4(codes, torch.cat((_regroup(a, group), _regroup(b, group))), a.table, group)


def stack_cols(a: PackedNF4, b: PackedNF4) -> PackedNF4:
    """One weight computing `a(x1) + b(x2)` on `cat(x1, x2)`: the columns of `a` then `b` (same N)."""
    group = math.gcd(a.group, b.group)  # divides both K's: no group straddles the seam
    codes = torch.cat((a.codes, b.codes), dim=1)
    scales = torch.cat((_regroup(a, group), _regroup(b, group)), dim=1)
    return PackedNF4(codes, scales, a.table, group)


def available() -> bool:
    return triton is not None


def use_nf4_gemv(x: torch.Tensor) -> bool:
    """Whether the NF4 kernels serve this input: a decode step of at most MAX_TOKENS tokens on a CUDA
    device (or the CPU interpreter, `serve.kernels.cpu_interpreter`)."""
    return x.numel() <= MAX_TOKENS * x.size(-1) and kernels._runs_on(x)


if triton is not None:
    from serve.kernels import _activation

    @triton.jit
    def _input_pairs(x_ptr, x2_ptr, j, K1, K, HAS_X2: tl.constexpr):
        # one token's input at columns 2j and 2j + 1 (input = cat(x[:K1], x2) or x, K1 even), loaded in
        # j's layout: two strided loads from L1, where one contiguous load split in two cost a layout
        # conversion through shared memory (16 barriers an iteration in the PTX for sm_90)
        even = 2 * j
        if HAS_X2:
            first = tl.load(x_ptr + even, mask=even < K1, other=0.0)
            second = tl.load(x2_ptr + (even - K1), mask=(even >= K1) & (even < K), other=0.0)
            a = tl.where(even < K1, first, second)
            first = tl.load(x_ptr + even + 1, mask=even < K1, other=0.0)
            second = tl.load(x2_ptr + (even + 1 - K1), mask=(even >= K1) & (even < K), other=0.0)
            b = tl.where(even < K1, first, second)
        else:
            a = tl.load(x_ptr + even, mask=even < K, other=0.0)
            b = tl.load(x_ptr + even + 1, mask=even < K, other=0.0)
        return a.to(tl.float32), b.to(tl.float32)

    @triton.jit
    def _dequantize(q_ptr, s_ptr, table_ptr, y_ptr, rows, j, KH, KG, GROUP: tl.constexpr, mask):
        # weights (rows, 2j) and (rows, 2j + 1), as torchao rounds them: table[code] * scale in y's dtype
        dtype = y_ptr.dtype.element_ty
        codes = q_ptr + rows[:, None] * KH + j[None, :]
        byte = tl.load(codes, mask=mask, other=0, eviction_policy="evict_first")  # read once a step
        hi = (byte >> 4).to(tl.int32)
        lo = (byte & 15).to(tl.int32)
        scale = tl.load(s_ptr + rows[:, None] * KG + (j // (GROUP // 2))[None, :], mask=mask, other=0.0)
        scale = scale.to(tl.float32)
        w_hi = (tl.load(table_ptr + hi).to(tl.float32) * scale).to(dtype).to(tl.float32)
        w_lo = (tl.load(table_ptr + lo).to(tl.float32) * scale).to(dtype).to(tl.float32)
        return w_hi, w_lo

    @triton.jit
    def _nf4_gemv_kernel(
        x_ptr,
        x2_ptr,
        q_ptr,
        s_ptr,
        table_ptr,
        bias_ptr,
        add_ptr,
        res_ptr,
        y_ptr,
        M,
        N,
        K1,
        K,
        KH,
        KG,
        act_from,
        GROUP: tl.constexpr,
        HAS_X2: tl.constexpr,
        ACT: tl.constexpr,
        GLU: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_ADD: tl.constexpr,
        HAS_RES: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_KH: tl.constexpr,
    ):
        # token m, output rows [tile * BLOCK_N, ...): y[m, rows] = W[rows] @ input[m] (+ bias) (+ add[m]),
        # act'd from row act_from on, (+ res[m]); input = cat(x[m, :K1], x2[m, :K - K1]) or x[m] (K1 = K).
        # GLU: W has 2N rows [gate; up], y = act(gate (+ add[m, :N])) * (up (+ add[m, N:])) (+ res[m])
        pid = tl.program_id(0)
        m = pid % M  # the tokens of one row tile are neighbours: the later ones read the codes from L2
        tile = pid // M
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        dtype = y_ptr.dtype.element_ty
        x_row = x_ptr + m * K1
        x2_row = x2_ptr + m * (K - K1)
        acc = tl.zeros([BLOCK_N, BLOCK_KH], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_N, BLOCK_KH], dtype=tl.float32)  # GLU's up rows (dropped otherwise)
        for k0 in range(0, KH, BLOCK_KH):
            j = k0 + tl.arange(0, BLOCK_KH)  # byte of a row: columns 2j, 2j + 1
            mask = row_mask[:, None] & (j < KH)[None, :]
            a, b = _input_pairs(x_row, x2_row, j, K1, K, HAS_X2)
            w_hi, w_lo = _dequantize(q_ptr, s_ptr, table_ptr, y_ptr, rows, j, KH, KG, GROUP, mask)
            acc += w_hi * a[None, :] + w_lo * b[None, :]
            if GLU:
                u_hi, u_lo = _dequantize(q_ptr, s_ptr, table_ptr, y_ptr, rows + N, j, KH, KG, GROUP, mask)
                acc_up += u_hi * a[None, :] + u_lo * b[None, :]
        width = 2 * N if GLU else N  # of the addend's rows
        y = tl.sum(acc, axis=1)
        if HAS_BIAS:
            y += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
        y = y.to(dtype).to(tl.float32)  # the linear layer's output, rounded as the module rounds it
        if HAS_ADD:
            y += tl.load(add_ptr + m * width + rows, mask=row_mask, other=0.0).to(tl.float32)
            y = y.to(dtype).to(tl.float32)  # `base(x) + lora(x)`, rounded as litgpt's LoRA layer does
        if GLU:
            up = tl.sum(acc_up, axis=1)
            if HAS_BIAS:
                up += tl.load(bias_ptr + N + rows, mask=row_mask, other=0.0).to(tl.float32)
            up = up.to(dtype).to(tl.float32)
            if HAS_ADD:
                up += tl.load(add_ptr + m * width + N + rows, mask=row_mask, other=0.0).to(tl.float32)
                up = up.to(dtype).to(tl.float32)
            y = _activation(y, ACT).to(dtype).to(tl.float32) * up
            y = y.to(dtype).to(tl.float32)
        elif ACT != 0:
            y = tl.where(rows >= act_from, _activation(y, ACT).to(dtype).to(tl.float32), y)
        if HAS_RES:
            y += tl.load(res_ptr + m * N + rows, mask=row_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + m * N + rows, y.to(dtype), mask=row_mask)


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """`t` as (tokens, width), contiguous (the kernel indexes rows by their width)."""
    t = t.reshape(-1, width)
    return t if t.is_contiguous() else t.contiguous()


def _launch(
    x: torch.Tensor,
    weight: PackedNF4,
    bias: torch.Tensor | None,
    x2: torch.Tensor | None = None,
    act_from: int | None = None,
    activation: str | None = None,
    glu: bool = False,
    residual: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    rows, K = weight.shape
    N = rows // 2 if glu else rows
    k1 = x.size(-1)
    k2 = 0 if x2 is None else x2.size(-1)
    if k1 + k2 != K or (x2 is not None and k1 % 2):
        raise ValueError(f"an input of {k1} + {k2} values for a {rows}x{K} NF4 weight")
    if glu and (rows % 2 or activation is None):
        raise ValueError(f"a gated GEMV needs an activation and a [gate; up] weight, not {rows}x{K}")
    out_shape = (*x.shape[:-1], N)
    x = _rows(x, k1)
    M = x.size(0)
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    block_n, block_k, warps = nf4_tile(K)
    _nf4_gemv_kernel[(M * triton.cdiv(N, block_n),)](
        x,
        _rows(x2, k2) if x2 is not None else x,  # pointers a variant does not read
        weight.codes,
        weight.scales,
        weight.table,
        bias if bias is not None else x,
        _rows(add, rows) if add is not None else x,
        _rows(residual, N) if residual is not None else x,
        y,
        M,
        N,
        k1,
        K,
        K // 2,  # bytes a row: an argument, so Triton sees it divisible by 16 and vectorizes the loads
        K // weight.group,
        0 if act_from is None else act_from,
        GROUP=weight.group,
        HAS_X2=x2 is not None,
        ACT=0 if activation is None else kernels.ACTIVATIONS[activation],
        GLU=glu,
        HAS_BIAS=bias is not None,
        HAS_ADD=add is not None,
        HAS_RES=residual is not None,
        BLOCK_N=block_n,
        BLOCK_KH=block_k // 2,  # bytes of a row a chunk
        num_warps=warps,
        num_stages=NUM_STAGES,
    )
    return y.view(out_shape)


def nf4_gemv(
    x: torch.Tensor,
    weight: PackedNF4,
    bias: torch.Tensor | None = None,
    gelu_from: int | None = None,
    approximate: str = "none",
    residual: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    """`F.linear(x, W, bias) (+ add) (+ residual)` with W the dequantized `weight`, for up to MAX_TOKENS
    tokens; with `gelu_from`, output features from that index on go through `F.gelu(..., approximate)`
    (after `add`, before the residual)."""
    activation = None if gelu_from is None else "gelu_tanh" if approximate == "tanh" else "gelu"
    return _launch(x, weight, bias, act_from=gelu_from, activation=activation, residual=residual, add=add)


def nf4_glu_gemv(
    x: torch.Tensor,
    weight: PackedNF4,
    bias: torch.Tensor | None = None,
    activation: str = "silu",
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    """`act(gate) * up` with `gate, up = (F.linear(x, W, bias) (+ add)).chunk(2, -1)`: a gated MLP's
    first half from its stacked `[gate; up]` weight."""
    return _launch(x, weight, bias, activation=activation, glu=True, add=add)


def nf4_cat_gemv(
    a: torch.Tensor,
    b: torch.Tensor,
    weight: PackedNF4,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    """`F.linear(cat(a, b), W, bias) (+ add) + residual`, reading `a` and `b` where they are."""
    return _launch(a, weight, bias, x2=b, residual=residual, add=add)
