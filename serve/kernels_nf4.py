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
  block, its scale repeated — the same codes and values (a group whose width is no power of 2 is split
  into groups of the largest power of 2 dividing it, for the kernels' tiles: 50 -> 25 groups of 2);
- `table`: the 16 NF4 values (torchao's, in the activation dtype).
A GEMV multiplies `table[code]` by the input and its group's scale in fp32 — the weight `table[code] *
scale` held exactly rather than rounded to bf16 as torchao's dequantization rounds it — so a GEMV equals
`F.linear` on torchao's dequantized weight within bf16 rounding (in fp32, within fp32's).

Why nf4-dq's scalers are expanded at load rather than in the kernel: they would save 0.125 of 4.25 bits
a weight (3%), but the in-kernel form needs a second dependent gather (the int8 scaler's block factor);
expanded, both modes are one layout and one kernel.

A program takes `BLOCK_N` output rows of one token (programs of the same rows for every token of a step
run side by side, so the tokens after the first read the codes from L2), a chunk of the row at a time as
(rows, groups, bytes of a group), and loads the next chunk's codes (evict-first) before it multiplies
this one, so their HBM latency overlaps the arithmetic. The first version read 2 table values and a
scale per byte with three gathers and rounded each weight to bf16: ~26 SASS instructions a byte of codes
on sm_90, issue-bound at 11% of the copy bandwidth on an H200 (116 tokens/s at Falcon-7B's shape,
docs/BENCHMARKS.md). Now, in bf16: one gather per byte from a 256-entry table of code pairs (`pairs`:
both weights' bf16 bits in one int32; a bf16 shifted left by 16 bits is its fp32), the input read as
int32 words of two bf16 values, one scale load per group: ~14-15 instructions a byte; then no gathers
at all (`prmt`: byte permutes of the 16 values held in registers), 65-75 us a Falcon-7B matrix, ~20% of
the copy bandwidth, with Nsight Compute showing L1 the bottleneck, not DRAM: a thread loaded each code
word alone and the input again for every 2 rows. The GPU default now is a second kernel laid out for the
registers (`quads`, `_nf4_quads_kernel`): a thread holds 4 code words (one 16-byte load) of each of a
program's rows and loads their 16 input words once for all of them, scales once per 32 weights, and
the row sums meet across the warp once a program: ~11 SASS instructions a byte, 37.8 us on [qkv; fc]
(1.46 TB/s). Batched steps (2..16 tokens) run the same kernels; prefills (longer inputs) dequantize the
weight and use `F.linear`. Tests run the kernels on CPU tensors through Triton's interpreter.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
DECODES = ("table", "pairs", "prmt", "quads")
"""How a kernel turns codes into weights: `table`, two gathers a byte from the 16 values (32 bytes: one
L1 wavefront each); `pairs`, one gather a byte from the 256-entry table of code pairs (1 KiB: a warp's
gather touches ~8 of its 128-byte lines); `prmt`, no gather — 16-byte tables of the values' high and low
bytes held in registers and indexed by byte-permute instructions (`PRMT_ASM`), 8 weights from 22
instructions; `quads`, prmt's decode in another kernel laid out for the registers (`_nf4_quads_kernel`:
16-byte code loads, the input loaded once for all of a program's rows, one scale a 32 weights, row sums
across threads once a program) — on the CPU interpreter it gathers the same words from the pair table.
`prmt`, `pairs` and `quads` need a bf16 table and input; `quads` K and scale groups multiples of 32."""
QUADS_PREFETCH = False
"""Whether the `quads` kernel loads a chunk's codes while it multiplies the one before (more registers:
fewer warps a multiprocessor). On the H200 at (4, 512, 1) it gained 0.7 us on [qkv; fc] and lost 2.4 on
[proj | mlp.proj]: off. For the benchmarks' sweeps."""
QUADS_SPLIT: int | None = 1
"""Ranges of K the `quads` kernel splits each row into (a power of 2): each range its own programs, their
fp32 sums added by a second kernel — for matrices of few long rows (Falcon-7B's [proj | mlp.proj]: 1,136
one-warp programs, ~9 a multiprocessor). None: `quads_split` picks from the multiprocessor count. 1 (no
split) until a GPU run measures it."""
SPLIT_ROWS = 256
"""Rows a program of the split kernels' reduction."""
DECODE: str | None = os.environ.get("TWIN_NF4_DECODE") or None
"""Which of DECODES every NF4 GEMV uses; None: `nf4_decode` picks. For the benchmarks (a sweep sets it;
TWIN_NF4_DECODE sets it for a whole process)."""


def nf4_tile(K: int, decode: str = "quads") -> tuple[int, int, int]:
    """The tile for a weight of K columns: (rows a program, K chunk in weights, warps). From the H200
    sweeps (`bench/decode_profile.py --nf4-sweep`, docs/BENCHMARKS.md) at Falcon-7B's shapes: quads did
    best with one warp of 4 rows and 512-weight chunks (37.8 / 61.3 us on [qkv; fc] / [proj | mlp.proj];
    8 rows 40.8 / 83.4, 16 rows 47.8 / 104: more rows a thread, fewer warps fit), prmt with one warp of
    2 rows (65 / 75 us: one warp needs no shared memory to sum a row), the gathering decodes with 4 warps
    of 2 rows."""
    if TILE is not None:
        return TILE
    if decode == "quads":
        return (4, 512, 1)
    return (2, 1024 if K >= 2048 else 512, 1 if decode == "prmt" else 4)


def nf4_decode(weight: PackedNF4, x: torch.Tensor, k1: int) -> str:
    """The decode for this launch (see DECODES): `quads` on a GPU for bf16 where its layout holds (K and
    the scale groups multiples of 32), else `prmt` (byte permutes are PTX: the CPU interpreter runs
    `pairs`, the same bits by gathers) where the codes read as whole int32 words (K and the concatenation
    seam multiples of 8), else `pairs` for bf16, else `table`. On the H200 (docs/BENCHMARKS.md) quads
    took 37.8 / 61.3 us on Falcon-7B's two matrices where prmt's best took 65.2 / 75.0, and prmt beat the
    gathering decodes at every tile."""
    bf16 = weight.table.dtype == torch.bfloat16 and x.dtype == torch.bfloat16
    choice = DECODE or ("quads" if x.is_cuda else "pairs")
    if choice == "quads":
        if bf16 and weight.shape[1] % 32 == 0 and weight.group % 32 == 0:
            return choice
        choice = "prmt"
    if choice == "prmt" and not (bf16 and x.is_cuda and weight.shape[1] % 8 == 0 and k1 % 8 == 0):
        choice = "pairs"
    return choice if bf16 or choice == "table" else "table"


class PackedNF4(nn.Module):
    """An NF4 weight (N, K) in the kernels' layout (see the module docstring); buffers move with `.to`.
    The table may hold any 16 values: `pack_int4` puts symmetric int4 with group scales in it."""

    codes: torch.Tensor
    scales: torch.Tensor
    table: torch.Tensor
    pairs: torch.Tensor
    bytes: torch.Tensor

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, table: torch.Tensor, group: int) -> None:
        super().__init__()
        N, half = codes.shape
        if codes.dtype != torch.uint8 or scales.shape != (N, 2 * half // group) or table.numel() != 16:
            raise ValueError(f"not a packed NF4 weight: codes {codes.shape}, scales {scales.shape}")
        if group % 2:
            raise ValueError(f"NF4 scale groups of {group} weights: the kernels need an even width")
        if group & (group - 1):  # the kernels tile groups by powers of 2: 50 -> 25 groups of 2, same values
            scales = scales.repeat_interleave(group // (group & -group), dim=1)
            group &= -group
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.register_buffer("table", table)
        self.register_buffer("pairs", code_pairs(table))
        self.register_buffer("bytes", byte_tables(table))
        self.group = group

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> PackedNF4:
        out = super()._apply(fn, recurse)
        self.pairs = code_pairs(self.table)  # `.to(dtype)` may have changed the table's
        self.bytes = byte_tables(self.table)
        return out

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.size(0), 2 * self.codes.size(1)

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def nbytes(self) -> int:
        """The bytes that hold the weight (the 1 KiB pair table derived from `table` aside)."""
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


def code_pairs(table: torch.Tensor) -> torch.Tensor:
    """(256,) int32: for each byte of two codes, table[hi]'s bf16 bits in the upper half and table[lo]'s in
    the lower — a bf16 weight's bits shifted left by 16 are its fp32 value, so the bf16 kernel gets both
    weights of a byte from one gather and two bit operations. Zeros for other table dtypes (unused)."""
    if table.dtype != torch.bfloat16:
        return torch.zeros(256, dtype=torch.int32, device=table.device)
    bits = table.view(torch.int16).to(torch.int64) & 0xFFFF  # (16,)
    byte = torch.arange(256, device=table.device)
    pairs = bits[byte >> 4] << 16 | bits[byte & 15]
    return (pairs - (pairs >= 2**31).to(torch.int64) * 2**32).to(torch.int32)  # the same 32 bits, signed


def byte_tables(table: torch.Tensor) -> torch.Tensor:
    """(8,) int32: the 16 values' bf16 high bytes in words 0-3 (value i in byte i % 4 of word i // 4),
    their low bytes in words 4-7 — the registers `PRMT_ASM` permutes. Zeros for other table dtypes."""
    if table.dtype != torch.bfloat16:
        return torch.zeros(8, dtype=torch.int32, device=table.device)
    bits = table.view(torch.int16).to(torch.int64) & 0xFFFF  # (16,)
    halves = torch.stack((bits >> 8, bits & 0xFF)).view(2, 4, 4)  # (high/low, word, byte)
    words = (halves << (8 * torch.arange(4, device=table.device))).sum(-1).view(8)
    return (words - (words >= 2**31).to(torch.int64) * 2**32).to(torch.int32)


PRMT_ASM = " ".join(
    line.strip()
    for line in """{
.reg .b32 t, s, m0, m1, a, b, c, d, h, l;
shl.b32 t, $4, 4;
prmt.b32 m0, $4, t, 0x9D8C;
prmt.b32 m1, $4, t, 0xBFAE;
xor.b32 s, $4, 0x8888;
prmt.b32 a, $5, $6, $4;
prmt.b32 b, $7, $8, s;
lop3.b32 h, a, b, m0, 0xD8;
prmt.b32 c, $9, $10, $4;
prmt.b32 d, $11, $12, s;
lop3.b32 l, c, d, m0, 0xD8;
prmt.b32 $0, l, h, 0x4051;
prmt.b32 $1, l, h, 0x6273;
shr.u32 t, $4, 16;
xor.b32 s, t, 0x8888;
prmt.b32 a, $5, $6, t;
prmt.b32 b, $7, $8, s;
lop3.b32 h, a, b, m1, 0xD8;
prmt.b32 c, $9, $10, t;
prmt.b32 d, $11, $12, s;
lop3.b32 l, c, d, m1, 0xD8;
prmt.b32 $2, l, h, 0x4051;
prmt.b32 $3, l, h, 0x6273;
}""".splitlines()
)
"""8 codes (one int32 word of 4 code bytes: byte j holds column 2j in its high nibble) to 4 words of two
bf16 weights each (columns 2t, 2t + 1 of the word in the low and high half of output t), with no memory
access. One line: Inductor copies a compiled graph's Triton kernels, with their constexpr globals, into a
triple-quoted string, where a newline escaped in the constant's repr would become a real one (the compiled
engine failed to import it). `prmt` picks 4 bytes out of two registers by the low 3 bits of 4 selector
nibbles (c[15:0]; a set 4th bit instead repeats the sign of the chosen byte): values 0-7 of a byte table
come from words $5, $6 (high bytes) / $9, $10 (low bytes), selected by the raw codes, values 8-15 from
$7, $8 / $11, $12, selected by the codes with bit 3 flipped; `lop3` (0xD8: mask ? second : first)
keeps, per byte, the half the code's bit 3 names. The masks: code k's bit 3 is the top bit of a byte of
the word (odd k) or of the word shifted left by 4 (even k), repeated by prmt's sign mode (0x9D8C: codes
0-3, 0xBFAE: 4-7). The first lookups yield bytes in column order (1, 0, 3, 2); 0x4051 / 0x6273
interleave low and high bytes into the bf16 pairs (0, 1) and (2, 3). `prmt_decode` is the same bit logic
in torch."""


def prmt(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """PTX `prmt.b32` (default mode) on int64 tensors holding unsigned 32-bit values, for `prmt_decode`."""
    pool = torch.stack([(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)])
    out = torch.zeros_like(a)
    for i in range(4):
        nibble = (c >> (4 * i)) & 0xF
        byte = torch.gather(pool, 0, (nibble & 7)[None]).squeeze(0)
        byte = torch.where(nibble >= 8, (byte >> 7) * 0xFF, byte)  # sign mode: the top bit, repeated
        out = out | byte << (8 * i)
    return out


def prmt_decode(words: torch.Tensor, tables: torch.Tensor, asm: str = PRMT_ASM) -> list[torch.Tensor]:
    """Run `asm` (PRMT_ASM: its shl/shr/xor/prmt/lop3 lines, in order) in torch on int32 code words and
    `byte_tables`: the four output words ($0-$3), as unsigned 32-bit values in int64. What the CPU tests
    check the assembly's selectors and masks with (Triton's interpreter runs no PTX)."""
    mask32 = 0xFFFFFFFF
    regs: dict[str, torch.Tensor] = {"$4": words.to(torch.int64) & mask32}
    regs |= {f"${5 + i}": torch.full_like(regs["$4"], int(v) & mask32) for i, v in enumerate(tables.tolist())}

    def value(operand: str) -> torch.Tensor:
        return regs[operand] if operand in regs else torch.full_like(regs["$4"], int(operand, 0))

    for line in asm.replace("{", "").replace("}", "").split(";"):
        op, _, rest = line.strip().partition(" ")
        if not op or op.startswith(".reg"):
            continue
        dst, *args = (a.strip() for a in rest.split(","))
        v = [value(a) for a in args]
        if op == "shl.b32":
            out = v[0] << v[1]
        elif op == "shr.u32":
            out = v[0] >> v[1]
        elif op == "xor.b32":
            out = v[0] ^ v[1]
        elif op == "prmt.b32":
            out = prmt(v[0], v[1], v[2])
        elif op == "lop3.b32":  # bit i of the LUT: the result for (a, b, c) bits (i >> 2, i >> 1, i) & 1
            lut = int(args[3], 0)
            out = torch.zeros_like(v[0])
            for i in range(8):
                if lut >> i & 1:
                    terms = [x if i >> (2 - k) & 1 else ~x for k, x in enumerate(v[:3])]
                    out = out | (terms[0] & terms[1] & terms[2])
        else:
            raise ValueError(f"prmt_decode knows no {op!r}")
        regs[dst] = out & mask32
    return [regs[f"${t}"] for t in range(4)]


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

    _PRMT = tl.constexpr(PRMT_ASM)

    @triton.jit
    def _codes(q_ptr, rows, k0, KH, GB: tl.constexpr, G: tl.constexpr, MASKED: tl.constexpr,
               SCALAR: tl.constexpr = False):  # fmt: skip
        # the units [k0, k0 + G * GB) of each row, as (rows, G groups, GB units): read once a step.
        # SCALAR: one unit a load (prmt's int32 words: the decoded words then share the input's layout)
        j = k0 + tl.arange(0, G)[:, None] * GB + tl.arange(0, GB)[None, :]
        if SCALAR:
            j = tl.max_contiguous(j, [1, 1])
        codes = q_ptr + rows[:, None, None] * KH + j[None, :, :]
        if MASKED:
            return tl.load(codes, mask=(j < KH)[None, :, :], other=0, eviction_policy="evict_first")
        return tl.load(codes, eviction_policy="evict_first")

    @triton.jit
    def _input_pairs(x_ptr, x2_ptr, k0, K1, KH, GB: tl.constexpr, G: tl.constexpr, HAS_X2: tl.constexpr,
                     X_PAIRS: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
        # one token's input at columns 2j and 2j + 1 for the chunk's bytes j, (G, GB) each, in fp32
        # (input = cat(x[:K1], x2) or x; K1 even, so no pair straddles the seam). X_PAIRS: bf16 input
        # read as int32 words, one per byte j, each holding both (little-endian: column 2j in the low half)
        j = k0 + tl.arange(0, G)[:, None] * GB + tl.arange(0, GB)[None, :]
        if X_PAIRS:
            return _halves(_input_words(x_ptr, x2_ptr, j, K1, KH, HAS_X2, MASKED))
        col = 2 * j[:, :, None] + tl.arange(0, 2)[None, None, :]  # (G, GB, 2)
        inside = (j < KH)[:, :, None] if MASKED else col >= 0
        if HAS_X2:
            first = tl.load(x_ptr + col, mask=inside & (col < K1), other=0.0)
            second = tl.load(x2_ptr + (col - K1), mask=inside & (col >= K1), other=0.0)
            pairs = tl.where(col < K1, first, second)
        elif MASKED:
            pairs = tl.load(x_ptr + col, mask=inside, other=0.0)
        else:
            pairs = tl.load(x_ptr + col)
        return tl.split(pairs.to(tl.float32))

    @triton.jit
    def _input_words(x_ptr, x2_ptr, j, K1, KH, HAS_X2: tl.constexpr, MASKED: tl.constexpr):
        # the bf16 input's int32 words j (word j: columns 2j, 2j + 1) of cat(x[:K1], x2) or x; j < KH
        inside = j < KH if MASKED else j >= 0
        if HAS_X2:
            first = tl.load(x_ptr + j, mask=inside & (j < K1 // 2), other=0)
            second = tl.load(x2_ptr + (j - K1 // 2), mask=inside & (j >= K1 // 2), other=0)
            return tl.where(j < K1 // 2, first, second)
        if MASKED:
            return tl.load(x_ptr + j, mask=inside, other=0)
        return tl.load(x_ptr + j)

    @triton.jit
    def _input_quads(x_ptr, x2_ptr, k0, K1, KW, GW: tl.constexpr, G: tl.constexpr, HAS_X2: tl.constexpr,
                     MASKED: tl.constexpr):  # fmt: skip
        # for the prmt decode: the input words 4i + t of the chunk's code words i, (1, G, GW, 4) (code word
        # i holds columns 8i..8i + 7, input word 4i + t columns 8i + 2t, 8i + 2t + 1) — a 16-byte load a
        # code word, in the layout `_partial_prmt` joins the decoded words into
        i = k0 + tl.arange(0, G)[None, :, None, None] * GW + tl.arange(0, GW)[None, None, :, None]
        return _input_words(
            x_ptr, x2_ptr, 4 * i + tl.arange(0, 4)[None, None, None, :], K1, 4 * KW, HAS_X2, MASKED
        )

    @triton.jit
    def _group_scale(s_ptr, rows, g0, KG, G: tl.constexpr, MASKED: tl.constexpr):
        g = g0 + tl.arange(0, G)
        scales = s_ptr + rows[:, None, None] * KG + g[None, :, None]  # (rows, G, 1): one per group
        if MASKED:
            return tl.load(scales, mask=(g < KG)[None, :, None], other=0.0).to(tl.float32)
        return tl.load(scales).to(tl.float32)

    @triton.jit
    def _partial(byte, a, b, s_ptr, pair_ptr, table_ptr, rows, k0, KG, GB: tl.constexpr, G: tl.constexpr,
                 PAIRS: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
        # scale[row, group] * (table[hi] * a + table[lo] * b) for the chunk's bytes, (rows, G, GB) in fp32
        scale = _group_scale(s_ptr, rows, k0 // GB, KG, G, MASKED)
        if PAIRS:  # bf16: one gather from L1 gives both weights' bits, each shifted into an fp32 exactly
            pair = tl.load(pair_ptr + byte.to(tl.int32))
            w_hi = (pair & -65536).to(tl.float32, bitcast=True)
            w_lo = (pair << 16).to(tl.float32, bitcast=True)
        else:
            w_hi = tl.load(table_ptr + (byte >> 4).to(tl.int32)).to(tl.float32)
            w_lo = tl.load(table_ptr + (byte & 15).to(tl.int32)).to(tl.float32)
        return scale * (w_hi * a[None, :, :] + w_lo * b[None, :, :])

    @triton.jit
    def _per_thread(ptr, R: tl.constexpr, G: tl.constexpr, GU: tl.constexpr):
        # the int32 at ptr in a register of every thread (not a uniform one: the PRMTs read their tables
        # from ordinary registers, and ptxas would copy a uniform value over before each use): or'd with
        # lanemask_lt & lanemask_gt, zero in every lane but not a value ptxas folds
        return tl.inline_asm_elementwise(
            "{.reg .b32 y, z; mov.u32 y, %lanemask_lt; mov.u32 z, %lanemask_gt; and.b32 z, y, z; "
            "or.b32 $0, $1, z;}",
            "=r,r",
            [tl.full([R, G, GU], tl.load(ptr), tl.int32)],
            dtype=tl.int32,
            is_pure=True,
            pack=1,
        )

    @triton.jit
    def _prmt_tables(lut_ptr, R: tl.constexpr, G: tl.constexpr, GU: tl.constexpr):
        # prmt's 8 byte-table words, each in an ordinary register of every thread
        return (
            _per_thread(lut_ptr, R, G, GU), _per_thread(lut_ptr + 1, R, G, GU),
            _per_thread(lut_ptr + 2, R, G, GU), _per_thread(lut_ptr + 3, R, G, GU),
            _per_thread(lut_ptr + 4, R, G, GU), _per_thread(lut_ptr + 5, R, G, GU),
            _per_thread(lut_ptr + 6, R, G, GU), _per_thread(lut_ptr + 7, R, G, GU),
        )  # fmt: skip

    @triton.jit
    def _halves(w):
        # an int32 word of two bf16 values as two fp32 (a bf16 shifted left by 16 bits is its fp32):
        # (the low half's, the high half's)
        return (w << 16).to(tl.float32, bitcast=True), (w & -65536).to(tl.float32, bitcast=True)

    @triton.jit
    def _pair_dot(p, x):
        # two bf16 weights (int32 word p) times two bf16 inputs (word x), in fp32: exact products
        p_lo, p_hi = _halves(p)
        x_lo, x_hi = _halves(x)
        return p_lo * x_lo + p_hi * x_hi

    @triton.jit
    def _pair_acc(acc, p, x):
        # acc plus two bf16 weights (int32 word p) times their fp32 inputs x = (low's, high's), in turn
        p_lo, p_hi = _halves(p)
        acc += p_lo * x[0]
        return acc + p_hi * x[1]

    @triton.jit
    def _prmt_words(word, tabs):
        # PRMT_ASM on each int32 code word: its 4 words of two bf16 weights; `tabs`: `byte_tables`' 8 words
        return tl.inline_asm_elementwise(
            _PRMT,
            "=r,=r,=r,=r,r,r,r,r,r,r,r,r,r",
            [word, tabs[0], tabs[1], tabs[2], tabs[3], tabs[4], tabs[5], tabs[6], tabs[7]],
            dtype=(tl.int32, tl.int32, tl.int32, tl.int32),
            is_pure=True,
            pack=1,
        )

    @triton.jit
    def _partial_prmt(word, xs, s_ptr, tabs, rows, k0, KG, GW: tl.constexpr, G: tl.constexpr,
                      MASKED: tl.constexpr):  # fmt: skip
        # the prmt decode's partial sums for the chunk's code words, (rows, G, GW) in fp32; `tabs`: the 8
        # words of `byte_tables`, `xs`: `_input_quads`
        scale = _group_scale(s_ptr, rows, k0 // GW, KG, G, MASKED)
        p0, p1, p2, p3 = _prmt_words(word, tabs)
        words = tl.join(tl.join(p0, p2), tl.join(p1, p3))  # [..., u, v]: output 2u + v
        words = tl.reshape(words, [words.shape[0], G, GW, 4])
        return scale * tl.sum(_pair_dot(words, xs), axis=3)

    @triton.jit
    def _chunk_sums(code, code_up, x_row, x2_row, s_ptr, lut_ptr, table_ptr, tabs, rows, N, k0, K1, KU, KG,
                    GU: tl.constexpr, G: tl.constexpr, HAS_X2: tl.constexpr, X_PAIRS: tl.constexpr,
                    DECODE: tl.constexpr, GLU: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
        # one chunk's partial sums, (rows, G, GU) in fp32, of the rows and (GLU) of their up rows
        if DECODE == 2:
            xs = _input_quads(x_row, x2_row, k0, K1, KU, GU, G, HAS_X2, MASKED)
            part = _partial_prmt(code, xs, s_ptr, tabs, rows, k0, KG, GU, G, MASKED)
            if GLU:
                part_up = _partial_prmt(code_up, xs, s_ptr, tabs, rows + N, k0, KG, GU, G, MASKED)
            else:
                part_up = tl.zeros_like(part)
        else:
            a, b = _input_pairs(x_row, x2_row, k0, K1, KU, GU, G, HAS_X2, X_PAIRS, MASKED)
            pairs: tl.constexpr = DECODE == 1
            part = _partial(code, a, b, s_ptr, lut_ptr, table_ptr, rows, k0, KG, GU, G, pairs, MASKED)
            if GLU:
                part_up = _partial(
                    code_up, a, b, s_ptr, lut_ptr, table_ptr, rows + N, k0, KG, GU, G, pairs, MASKED
                )
            else:
                part_up = tl.zeros_like(part)
        return part, part_up

    @triton.jit
    def _epilogue(y, up, m, rows, out_rows, row_mask, N, act_from, bias_ptr, add_ptr, res_ptr, y_ptr,
                  ACT: tl.constexpr, GLU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ADD: tl.constexpr,
                  HAS_RES: tl.constexpr):  # fmt: skip
        # token m's output rows from their fp32 sums y (and GLU's up rows' sums): bias, addend, activation,
        # residual, each rounded where the modules round, stored
        dtype = y_ptr.dtype.element_ty
        width = 2 * N if GLU else N  # of the addend's rows
        if HAS_BIAS:
            y += tl.load(bias_ptr + rows).to(tl.float32)
        y = y.to(dtype).to(tl.float32)  # the linear layer's output, rounded as the module rounds it
        if HAS_ADD:
            y += tl.load(add_ptr + m * width + rows).to(tl.float32)
            y = y.to(dtype).to(tl.float32)  # `base(x) + lora(x)`, rounded as litgpt's LoRA layer does
        if GLU:
            if HAS_BIAS:
                up += tl.load(bias_ptr + N + rows).to(tl.float32)
            up = up.to(dtype).to(tl.float32)
            if HAS_ADD:
                up += tl.load(add_ptr + m * width + N + rows).to(tl.float32)
                up = up.to(dtype).to(tl.float32)
            y = _activation(y, ACT).to(dtype).to(tl.float32) * up
            y = y.to(dtype).to(tl.float32)
        elif ACT != 0:
            y = tl.where(rows >= act_from, _activation(y, ACT).to(dtype).to(tl.float32), y)
        if HAS_RES:
            y += tl.load(res_ptr + m * N + rows).to(tl.float32)
        tl.store(y_ptr + m * N + out_rows, y.to(dtype), mask=row_mask)

    @triton.jit
    def _nf4_gemv_kernel(
        x_ptr,
        x2_ptr,
        q_ptr,
        s_ptr,
        lut_ptr,
        table_ptr,
        bias_ptr,
        add_ptr,
        res_ptr,
        y_ptr,
        M,
        N,
        K1,
        K,
        KU,
        KG,
        act_from,
        GU: tl.constexpr,
        HAS_X2: tl.constexpr,
        ACT: tl.constexpr,
        GLU: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_ADD: tl.constexpr,
        HAS_RES: tl.constexpr,
        DECODE: tl.constexpr,
        X_PAIRS: tl.constexpr,
        BLOCK_N: tl.constexpr,
        G: tl.constexpr,
    ):
        # token m, output rows [tile * BLOCK_N, ...): y[m, rows] = W[rows] @ input[m] (+ bias) (+ add[m]),
        # act'd from row act_from on, (+ res[m]); input = cat(x[m, :K1], x2[m, :K - K1]) or x[m] (K1 = K).
        # GLU: W has 2N rows [gate; up], y = act(gate (+ add[m, :N])) * (up (+ add[m, N:])) (+ res[m]).
        # The codes are read in units (DECODE 0, table / 1, pairs: bytes; 2, prmt: int32 words of 4
        # bytes), KU a row; lut_ptr: the code pairs (1) or byte tables (2). A chunk is G groups of GU units
        # (a group: the weights of one scale); the next chunk's codes are loaded before this one is
        # multiplied, so their HBM latency overlaps the arithmetic.
        pid = tl.program_id(0)
        m = pid % M  # the tokens of one row tile are neighbours: the later ones read the codes from L2
        tile = pid // M
        out_rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = out_rows < N
        rows = tl.minimum(out_rows, N - 1)  # a partial tile re-reads its last row: no masks in the loop
        per: tl.constexpr = 2 if X_PAIRS else 1  # input values an element of x_ptr holds
        x_row = x_ptr + m * (K1 // per)
        x2_row = x2_ptr + m * ((K - K1) // per)
        CHUNK: tl.constexpr = G * GU
        full = KU - KU % CHUNK
        last = tl.maximum(full - CHUNK, 0)
        acc = tl.zeros([BLOCK_N, G, GU], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_N, G, GU], dtype=tl.float32)  # GLU's up rows (dropped otherwise)
        tabs = 0  # prmt's byte tables (unused by the other decodes)
        if DECODE == 2:
            tabs = _prmt_tables(lut_ptr, BLOCK_N, G, GU)
        code = _codes(
            q_ptr, rows, 0, KU, GU, G, True, DECODE == 2
        )  # masked: the weight may be narrower than a chunk
        code_up = code  # GLU's up rows (unused otherwise)
        if GLU:
            code_up = _codes(q_ptr, rows + N, 0, KU, GU, G, True, DECODE == 2)
        for k0 in range(0, full, CHUNK):
            ahead = tl.minimum(k0 + CHUNK, last)  # the last full chunk re-reads itself (cached)
            code_next = _codes(q_ptr, rows, ahead, KU, GU, G, False, DECODE == 2)
            if GLU:
                up_next = _codes(q_ptr, rows + N, ahead, KU, GU, G, False, DECODE == 2)
            part, part_up = _chunk_sums(
                code, code_up, x_row, x2_row, s_ptr, lut_ptr, table_ptr, tabs, rows, N, k0, K1, KU, KG,
                GU, G, HAS_X2, X_PAIRS, DECODE, GLU, False,
            )  # fmt: skip
            acc += part
            acc_up += part_up
            code = code_next
            if GLU:
                code_up = up_next
        if full < KU:  # the tail, masked
            code = _codes(q_ptr, rows, full, KU, GU, G, True, DECODE == 2)
            if GLU:
                code_up = _codes(q_ptr, rows + N, full, KU, GU, G, True, DECODE == 2)
            part, part_up = _chunk_sums(
                code, code_up, x_row, x2_row, s_ptr, lut_ptr, table_ptr, tabs, rows, N, full, K1, KU, KG,
                GU, G, HAS_X2, X_PAIRS, DECODE, GLU, True,
            )  # fmt: skip
            acc += part
            acc_up += part_up
        y = tl.sum(tl.sum(acc, axis=2), axis=1)
        up = tl.sum(tl.sum(acc_up, axis=2), axis=1)
        _epilogue(y, up, m, rows, out_rows, row_mask, N, act_from, bias_ptr, add_ptr, res_ptr, y_ptr,
                  ACT, GLU, HAS_BIAS, HAS_ADD, HAS_RES)  # fmt: skip

    @triton.jit
    def _quarters(t, R: tl.constexpr, C: tl.constexpr):
        # (R, C, 4) -> its four (R, C) slices [..., 0] .. [..., 3], each where its thread holds it
        a, b = tl.split(tl.reshape(t, [R, C, 2, 2]))  # a: slices 0, 2; b: 1, 3
        t0, t2 = tl.split(a)
        t1, t3 = tl.split(b)
        return t0, t1, t2, t3

    @triton.jit
    def _quad_codes(q_ptr, rows, c0, KQ, end, C: tl.constexpr, MASKED: tl.constexpr):
        # code words 4c + j, j < 4, of quads c in [c0, c0 + C) of each row (KQ quads; MASKED: those < end):
        # (R, C, 4), 16 bytes a thread
        c = c0 + tl.arange(0, C)
        offs = rows[:, None, None] * (4 * KQ) + 4 * c[None, :, None] + tl.arange(0, 4)[None, None, :]
        if MASKED:
            inside = (c < end)[None, :, None]
            return tl.load(q_ptr + offs, mask=inside, other=0, eviction_policy="evict_first")
        return tl.load(q_ptr + offs, eviction_policy="evict_first")

    @triton.jit
    def _quad_input(x_row, x2_row, c0, j: tl.constexpr, K1, end, C: tl.constexpr, HAS_X2: tl.constexpr,
                    MASKED: tl.constexpr):  # fmt: skip
        # for code word j of each quad c: its 4 input words 16c + 4j + t (columns 32c + 8j + 2t, + 1), as
        # (1, C) low-half and high-half fp32 values for each t — the layout of the codes' slices
        c = c0 + tl.arange(0, C)
        words = _input_words(
            x_row, x2_row, (16 * c + 4 * j)[None, :, None] + tl.arange(0, 4)[None, None, :], K1, 16 * end,
            HAS_X2, MASKED,
        )  # fmt: skip
        w0, w1, w2, w3 = _quarters(words, 1, C)
        return _halves(w0), _halves(w1), _halves(w2), _halves(w3)

    @triton.jit
    def _quad_inputs(x_row, x2_row, c0, K1, end, C: tl.constexpr, HAS_X2: tl.constexpr, MASKED: tl.constexpr):
        # `_quad_input` for each of a quad's 4 code words
        return (
            _quad_input(x_row, x2_row, c0, 0, K1, end, C, HAS_X2, MASKED),
            _quad_input(x_row, x2_row, c0, 1, K1, end, C, HAS_X2, MASKED),
            _quad_input(x_row, x2_row, c0, 2, K1, end, C, HAS_X2, MASKED),
            _quad_input(x_row, x2_row, c0, 3, K1, end, C, HAS_X2, MASKED),
        )

    @triton.jit
    def _word_dot(word, xs, tabs, lut_ptr, ASM: tl.constexpr):
        # one code word a (row, quad): its 8 weights (decoded: prmt's bf16 pairs) times their 8 inputs, fp32
        if ASM:
            p0, p1, p2, p3 = _prmt_words(word, tabs)
        else:  # the same words from the code-pair table (the CPU interpreter runs no PTX): halves swapped
            p0 = _swap_halves(tl.load(lut_ptr + (word & 255)))
            p1 = _swap_halves(tl.load(lut_ptr + ((word >> 8) & 255)))
            p2 = _swap_halves(tl.load(lut_ptr + ((word >> 16) & 255)))
            p3 = _swap_halves(tl.load(lut_ptr + ((word >> 24) & 255)))
        p_lo, p_hi = _halves(p0)
        acc = p_lo * xs[0][0] + p_hi * xs[0][1]
        return _pair_acc(_pair_acc(_pair_acc(acc, p1, xs[1]), p2, xs[2]), p3, xs[3])

    @triton.jit
    def _swap_halves(v):
        return (v << 16) | ((v >> 16) & 65535)

    @triton.jit
    def _quads_sum(codes, xs, s_ptr, tabs, lut_ptr, rows, c0, KG, end, QG: tl.constexpr,
                   R: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
        # a chunk's (R, C) partial sums: each quad's 4 code words against their inputs (`_quad_inputs`),
        # times its group's scale (a group: QG quads)
        w0, w1, w2, w3 = _quarters(codes, R, C)
        part = _word_dot(w0, xs[0], tabs, lut_ptr, ASM) + _word_dot(w1, xs[1], tabs, lut_ptr, ASM)
        part += _word_dot(w2, xs[2], tabs, lut_ptr, ASM) + _word_dot(w3, xs[3], tabs, lut_ptr, ASM)
        c = c0 + tl.arange(0, C)
        scales = s_ptr + rows[:, None] * KG + (c // QG)[None, :]
        if MASKED:
            scale = tl.load(scales, mask=(c < end)[None, :], other=0.0)
        else:
            scale = tl.load(scales)
        return part * scale.to(tl.float32)

    @triton.jit
    def _quad_tables(lut_ptr, R: tl.constexpr, C: tl.constexpr):
        # prmt's 8 byte-table words as (R, C) tensors, each in an ordinary register of every thread
        t = _prmt_tables(lut_ptr, R, C, 1)
        return (
            tl.reshape(t[0], [R, C]), tl.reshape(t[1], [R, C]), tl.reshape(t[2], [R, C]),
            tl.reshape(t[3], [R, C]), tl.reshape(t[4], [R, C]), tl.reshape(t[5], [R, C]),
            tl.reshape(t[6], [R, C]), tl.reshape(t[7], [R, C]),
        )  # fmt: skip

    @triton.jit
    def _nf4_quads_kernel(
        x_ptr, x2_ptr, q_ptr, s_ptr, lut_ptr, bias_ptr, add_ptr, res_ptr, y_ptr, ws_ptr, M, N, K1, K, KQ, KG,
        act_from, QG: tl.constexpr, HAS_X2: tl.constexpr, ACT: tl.constexpr, GLU: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_ADD: tl.constexpr, HAS_RES: tl.constexpr, ASM: tl.constexpr,
        BLOCK_N: tl.constexpr, C: tl.constexpr, PREFETCH: tl.constexpr, SPLIT: tl.constexpr,
    ):  # fmt: skip
        # `_nf4_gemv_kernel`'s GEMV (same folds, bf16) laid out for the registers rather than for L1: a
        # thread holds 4 consecutive code words (32 weights, one 16-byte load) of every one of the
        # program's BLOCK_N rows, and their 16 input words once for all rows; it sums its words in fp32 and
        # scales the sum once per quad (groups of QG quads: group width a multiple of 32); the rows' sums
        # meet across threads once, at the end. KQ: quads a row (K / 32); x, x2 as int32 pairs. ASM: the
        # prmt decode (lut_ptr: byte tables), else the code-pair gathers (lut_ptr: pairs; the interpreter).
        # SPLIT > 1: the row's quads in SPLIT ranges of whole chunks, one program each (more programs for
        # matrices of few, long rows); each stores its fp32 sums in ws (M, SPLIT, rows) for
        # `_nf4_split_kernel` to add up and finish.
        pid = tl.program_id(0)
        m = pid % M
        rest = pid // M
        split = rest % SPLIT
        tile = rest // SPLIT
        out_rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = out_rows < N
        rows = tl.minimum(out_rows, N - 1)
        x_row = x_ptr + m * (K1 // 2)
        x2_row = x2_ptr + m * ((K - K1) // 2)
        per = tl.cdiv(tl.cdiv(KQ, SPLIT), C) * C  # quads a split: whole chunks
        begin = split * per
        end = tl.minimum(begin + per, KQ)
        full = begin + tl.maximum(end - begin, 0) // C * C
        acc = tl.zeros([BLOCK_N, C], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_N, C], dtype=tl.float32)
        tabs = 0
        if ASM:
            tabs = _quad_tables(lut_ptr, BLOCK_N, C)
        last = tl.maximum(full - C, begin)
        codes = _quad_codes(q_ptr, rows, begin, KQ, end, C, True)  # PREFETCH's first chunk (K may be < C)
        codes_up = codes
        if GLU:
            codes_up = _quad_codes(q_ptr, rows + N, begin, KQ, end, C, True)
        for c0 in range(begin, full, C):
            if PREFETCH:  # the next chunk's codes in flight while this one is multiplied
                ahead = tl.minimum(c0 + C, last)  # the last full chunk re-reads itself (cached)
                codes_next = _quad_codes(q_ptr, rows, ahead, KQ, end, C, False)
                up_next = codes_next
                if GLU:
                    up_next = _quad_codes(q_ptr, rows + N, ahead, KQ, end, C, False)
            else:
                codes = _quad_codes(q_ptr, rows, c0, KQ, end, C, False)
                if GLU:
                    codes_up = _quad_codes(q_ptr, rows + N, c0, KQ, end, C, False)
            xs = _quad_inputs(x_row, x2_row, c0, K1, end, C, HAS_X2, False)
            acc += _quads_sum(codes, xs, s_ptr, tabs, lut_ptr, rows, c0, KG, end, QG, BLOCK_N, C, ASM, False)
            if GLU:
                acc_up += _quads_sum(codes_up, xs, s_ptr, tabs, lut_ptr, rows + N, c0, KG, end, QG, BLOCK_N,
                                     C, ASM, False)  # fmt: skip
            if PREFETCH:
                codes = codes_next
                codes_up = up_next
        if full < end:  # the tail, masked
            codes = _quad_codes(q_ptr, rows, full, KQ, end, C, True)
            xs = _quad_inputs(x_row, x2_row, full, K1, end, C, HAS_X2, True)
            acc += _quads_sum(codes, xs, s_ptr, tabs, lut_ptr, rows, full, KG, end, QG, BLOCK_N, C, ASM, True)
            if GLU:
                codes_up = _quad_codes(q_ptr, rows + N, full, KQ, end, C, True)
                acc_up += _quads_sum(codes_up, xs, s_ptr, tabs, lut_ptr, rows + N, full, KG, end, QG, BLOCK_N,
                                     C, ASM, True)  # fmt: skip
        if SPLIT == 1:
            _epilogue(tl.sum(acc, axis=1), tl.sum(acc_up, axis=1), m, rows, out_rows, row_mask, N, act_from,
                      bias_ptr, add_ptr, res_ptr, y_ptr, ACT, GLU, HAS_BIAS, HAS_ADD, HAS_RES)  # fmt: skip
        else:
            width = 2 * N if GLU else N
            ws = ws_ptr + (m * SPLIT + split) * width
            tl.store(ws + out_rows, tl.sum(acc, axis=1), mask=row_mask)
            if GLU:
                tl.store(ws + N + out_rows, tl.sum(acc_up, axis=1), mask=row_mask)

    @triton.jit
    def _nf4_split_kernel(
        ws_ptr, bias_ptr, add_ptr, res_ptr, y_ptr, M, N, act_from, SPLIT: tl.constexpr, ACT: tl.constexpr,
        GLU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ADD: tl.constexpr, HAS_RES: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        # the split quads kernel's partial sums ws (M, SPLIT, rows) added up per token and row, then the
        # same epilogue as unsplit
        pid = tl.program_id(0)
        m = pid % M
        tile = pid // M
        out_rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = out_rows < N
        rows = tl.minimum(out_rows, N - 1)
        width = 2 * N if GLU else N
        parts = ws_ptr + (m * SPLIT + tl.arange(0, SPLIT))[:, None] * width + rows[None, :]
        y = tl.sum(tl.load(parts), axis=0)
        up = y
        if GLU:
            up = tl.sum(tl.load(parts + N), axis=0)
        _epilogue(y, up, m, rows, out_rows, row_mask, N, act_from, bias_ptr, add_ptr, res_ptr, y_ptr, ACT,
                  GLU, HAS_BIAS, HAS_ADD, HAS_RES)  # fmt: skip


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
    decode_name = nf4_decode(weight, x, k1)
    tile = nf4_tile(K, decode_name)
    x_pairs = x.dtype == torch.bfloat16  # read as int32 words of two values (K1, K - K1 even)
    x_in = x.view(torch.int32) if x_pairs else x
    x2_in = x_in if x2 is None else _rows(x2, k2).view(torch.int32) if x_pairs else _rows(x2, k2)
    operands = (  # pointers a variant does not read: x
        bias if bias is not None else x,
        _rows(add, rows) if add is not None else x,
        _rows(residual, N) if residual is not None else x,
    )
    folds = {  # the epilogue's (every kernel's)
        "ACT": 0 if activation is None else kernels.ACTIVATIONS[activation],
        "GLU": glu,
        "HAS_BIAS": bias is not None,
        "HAS_ADD": add is not None,
        "HAS_RES": residual is not None,
    }
    act_at = 0 if act_from is None else act_from
    if decode_name == "quads":
        _launch_quads(x_in, x2_in, weight, operands, y, k1, act_at, tile, folds, x2 is not None)
        return y.view(out_shape)
    block_n, block_k, warps = tile
    if block_k < weight.group:
        raise ValueError(f"an NF4 tile's K chunk ({block_k}) narrower than a scale group ({weight.group})")
    decode = DECODES.index(decode_name)
    unit = 4 if decode == 2 else 1  # code bytes a unit the kernel reads: int32 words for prmt
    _nf4_gemv_kernel[(M * triton.cdiv(N, block_n),)](
        x_in,
        x2_in,
        weight.codes.view(torch.int32) if unit == 4 else weight.codes,
        weight.scales,
        weight.bytes if decode == 2 else weight.pairs,
        weight.table,
        *operands,
        y,
        M,
        N,
        k1,
        K,
        K // 2 // unit,  # units a row: an argument, so Triton sees it divisible by 16 and vectorizes loads
        K // weight.group,
        act_at,
        GU=weight.group // 2 // unit,
        HAS_X2=x2 is not None,
        **folds,
        DECODE=decode,
        X_PAIRS=x_pairs,
        BLOCK_N=block_n,
        G=block_k // weight.group,  # groups a chunk
        num_warps=warps,
        num_stages=NUM_STAGES,
    )
    return y.view(out_shape)


def _launch_quads(
    x_in: torch.Tensor,
    x2_in: torch.Tensor,
    weight: PackedNF4,
    operands: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    y: torch.Tensor,
    k1: int,
    act_at: int,
    tile: tuple[int, int, int],
    folds: dict[str, Any],
    has_x2: bool,
) -> None:
    """`_launch`'s GEMV into `y` through `_nf4_quads_kernel` (the `quads` decode: bf16 input as int32 pairs,
    K and the groups multiples of 32), split along K where `quads_split` says, its sums then added by
    `_nf4_split_kernel`."""
    rows, K = weight.shape
    M, N = y.shape
    block_n, block_k, warps = tile
    asm = x_in.is_cuda
    tiles = M * triton.cdiv(N, block_n)
    split = quads_split(tiles, K // block_k, x_in.device)
    ws = torch.empty(M, split, rows, device=y.device, dtype=torch.float32) if split > 1 else y
    _nf4_quads_kernel[(tiles * split,)](
        x_in,
        x2_in,
        weight.codes.view(torch.int32),
        weight.scales,
        weight.bytes if asm else weight.pairs,
        *operands,
        y,
        ws,
        M,
        N,
        k1,
        K,
        K // 32,
        K // weight.group,
        act_at,
        QG=weight.group // 32,
        HAS_X2=has_x2,
        **folds,
        ASM=asm,
        BLOCK_N=block_n,
        C=block_k // 32,
        PREFETCH=QUADS_PREFETCH,
        SPLIT=split,
        num_warps=warps,
        num_stages=NUM_STAGES,
    )
    if split > 1:
        _nf4_split_kernel[(M * triton.cdiv(N, SPLIT_ROWS),)](
            ws, *operands, y, M, N, act_at, SPLIT=split, **folds, BLOCK_N=SPLIT_ROWS, num_warps=4
        )


def quads_split(tiles: int, chunks: int, device: torch.device) -> int:
    """How many ranges of K the quads kernel splits a row into (QUADS_SPLIT; None: enough for ~32
    one-warp programs a multiprocessor, a power of 2 up to 8, at least 2 chunks a range)."""
    if QUADS_SPLIT is not None:
        return QUADS_SPLIT
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    split = 1
    while split < 8 and tiles * split < 32 * sms and chunks >= 4 * split:
        split *= 2
    return split


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
