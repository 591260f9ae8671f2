"""Triton kernels for one-token decoding (batch 1), where a step is a string of matrix-vector products.

At batch 1 the GPU's time goes to streaming the weights; cuBLAS's GEMV kernels reached 2.7 TB/s on
an H100 at Falcon-7B's shapes, this one about 2.9 (a 4-row tile a program, 512-wide K chunks, loads
marked evict-first). It also takes the work of the kernels around it, each of which costs a launch gap
and a tail inside the CUDA graph:

- `norm_gemv`: LayerNorm of the input in the prologue (every program recomputes the row statistics
  of the one input vector from L2), then `W @ norm(x)`;
- `gelu_gemv`: `W @ cat(a, gelu(b)) + residual`: the concatenation, the GELU and the residual add
  of Falcon's parallel block happen while loading / storing;
- `gemv`: plain `W @ x` (the LM head).

Rounding follows the unfused modules (the normed input, the GELU output and the matmul output are
rounded to the activation dtype where the eager model rounds them). Used only for a single token on
a CUDA device (`use_gemv`); everything else takes `F.linear`. With `TRITON_INTERPRET=1` the kernels
run on CPU tensors (the tests do that).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU install has no Triton: use_gemv() is False and nothing here is called
    triton = None

BLOCK_N = 4
BLOCK_K = 512
NUM_WARPS = 4
NUM_STAGES = 3
GELU_MODES = {"none": 1, "tanh": 2}


def available() -> bool:
    return triton is not None


def use_gemv(x: torch.Tensor) -> bool:
    """Whether the Triton path serves this input: one token, on CUDA (or anywhere under the interpreter)."""
    if triton is None or x.numel() != x.size(-1):
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _gelu(v, MODE: tl.constexpr):
        if MODE == 1:  # erf, as F.gelu(approximate="none")
            return 0.5 * v * (1.0 + tl.erf(v * 0.7071067811865476))
        else:  # tanh approximation
            inner = 0.7978845608028654 * (v + 0.044715 * v * v * v)
            return 0.5 * v * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))

    @triton.jit
    def _gemv_kernel(
        x_ptr,
        x2_ptr,
        w_ptr,
        bias_ptr,
        res_ptr,
        ln_w_ptr,
        ln_b_ptr,
        y_ptr,
        N,
        K1,
        K,
        eps,
        NORM: tl.constexpr,
        HAS_LN_B: tl.constexpr,
        GELU: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_RES: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        # y[rows] = W[rows, :] @ input (+ bias) (+ res); input = norm(x), or cat(x[:K1], gelu(x2)), or x
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        dtype = y_ptr.dtype.element_ty
        if NORM:  # LayerNorm statistics of x (K values), two passes in fp32
            total = tl.zeros([BLOCK_K], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                total += tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
            mean = tl.sum(total, axis=0) / K
            sq = tl.zeros([BLOCK_K], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                d = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32) - mean
                sq += tl.where(cols < K, d * d, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(sq, axis=0) / K + eps)
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_mask = cols < K
            if GELU != 0:
                first = tl.load(x_ptr + cols, mask=cols < K1, other=0.0).to(tl.float32)
                second = tl.load(x2_ptr + (cols - K1), mask=(cols >= K1) & col_mask, other=0.0).to(tl.float32)
                second = _gelu(second, GELU).to(dtype).to(tl.float32)
                a = tl.where(cols < K1, first, second)
            else:
                a = tl.load(x_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
                if NORM:
                    a = (a - mean) * rstd * tl.load(ln_w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
                    if HAS_LN_B:
                        a += tl.load(ln_b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
                    a = a.to(dtype).to(tl.float32)
            w = tl.load(
                w_ptr + rows[:, None] * K + cols[None, :],
                mask=row_mask[:, None] & col_mask[None, :],
                other=0.0,
                eviction_policy="evict_first",  # read once per step: keep L2 for the activations
            )
            acc += w.to(tl.float32) * a[None, :]
        y = tl.sum(acc, axis=1)
        if HAS_BIAS:
            y += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
        if HAS_RES:
            y = y.to(dtype).to(tl.float32) + tl.load(res_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, y.to(dtype), mask=row_mask)


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    x2: torch.Tensor | None = None,
    gelu: str | None = None,
    residual: torch.Tensor | None = None,
    norm: torch.nn.LayerNorm | None = None,
) -> torch.Tensor:
    N, K = weight.shape
    out_shape = (*x.shape[:-1], N)
    x = x.reshape(-1)
    k1 = x.numel()
    if x2 is not None:
        x2 = x2.reshape(-1)
    k2 = 0 if x2 is None else x2.numel()
    if k1 + k2 != K:
        raise ValueError(f"an input of {k1} + {k2} values for a {N}x{K} weight")
    y = torch.empty(N, device=x.device, dtype=x.dtype)
    dummy = x  # pointer arguments a variant does not read
    ln_w = norm.weight if norm is not None else None
    ln_b = norm.bias if norm is not None else None
    _gemv_kernel[(triton.cdiv(N, BLOCK_N),)](
        x,
        x2 if x2 is not None else dummy,
        weight,
        bias if bias is not None else dummy,
        residual.reshape(-1) if residual is not None else dummy,
        ln_w if ln_w is not None else dummy,
        ln_b if ln_b is not None else dummy,
        y,
        N,
        k1,
        K,
        norm.eps if norm is not None else 0.0,
        NORM=norm is not None,
        HAS_LN_B=ln_b is not None,
        GELU=0 if gelu is None else GELU_MODES[gelu],
        HAS_BIAS=bias is not None,
        HAS_RES=residual is not None,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        num_warps=NUM_WARPS,
        num_stages=NUM_STAGES,
    )
    return y.view(out_shape)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for one token."""
    return _launch(x, weight, bias)


def norm_gemv(
    x: torch.Tensor, norm: torch.nn.LayerNorm, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.linear(norm(x), weight, bias)` for one token; `norm` a LayerNorm."""
    return _launch(x, weight, bias, norm=norm)


def gelu_gemv(
    a: torch.Tensor,
    b: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    approximate: str = "none",
) -> torch.Tensor:
    """`F.linear(cat(a, gelu(b)), weight, bias) + residual` for one token."""
    return _launch(a, weight, bias, x2=b, gelu=approximate, residual=residual)


def reference_gelu_gemv(
    a: torch.Tensor,
    b: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    approximate: str = "none",
) -> torch.Tensor:
    """What `gelu_gemv` computes, in PyTorch (any shape, any device)."""
    return F.linear(torch.cat((a, F.gelu(b, approximate=approximate)), dim=-1), weight, bias) + residual
