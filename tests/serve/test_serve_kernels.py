"""The Triton kernels of one-token decoding, run by Triton's interpreter on this CPU (TRITON_INTERPRET=1):
each against the PyTorch it replaces, and the whole fused model of every served family (Falcon's
parallel blocks, the Llama kind's sequential ones) against litgpt's own decoding."""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import close
from litgpt.generate.base import generate
from litgpt.model import GPT
from model_families import FUSED_FAMILIES, check_decodes_like_litgpt, random_family_model

from serve import kernels
from serve.engine import Engine, EngineConfig, GenerationRequest
from serve.generate import (
    FusedBlock,
    GemvLinear,
    fuse_blocks,
    uses_kernels,
)

pytest.importorskip("triton")  # installed with the dev extra; the GPU box has it with torch

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture
def interpreted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kernels on CPU tensors, through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET)."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets it before triton is imported"
    monkeypatch.setattr(kernels, "cpu_interpreter", True)
    yield


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
def test_gated_and_residual_gemvs_compute_what_the_modules_compute(
    interpreted: None, dtype: torch.dtype
) -> None:
    """A gated MLP's `act(gate) * up` from one stacked `[gate; up]` weight (SwiGLU, GeGLU), and a GEMV
    adding a residual (the attention output projection of a sequential block)."""
    torch.manual_seed(0)
    n, c = 37, 600  # no multiples of the 4 x 512 tile: the masks matter
    x = torch.randn(1, 1, c, dtype=dtype)
    w, b = torch.randn(2 * n, c, dtype=dtype) / 10, torch.randn(2 * n, dtype=dtype)
    acts = {
        "silu": F.silu,
        "gelu": F.gelu,
        "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"),
    }
    for name, act in acts.items():
        for bias in (None, b):
            gate, up = F.linear(x, w, bias).chunk(2, dim=-1)
            close(kernels.glu_gemv(x, w, bias, name), act(gate) * up, dtype)
    with pytest.raises(ValueError, match="a gated GEMV needs"):
        kernels.glu_gemv(x, w[1:], None, "silu")
    residual = torch.randn(1, 1, n, dtype=dtype)
    close(kernels.gemv(x, w[:n], b[:n], residual=residual), F.linear(x, w[:n], b[:n]) + residual, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemvs_add_a_per_token_addend_before_the_activation(interpreted: None, dtype: torch.dtype) -> None:
    """An unmerged LoRA adapter's delta added to the linear output (rounded as `base(x) + lora(x)`),
    before the GELU tail, the gated product (a 2N-wide `[gate; up]` addend) and the residual."""
    torch.manual_seed(0)
    n, c, i = 37, 600, 1100  # no multiples of the 4 x 512 tile: the masks matter
    x = torch.randn(1, 1, c, dtype=dtype)
    w, b = torch.randn(2 * n, c, dtype=dtype) / 10, torch.randn(2 * n, dtype=dtype)
    add, residual = torch.randn(1, 1, 2 * n, dtype=dtype), torch.randn(1, 1, n, dtype=dtype)
    close(kernels.gemv(x, w, b, add=add), F.linear(x, w, b) + add, dtype)
    for approximate in ("none", "tanh"):
        y = F.linear(x, w[:n], b[:n]) + add[..., :n]
        expected = torch.cat((y[..., :15], F.gelu(y[..., 15:], approximate=approximate)), dim=-1) + residual
        got = kernels.gemv(x, w[:n], b[:n], 15, approximate, residual, add[..., :n])
        close(got, expected, dtype)
    small = x / 8  # gate and up near 1: an ulp of a bf16 gate moves act(gate) * up by an ulp, not by ten
    for bias in (None, b):
        gate, up = (F.linear(small, w, bias) + add).chunk(2, dim=-1)
        close(kernels.glu_gemv(small, w, bias, "silu", add=add), F.silu(gate) * up, dtype)
    heads, act = torch.randn(1, 1, c, dtype=dtype), torch.randn(1, 1, i, dtype=dtype)
    w2 = torch.randn(n, c + i, dtype=dtype)
    expected = F.linear(torch.cat((heads, act), -1), w2, b[:n]) + add[..., :n] + residual
    close(kernels.cat_gemv(heads, act, w2, b[:n], residual, add=add[..., :n]), expected, dtype)
    with pytest.raises(ValueError, match="an addend of 37 values for a 74x600 weight"):
        kernels.glu_gemv(x, w, b, "silu", add=add[..., :n])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("groups", "per_group", "hs"), [(2, 20, 32), (2, 4, 128), (3, 1, 16)])
def test_decode_attention_matches_masked_softmax_attention(
    interpreted: None, dtype: torch.dtype, groups: int, per_group: int, hs: int
) -> None:
    """Key/value groups of several query heads (multi-query: Falcon's 71 a group, two head blocks, one
    partly empty; grouped: Llama-3's 4 of head size 128) and plain multi-head attention, batch rows at
    their own positions (one past the first key block), keys beyond a row's position ignored."""
    torch.manual_seed(0)
    B, S = 3, 150
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
@pytest.mark.parametrize("family", FUSED_FAMILIES)
def test_every_familys_kernel_path_decodes_what_litgpt_decodes(
    interpreted: None, family: str, dtype: torch.dtype
) -> None:
    """Each family's fused blocks with every kernel (GEMVs with their epilogues, the LM head, the decode
    attention) against litgpt's own KV-cache decoding of one request: prefilled into slots 0 and 2 of 3
    and decoded three at a time (attention kernel, torch matmuls) and alone (every kernel)."""
    reference = random_family_model(family, dtype=dtype)

    def build(model: GPT) -> None:
        assert fuse_blocks(model) == model.config.n_layer
        assert all(isinstance(block, FusedBlock) and block.gemv for block in model.transformer.h)
        assert isinstance(model.lm_head, GemvLinear)

    ours = check_decodes_like_litgpt(reference, build, lambda a, e: close(a, e, dtype), steps=2)
    assert all(block.attn.attention_kernel for block in ours.transformer.h)


@pytest.mark.slow
def test_engine_with_the_kernels_generates_litgpt_greedy_tokens(interpreted: None) -> None:
    """The engine on a tiny Llama-shaped model with every kernel on (its batch-1 steps run them): the
    greedy tokens of litgpt's own `generate`."""
    reference = random_family_model("llama-3.1", vocab_size=320)  # no padded rows for litgpt to pick
    prompts, n = [[5, 17, 99, 3, 250], [200, 2]], 6
    engine = Engine(
        lambda: copy.deepcopy(reference),
        EngineConfig(max_batch_size=2, max_seq_length=32, warmup_prompt_tokens=8, compile=False),
    )
    engine.start()
    try:
        assert engine.wait_ready(300), engine.load_error
        assert engine.stats()["fused_blocks"] == reference.config.n_layer
        assert engine.runner is not None and uses_kernels(engine.runner.model)

        async def drain(prompt: list[int]) -> list[int]:
            seq = engine.submit(GenerationRequest(prompt, n, temperature=0.0, ignore_eos=True))
            return [t async for chunk in seq.tokens() for t in chunk]

        outs = [asyncio.run(drain(prompt)) for prompt in prompts]  # one at a time: batch 1, the GEMVs
    finally:
        engine.stop()
    for prompt, out in zip(prompts, outs, strict=True):
        model = copy.deepcopy(reference)
        model.max_seq_length = len(prompt) + n
        model.set_kv_cache(batch_size=1)
        want = generate(model, torch.tensor(prompt), len(prompt) + n, temperature=0.0, include_prompt=False)
        assert out == want.tolist()


@pytest.mark.parametrize("module", ["serve.kernels", "serve.kernels_nf4", "serve.kernels_lora"])
def test_kernel_constants_survive_inductors_copy_of_the_kernels(module: str) -> None:
    """A compiled graph calling these kernels gets their source copied by Inductor into its module, each
    constexpr global as `NAME = tl.constexpr(repr(value))` inside a triple-quoted string literal
    (torch/_inductor/codegen/wrapper.py). A string constant with a newline — PRMT_ASM once — came out as a
    real newline inside a quote, the generated module failed to import and the NF4 engine would not
    compile on the GPU. Every constant must read back as itself after that round trip."""
    import ast
    import importlib

    triton = pytest.importorskip("triton")
    mod = importlib.import_module(module)
    constants = {n: v for n, v in vars(mod).items() if isinstance(v, triton.language.constexpr)}
    if module == "serve.kernels_nf4":
        assert "_PRMT" in constants  # the constant that broke
    for name, constant in constants.items():
        line = f"{name} = tl.constexpr({constant.value!r})"
        generated = ast.literal_eval("'''" + line + "'''")  # the module text Inductor writes
        tree = ast.parse(generated)  # raises SyntaxError as the import did
        assert ast.literal_eval(tree.body[0].value.args[0]) == constant.value, name  # type: ignore[attr-defined]
