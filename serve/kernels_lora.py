"""Gathered multi-LoRA ("BGMV"): each token of a batch through its own LoRA adapter, in two Triton kernels.

Serving several fine-tuned twins on one base means a batch whose rows want different adapters. Merging
an adapter into the base serves one at a time; running one `F.linear` pair per adapter costs a launch
pair per adapter and layer, and a gather of the weights per token (`A[index]`) writes a (tokens, R, K)
copy of them. Punica's BGMV kernels (also S-LoRA's and vLLM's) instead read each token's adapter where
it lies in a stacked buffer: a "shrink" kernel `t = A[index[m]] @ x[m]` and an "expand" kernel
`y = B[index[m]] @ t[m]`, one launch each for the whole batch, whatever the mix of adapters. The delta
is then added to the base layer's output (`serve.kernels`' and `serve.kernels_nf4`' GEMVs take it as
their `add`, before the activation).

The layout (built by whoever loads the adapters; nothing here allocates it):
- `A`: (S, R, K) and `B`: (S, N, R), the activation dtype, one slot per adapter, LoRA's scaling
  (alpha / r) already folded into B; slot 0 holds zeros (the base model: a zero delta), as do unused
  slots, so every row of a batch takes the same path and a ragged rank is zero-padded to R;
- `index`: (M,) int64, each token's slot.
The shrink kernel's programs take (token, `BLOCK_R` ranks) and stream K in chunks; the expand kernel's
take (token, `BLOCK_N` outputs) and load the token's whole (padded) rank at once: R is small (at most
MAX_RANK). Both accumulate in fp32 and round their outputs to the activation dtype, as two `F.linear`
calls round them. The kernels are launched directly (as `serve.kernels` launches its own: torch.compile
traces user-defined Triton kernels into its graph): no host syncs, no shapes that depend on the data.
Steps of up to MAX_TOKENS tokens run them (`use_lora_kernels`); prefills take torch ops, which never
gather the weights per token. The tiles are not yet swept on a GPU. Tests run the kernels on CPU
tensors through Triton's interpreter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from serve import kernels
from serve.low_rank import LowRank

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU install has no Triton: use_lora_kernels() is False and nothing is launched
    triton = None

MAX_TOKENS = 16
"""Inputs of up to this many tokens run the kernels (serve's decode buckets); longer ones torch ops."""
MAX_RANK = 128
"""The largest adapter rank the expand kernel loads as one block."""
SHRINK_TILE = (4, 512, 4)
"""(ranks a program, K chunk, warps) of the shrink kernel: a few ranks a program, so a token's R x K
block is read by several programs side by side."""
EXPAND_TILE = (64, 4)
"""(outputs a program, warps) of the expand kernel."""


def use_lora_kernels(x: torch.Tensor) -> bool:
    """Whether the kernels serve the token rows x (M, K): at most MAX_TOKENS of them, on a CUDA device (or
    the CPU interpreter, `serve.kernels.cpu_interpreter`)."""
    return x.dim() == 2 and 0 < x.size(0) <= MAX_TOKENS and kernels._runs_on(x)


if triton is not None:

    @triton.jit
    def _shrink_kernel(
        x_ptr,
        x2_ptr,
        a_ptr,
        index_ptr,
        t_ptr,
        K1,
        K,
        R,
        stride_xm,
        stride_x2m,
        stride_as,
        stride_ar,
        HAS_X2: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        # program (m, r-block): t[m, ranks] = A[index[m], ranks, :] @ input[m], where input[m] is x[m]
        # or cat(x[m, :K1], x2[m, :K - K1]) (read where they lie: no concatenation copy)
        m = tl.program_id(0)
        ranks = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
        rank_mask = ranks < R
        slot = tl.load(index_ptr + m).to(tl.int64)
        a_rows = a_ptr + slot * stride_as + ranks[:, None] * stride_ar
        acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_mask = cols < K
            if HAS_X2:
                first = tl.load(x_ptr + m * stride_xm + cols, mask=cols < K1, other=0.0)
                in_x2 = (cols >= K1) & col_mask
                second = tl.load(x2_ptr + m * stride_x2m + (cols - K1), mask=in_x2, other=0.0)
                xv = tl.where(cols < K1, first, second).to(tl.float32)
            else:
                xv = tl.load(x_ptr + m * stride_xm + cols, mask=col_mask, other=0.0).to(tl.float32)
            a = tl.load(a_rows + cols[None, :], mask=rank_mask[:, None] & col_mask[None, :], other=0.0)
            acc += a.to(tl.float32) * xv[None, :]
        t = tl.sum(acc, axis=1)
        # rounded as the first F.linear rounds it; t is (M, R) contiguous
        tl.store(t_ptr + m * R + ranks, t.to(t_ptr.dtype.element_ty), mask=rank_mask)

    @triton.jit
    def _expand_kernel(
        t_ptr,
        b_ptr,
        index_ptr,
        y_ptr,
        N,
        R,
        stride_bs,
        stride_bn,
        BLOCK_N: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        # program (m, n-block): y[m, outs] = B[index[m], outs, :] @ t[m], the whole rank in one block
        m = tl.program_id(0)
        outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        out_mask = outs < N
        ranks = tl.arange(0, BLOCK_R)
        rank_mask = ranks < R
        slot = tl.load(index_ptr + m).to(tl.int64)
        t = tl.load(t_ptr + m * R + ranks, mask=rank_mask, other=0.0).to(tl.float32)
        b = tl.load(
            b_ptr + slot * stride_bs + outs[:, None] * stride_bn + ranks[None, :],
            mask=out_mask[:, None] & rank_mask[None, :],
            other=0.0,
        )
        y = tl.sum(b.to(tl.float32) * t[None, :], axis=1)
        # y is (M, N) contiguous
        tl.store(y_ptr + m * N + outs, y.to(y_ptr.dtype.element_ty), mask=out_mask)


def _check(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, index: torch.Tensor) -> None:
    S, R, K = A.shape
    if x.dim() != 2 or x.size(1) != K or B.dim() != 3 or B.size(0) != S or B.size(2) != R:
        raise ValueError(
            f"LoRA shapes: x {tuple(x.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}; "
            "want x (M, K), A (S, R, K), B (S, N, R)"
        )
    if index.shape != (x.size(0),):
        raise ValueError(f"an index of shape {tuple(index.shape)} for {x.size(0)} token rows")


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def shrink(
    x: torch.Tensor, A: torch.Tensor, index: torch.Tensor, x2: torch.Tensor | None = None
) -> torch.Tensor:
    """t (M, R) with t[m] = A[index[m]] @ x[m] (or @ cat(x[m], x2[m]) read in place), rounded to x.dtype:
    the first half of `lora_delta`, for a GEMV that does the second (`serve.kernels.LoraTerm`). The
    kernel: inputs of up to MAX_TOKENS rows (`use_lora_kernels`)."""
    S, R, K = A.shape
    M = x.size(0)
    k1, k2 = x.size(1), 0 if x2 is None else x2.size(1)
    if k1 + k2 != K or (x2 is not None and x2.size(0) != M) or index.shape != (M,):
        raise ValueError(
            f"LoRA shrink shapes: x {tuple(x.shape)}, x2 {None if x2 is None else tuple(x2.shape)}, "
            f"A {tuple(A.shape)}, index {tuple(index.shape)}"
        )
    x, A = _last_contiguous(x), _last_contiguous(A)
    x2 = None if x2 is None else _last_contiguous(x2)
    index = index if index.is_contiguous() else index.contiguous()
    t = torch.empty(M, R, device=x.device, dtype=x.dtype)  # (M, R)
    block_r, block_k, warps = SHRINK_TILE
    _shrink_kernel[(M, triton.cdiv(R, block_r))](
        x,
        x2 if x2 is not None else x,  # not read without HAS_X2
        A,
        index,
        t,
        k1,
        K,
        R,
        x.stride(0),
        x2.stride(0) if x2 is not None else 0,
        A.stride(0),
        A.stride(1),
        HAS_X2=x2 is not None,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        num_warps=warps,
    )
    return t


def _launch(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    R = A.size(1)
    M, N = x.size(0), B.size(1)
    B = _last_contiguous(B)
    index = index if index.is_contiguous() else index.contiguous()
    t = shrink(x, A, index)
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)  # (M, N)
    block_n, warps = EXPAND_TILE
    _expand_kernel[(M, triton.cdiv(N, block_n))](
        t,
        B,
        index,
        y,
        N,
        R,
        B.stride(0),
        B.stride(1),
        BLOCK_N=block_n,
        BLOCK_R=max(16, triton.next_power_of_2(R)),
        num_warps=warps,
    )
    return y


def _stacked_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`lora_delta` for any number of tokens without gathering weights per token: every slot's shrink in
    one matmul, the other slots' ranks zeroed, one matmul over all slots' B (the zeros add nothing). Costs
    S times the (small) LoRA arithmetic, never a (M, R, K) copy."""
    S, R, K = A.shape
    M, N = x.size(0), B.size(1)
    t = F.linear(x, A.reshape(S * R, K)).view(M, S, R)  # every slot's t, rounded as F.linear rounds it
    own = index[:, None] == torch.arange(S, device=index.device)  # (M, S)
    t = t * own[:, :, None].to(t.dtype)  # exact: each row keeps its own slot's ranks
    return F.linear(t.view(M, S * R), B.permute(1, 0, 2).reshape(N, S * R))  # (M, N)


def lora_delta_reference(
    x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """`lora_delta` with torch ops, by its definition: each token's adapter gathered, then two batched
    matmuls. Writes an (M, R, K) and an (M, N, R) copy of the weights: for tests and short inputs."""
    _check(x, A, B, index)
    t = torch.bmm(A[index], x.unsqueeze(-1))  # (M, R, 1), rounded to x.dtype
    return torch.bmm(B[index], t).squeeze(-1)  # (M, N)


def lora_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (M, K) token rows; A (S, R, K) and B (S, N, R) the stacked adapters (scaling already folded into
    B; slot 0 and unused slots hold zeros); index (M,) int64, each in [0, S). Returns (M, N) in x.dtype:
    row m = B[index[m]] @ (A[index[m]] @ x[m]), the intermediate (M, R) rounded to x.dtype as two
    F.linear calls would. The kernels for up to MAX_TOKENS tokens (`use_lora_kernels`) and ranks up to
    MAX_RANK; torch ops otherwise."""
    _check(x, A, B, index)
    if use_lora_kernels(x) and A.size(1) <= MAX_RANK:
        return _launch(x, A, B, index)
    return _stacked_delta(x, A, B, index)


class LoraBank(nn.Module):
    """The stacked LoRA updates of one linear target for S twin slots (`serve.multi_lora`): A (S, R, K),
    B (S, n, R), slot 0 zeros, covering the target's first n output rows (its other rows are adapted by
    no twin this server holds: they get no delta and cost no reads). Batch row b uses slot `rows[b]`.

    `forward(x)`: the (b, T, n) updates of token rows x (b, T, K), for the rows' matmul to add to its
    first n outputs (`add_delta`); `term(x)`: one token's update as a `serve.kernels.LoraTerm`, whose
    expand the token's GEMV does itself (one kernel a target instead of three)."""

    A: torch.Tensor
    B: torch.Tensor
    rows: torch.Tensor

    def __init__(
        self,
        rows: torch.Tensor,
        slots: int,
        rank: int,
        in_features: int,
        out_features: int,
        covered: int,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        dev = rows.device
        self.out_features = out_features
        self.register_buffer("A", torch.zeros(slots, rank, in_features, device=dev, dtype=dtype))
        self.register_buffer("B", torch.zeros(slots, covered, rank, device=dev, dtype=dtype))
        self.register_buffer("rows", rows, persistent=False)  # (max batch,) the one shared by every bank

    @property
    def rank(self) -> int:
        return self.A.size(1)

    @property
    def covered(self) -> int:
        return self.B.size(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b, T, K) → (b, T, n); batch row i is slot rows[i]'s twin
        b, T, K = x.shape
        index = self.rows[:b]  # (b,)
        if T > 1:
            index = index.repeat_interleave(T)  # (b * T,) one per token
        return lora_delta(x.reshape(b * T, K), self.A, self.B, index).view(b, T, -1)

    def term(self, x: torch.Tensor, x2: torch.Tensor | None = None) -> kernels.LoraTerm:
        """Batch row 0's one token x (or cat(x, x2), read in place) as a GEMV's `lora=`."""
        t = shrink(x.reshape(1, -1), self.A, self.rows[:1], None if x2 is None else x2.reshape(1, -1))
        return kernels.LoraTerm(t.view(-1), self.B, self.rows[:1])

    def write(self, slot: int, update: LowRank | None) -> None:
        """Put `update` (None: no update, the base) into `slot`, padding its rank with zeros; its output
        rows past the covered ones must be zero (`fits`)."""
        self.A[slot].zero_()
        self.B[slot].zero_()
        if update is not None:
            r = update.rank
            self.A[slot, :r].copy_(update.A)
            self.B[slot, :, :r].copy_(update.B[: self.covered])

    def fits(self, update: LowRank) -> bool:
        """Whether `update` fits: its rank, input and output widths, nothing past the covered rows."""
        return (
            update.rank <= self.rank
            and update.A.size(1) == self.A.size(2)
            and update.B.size(0) == self.out_features
            and not update.B[self.covered :].any()
        )


def add_delta(out: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
    """`out` plus a bank's `delta` on its first delta.size(-1) features (rounded as `base(x) + lora(x)`)."""
    if delta is None:
        return out
    n = delta.size(-1)
    if n == out.size(-1):
        return out + delta
    return torch.cat((out[..., :n] + delta, out[..., n:]), dim=-1)
