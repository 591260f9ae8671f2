"""The Triton kernels of one-token decoding, run by Triton's interpreter on this CPU (TRITON_INTERPRET=1):
each against the PyTorch it replaces, and the whole fused model against litgpt's own decoding."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from litgpt.model import GPT

from finetune.tiny import tiny_config
from serve import kernels
from serve.generate import (
    GemvLinear,
    ParallelBlock,
    decode_logits,
    fuse_parallel_blocks,
    prefill,
    setup_caches,
)

pytest.importorskip("triton")  # installed with the dev extra; the GPU box has it with torch

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture
def interpreted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kernels on CPU tensors, through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET)."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets it before triton is imported"
    monkeypatch.setattr(kernels, "cpu_interpreter", True)
    yield


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    # bf16: the kernels round where the modules round, but sum in another order (1-2 ulps of the output)
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 0.07, "rtol": 0.02}
    torch.testing.assert_close(actual.float(), expected.float(), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_kernels_compute_what_the_modules_compute(interpreted: None, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    n, c, i = 37, 600, 1100  # no multiples of the 4 x 512 tile: the masks matter
    x = torch.randn(1, 1, c, dtype=dtype)
    w, b = torch.randn(n, c, dtype=dtype), torch.randn(n, dtype=dtype)
    assert kernels.use_gemv(x) and not kernels.use_gemv(torch.randn(2, 1, c))
    close(kernels.gemv(x, w), F.linear(x, w), dtype)
    close(kernels.gemv(x, w, b), F.linear(x, w, b), dtype)
    for approximate in ("none", "tanh"):  # [qkv, gelu(fc)]: GELU on the output rows from 15 on
        y = F.linear(x, w, b)
        expected = torch.cat((y[..., :15], F.gelu(y[..., 15:], approximate=approximate)), dim=-1)
        close(kernels.gemv(x, w, b, gelu_from=15, approximate=approximate), expected, dtype)
    heads, act = torch.randn(1, 1, c, dtype=dtype), torch.randn(1, 1, i, dtype=dtype)
    w2, residual = torch.randn(n, c + i, dtype=dtype), torch.randn(1, 1, n, dtype=dtype)
    expected = F.linear(torch.cat((heads, act), -1), w2, b) + residual
    close(kernels.cat_gemv(heads, act, w2, b, residual), expected, dtype)
    close(kernels.cat_gemv(heads, act, w2, None, residual), expected - b, dtype)
    with pytest.raises(ValueError, match="600 \\+ 1100 values for a 37x600 weight"):
        kernels.cat_gemv(heads, act, w, None, residual)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_attention_matches_masked_softmax_attention(interpreted: None, dtype: torch.dtype) -> None:
    """Two key/value groups of 20 query heads (two head blocks, one partly empty), batch rows at their own
    positions (one past the first key block), keys beyond a row's position ignored."""
    torch.manual_seed(0)
    B, groups, per_group, S, hs = 3, 2, 20, 150, 32
    q = torch.randn(B, groups * per_group, 1, hs, dtype=dtype)
    k, v = (torch.randn(B, groups, S, hs, dtype=dtype) for _ in range(2))
    pos = torch.tensor([0, 70, 149])
    mask = (torch.arange(S)[None, :] <= pos[:, None]).view(B, 1, 1, S)
    assert kernels.attention_supported(q, k)
    out = kernels.decode_attention(q, k, v, mask, scale=0.3)
    kk, vv = (t.float().repeat_interleave(per_group, dim=1) for t in (k, v))
    att = (q.float() @ kk.transpose(-1, -2) * 0.3).masked_fill(~mask, float("-inf"))
    expected = (torch.softmax(att, dim=-1) @ vv).transpose(1, 2)  # (B, 1, nh_q, hs)
    close(out, expected, dtype)
    # what lies past a row's position does not matter
    k[0, :, 1:], v[0, :, 1:] = 1e4, -1e4
    close(kernels.decode_attention(q, k, v, mask, scale=0.3)[0], expected[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernel_path_decodes_what_litgpt_decodes(interpreted: None, dtype: torch.dtype) -> None:
    """Fused blocks + all kernels against litgpt's own KV-cache decoding of one request: the request is
    prefilled into slots 0 and 2 of 3 and decoded three at a time (slot 1 elsewhere) and alone."""
    torch.manual_seed(0)
    reference = GPT(tiny_config(300)).to(dtype).eval()
    ours = copy.deepcopy(reference)
    fuse_parallel_blocks(ours)
    assert all(isinstance(block, ParallelBlock) and block.gemv for block in ours.transformer.h)
    assert isinstance(ours.lm_head, GemvLinear)
    reference.set_kv_cache(batch_size=1, max_seq_length=40)
    setup_caches(ours, 3, 40)
    prompt = torch.randint(0, 300, (9,))
    ones = torch.ones(1)
    with torch.no_grad():
        reference(prompt.view(1, -1), torch.arange(9))
        for slot in (0, 2):
            prefill(ours, prompt, slot, ones, ones)
        for position in range(9, 13):
            token = 7 + position
            expected = reference(torch.tensor([[token]]), torch.tensor([position]))[0, -1, :300]
            tokens = torch.tensor([[token], [2], [token]])
            positions = torch.tensor([[position], [0], [position]])
            three = decode_logits(ours, tokens, positions)  # batch 3: attention kernel, torch matmuls
            close(three[0], expected, dtype)
            close(three[2], expected, dtype)
            one = decode_logits(ours, tokens[:1], positions[:1])[0]  # batch 1 (slot 0): every kernel
            close(one, expected, dtype)
