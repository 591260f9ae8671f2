"""Gathered multi-LoRA (`serve.kernels_lora`): the shrink and expand kernels through Triton's interpreter
on this CPU (TRITON_INTERPRET=1) against the gather + bmm reference, the torch path of long inputs, and
that each token row goes through its own adapter; the batch-1 GEMVs adding a `LoraTerm` (the expand in
their epilogue) as they add the same delta given whole; and the kernels compiled for an H200 (sm_90) by
Triton's own compiler, which the interpreter never runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import close, compile_for_sm90

from serve import kernels, kernels_lora
from serve.kernels import LoraTerm
from serve.kernels_lora import lora_delta, lora_delta_reference, shrink, use_lora_kernels

pytest.importorskip("triton")

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture
def interpreted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kernels on CPU tensors, through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET)."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets it before triton is imported"
    monkeypatch.setattr(kernels, "cpu_interpreter", True)
    yield


def adapters(
    slots: int, rank: int, k: int, n: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked adapters A (S, R, K), B (S, N, R) with slot 0 zero (the base model)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(slots, rank, k, generator=g) / k**0.5
    B = torch.randn(slots, n, rank, generator=g)
    A[0], B[0] = 0, 0
    return A.to(dtype), B.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", [8, 12])
def test_kernels_compute_the_gathered_reference(interpreted: None, dtype: torch.dtype, rank: int) -> None:
    """One token, a few and a full bucket, adapters mixed (slot 0's rows zero); K and N ragged against the
    tiles (512-wide K chunks, 64 outputs a program) and R not a power of two at 12."""
    k, n = 600, 100
    A, B = adapters(4, rank, k, n, dtype)
    g = torch.Generator().manual_seed(1)
    for m in (1, 3, 16):
        x = torch.randn(m, k, generator=g).to(dtype)
        index = torch.randint(0, 4, (m,), generator=g)
        index[0] = 0
        assert use_lora_kernels(x)
        got = lora_delta(x, A, B, index)
        assert got.shape == (m, n) and got.dtype == dtype
        close(got, lora_delta_reference(x, A, B, index), dtype)
        assert torch.equal(got[0], torch.zeros(n, dtype=dtype))  # slot 0: the base model, no delta


@pytest.mark.parametrize("dtype", DTYPES)
def test_index_picks_each_rows_adapter(interpreted: None, dtype: torch.dtype) -> None:
    """Rows through different adapters differ; rows all through adapter s equal that adapter alone as two
    `F.linear` calls (kernels and torch path)."""
    k, n, rank = 96, 40, 8
    A, B = adapters(3, rank, k, n, dtype)
    x = torch.randn(1, k).to(dtype).expand(4, k).contiguous()  # the same token four times
    got = lora_delta(x, A, B, torch.tensor([1, 2, 1, 2]))
    assert torch.equal(got[0], got[2]) and torch.equal(got[1], got[3])
    assert not torch.allclose(got[0].float(), got[1].float(), atol=0.1)
    x = torch.randn(5, k).to(dtype)
    for s in (1, 2):
        expected = F.linear(F.linear(x, A[s]), B[s])
        close(lora_delta(x, A, B, torch.full((5,), s)), expected, dtype)
        close(lora_delta_reference(x, A, B, torch.full((5,), s)), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_inputs_take_the_torch_path(
    interpreted: None, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prefill's rows (more than MAX_TOKENS) and a rank over MAX_RANK: torch ops, the reference's
    values."""
    k, n = 72, 50
    A, B = adapters(5, 12, k, n, dtype)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4096, k, generator=g).to(dtype)
    index = torch.randint(0, 5, (4096,), generator=g)
    assert not use_lora_kernels(x)
    close(lora_delta(x, A, B, index), lora_delta_reference(x, A, B, index), dtype)
    monkeypatch.setattr(kernels_lora, "MAX_RANK", 8)  # R = 12 past it: the torch path for 3 tokens
    close(lora_delta(x[:3], A, B, index[:3]), lora_delta_reference(x[:3], A, B, index[:3]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_shrink_reads_two_inputs_as_one(interpreted: None, dtype: torch.dtype) -> None:
    """`shrink(x, A, index, x2)` is the shrink of cat(x, x2), read where the two lie (K ragged at the
    seam of a 512-wide chunk)."""
    A, _ = adapters(3, 8, 700, 4, dtype)
    g = torch.Generator().manual_seed(3)
    x, x2 = torch.randn(2, 500, generator=g).to(dtype), torch.randn(2, 200, generator=g).to(dtype)
    index = torch.tensor([2, 1])
    got = shrink(x, A, index, x2)
    torch.testing.assert_close(got, shrink(torch.cat((x, x2), dim=1), A, index))
    close(got, torch.bmm(A[index], torch.cat((x, x2), 1).unsqueeze(-1)).squeeze(-1), dtype)
    with pytest.raises(ValueError, match="LoRA shrink shapes"):
        shrink(x, A, index, x2[:, :10])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemvs_add_a_lora_term_as_they_add_its_delta(interpreted: None, dtype: torch.dtype) -> None:
    """The batch-1 GEMVs given `lora=LoraTerm(t, B, slot)` (B covering the weight's first rows only)
    give what they give with `add=` the whole delta (zero past the covered rows), for each slot; slot 0
    (zeros) leaves the plain GEMV's output; the GLU's gate and up rows, the GELU tail and the residual
    as with `add`."""
    torch.manual_seed(0)
    n, c, i, rank = 37, 600, 1100, 12
    x = torch.randn(1, 1, c, dtype=dtype) / 8
    w, b = torch.randn(2 * n, c, dtype=dtype) / 10, torch.randn(2 * n, dtype=dtype)
    residual = torch.randn(1, 1, n, dtype=dtype)
    heads, act = torch.randn(1, 1, c, dtype=dtype), torch.randn(1, 1, i, dtype=dtype)
    w2 = torch.randn(n, c + i, dtype=dtype) / 10

    def term_and_add(
        k: int, rows: int, covered: int, s: int, x_in: torch.Tensor
    ) -> tuple[LoraTerm, torch.Tensor]:
        A, B = adapters(3, rank, k, covered, dtype, seed=k + covered)
        slot = torch.tensor([s])
        t = shrink(x_in.reshape(1, -1), A, slot)
        delta = torch.zeros(rows, dtype=dtype)
        delta[:covered] = lora_delta(x_in.reshape(1, -1), A, B, slot)[0]
        return LoraTerm(t.view(-1), B.contiguous(), slot), delta.view(1, 1, rows)

    for s in (0, 2):
        term, add = term_and_add(c, n, 20, s, x)  # the first 20 of 37 rows
        torch.testing.assert_close(
            kernels.gemv(x, w[:n], b[:n], lora=term), kernels.gemv(x, w[:n], b[:n], add=add)
        )
        if s == 0:
            torch.testing.assert_close(
                kernels.gemv(x, w[:n], b[:n], lora=term), kernels.gemv(x, w[:n], b[:n])
            )
        got = kernels.gemv(x, w[:n], b[:n], 15, "tanh", residual, lora=term)
        torch.testing.assert_close(got, kernels.gemv(x, w[:n], b[:n], 15, "tanh", residual, add=add))
        for covered in (n + 5, 9):  # into the up rows; gate rows only
            term, add = term_and_add(c, 2 * n, covered, s, x)
            got = kernels.glu_gemv(x, w, b, "silu", lora=term)
            torch.testing.assert_close(got, kernels.glu_gemv(x, w, b, "silu", add=add))
        term, add = term_and_add(c + i, n, n, s, torch.cat((heads, act), -1))
        got = kernels.cat_gemv(heads, act, w2, b[:n], residual, lora=term)
        torch.testing.assert_close(got, kernels.cat_gemv(heads, act, w2, b[:n], residual, add=add))
    assert not torch.equal(
        kernels.gemv(x, w[:n], b[:n], lora=term_and_add(c, n, n, 1, x)[0]), kernels.gemv(x, w[:n], b[:n])
    )
    too_many = torch.zeros(3, n + 1, rank, dtype=dtype)  # B over more rows than the weight has
    term = LoraTerm(torch.zeros(rank, dtype=dtype), too_many, torch.tensor([1]))
    with pytest.raises(ValueError, match="a LoRA B of shape \\(3, 38, 12\\) for a weight of 37 rows"):
        kernels.gemv(x, w[:n], b[:n], lora=term)


def test_no_kernels_off_the_interpreter_on_cpu() -> None:
    assert not use_lora_kernels(torch.randn(2, 8))  # CPU tensors without the interpreter's flag


def test_bad_shapes_are_refused() -> None:
    A, B = adapters(2, 4, 16, 8, torch.float32)
    with pytest.raises(ValueError, match="want x \\(M, K\\)"):
        lora_delta(torch.randn(3, 15), A, B, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="an index of shape \\(2,\\) for 3 token rows"):
        lora_delta(torch.randn(3, 16), A, B, torch.zeros(2, dtype=torch.long))


COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from serve.kernels import _gemv_kernel
from serve.kernels_lora import EXPAND_TILE, SHRINK_TILE, _expand_kernel, _shrink_kernel

gemv = dict(
    HAS_X2=False, ACT=3, GLU=True, HAS_BIAS=False, HAS_ADD=False, HAS_RES=False, HAS_LORA=True,
    BLOCK_N=2, BLOCK_K=512, BLOCK_R=64,
)
for kernel, consts, warps in [
    (_shrink_kernel, dict(HAS_X2=True, BLOCK_R=SHRINK_TILE[0], BLOCK_K=SHRINK_TILE[1]), SHRINK_TILE[2]),
    (_expand_kernel, dict(BLOCK_N=EXPAND_TILE[0], BLOCK_R=16), EXPAND_TILE[1]),
    (_gemv_kernel, gemv, 4),
]:
    names = list(kernel.arg_names)
    slots = ("index_ptr", "lora_slot_ptr")
    pointer = {n: "*i64" if n in slots else "*bf16" for n in names if n.endswith("_ptr")}
    signature = {n: "constexpr" if n in consts else pointer.get(n, "i32") for n in names}
    constexprs = {(names.index(n),): v for n, v in consts.items()}
    source = ASTSource(kernel, signature, constexprs, {})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    print(len(compiled.asm["ptx"]))
"""


def test_the_kernels_compile_for_an_h200(tmp_path: Path) -> None:
    """The shrink and expand kernels, and the gated GEMV with its LoRA term, through Triton's compiler to
    sm_90 (no GPU needed)."""
    sizes = compile_for_sm90(COMPILE_FOR_SM90, tmp_path)
    assert len(sizes) == 3 and all(size > 0 for size in sizes), sizes
