"""The 4-bit GEMVs (`serve.kernels_nf4`) through Triton's interpreter on this CPU (TRITON_INTERPRET=1):
against `F.linear` on torchao's dequantized weight, and the NF4 fused blocks (`serve.blocks_nf4`, LoRA
unmerged) of Falcon's and Llama's kind against litgpt's own NF4 + LoRA decoding, through the engine; the
same kernel on symmetric int4 with group scales; and the kernel compiled for an H200 (sm_90) by Triton's
own compiler, which the interpreter never runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import close, compile_for_sm90
from litgpt import lora
from litgpt.model import GPT
from model_families import (
    ENGINE_PROMPTS,
    check_decodes_like_litgpt,
    engine_greedy_tokens,
    litgpt_greedy,
    random_family_model,
)

from common.nf4 import dequantize, load_quantized_model, quantize_nf4, strip_unused_lora
from serve import kernels, kernels_nf4
from serve.blocks_nf4 import ParallelNF4Block, SequentialNF4Block
from serve.generate import GemvLinear, fuse_blocks, uses_kernels
from serve.kernels_nf4 import (
    byte_tables,
    code_pairs,
    nf4_cat_gemv,
    nf4_gemv,
    nf4_glu_gemv,
    pack_int4,
    pack_nf4,
    prmt_decode,
    stack_cols,
    stack_rows,
    use_nf4_gemv,
)
from serve.low_rank import LowRank

pytest.importorskip("triton")
pytest.importorskip("torchao")


@pytest.fixture
def interpreted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kernels on CPU tensors, through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET)."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets it before triton is imported"
    monkeypatch.setattr(kernels, "cpu_interpreter", True)
    # the interpreter runs a launch's programs one after another: few, large ones for the tiny shapes
    monkeypatch.setattr(kernels_nf4, "TILE", (64, 256, 4))
    monkeypatch.setattr(kernels, "TILE", (64, 512, 4))
    yield


def nf4_weight(n: int, k: int, dq: bool, dtype: torch.dtype, seed: int = 0) -> tuple:
    """(torchao's NF4Tensor, its dequantized weight) of a random (n, k) weight."""
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).to(dtype) / 4
    q = quantize_nf4(weight, double_quant=dq)
    return q, dequantize(q, dtype)


# (rows, columns): ragged both ways (block scalers straddle rows: groups of 50), whole 64-blocks, a
# column count that is no multiple of the 512-wide chunk
SHAPES = [(37, 100), (48, 192), (20, 1030)]


@pytest.mark.parametrize("dq", [False, True], ids=["nf4", "nf4-dq"])
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_packing_keeps_torchaos_codes_and_values(n: int, k: int, dq: bool) -> None:
    q, reference = nf4_weight(n, k, dq, torch.bfloat16)
    packed = pack_nf4(q)
    assert torch.equal(packed.dequantize(), reference)
    assert packed.codes.data_ptr() == q.quantized_data.data_ptr()  # torchao's bytes, not a copy
    if k % 64 == 0:  # every matrix of a 7B: 4 bits a weight, one bf16 scale per 64 (4.25 bits)
        assert packed.group == 64 and packed.nbytes() == n * k // 2 + n * k // 64 * 2 + 16 * 2
    q2, reference2 = nf4_weight(n, k, dq, torch.bfloat16, seed=1)
    assert torch.equal(stack_rows(packed, pack_nf4(q2)).dequantize(), torch.cat((reference, reference2)))
    q3, reference3 = nf4_weight(n, 64, dq, torch.bfloat16, seed=2)
    glued = stack_cols(packed, pack_nf4(q3)).dequantize()
    assert torch.equal(glued, torch.cat((reference, reference3), dim=1))


@pytest.mark.parametrize(
    ("n", "k", "dq", "dtype"),
    [
        (37, 100, False, torch.float32),
        (37, 100, True, torch.bfloat16),
        (48, 192, True, torch.float32),
        (20, 1030, False, torch.bfloat16),
    ],
)
def test_nf4_gemv_is_linear_on_the_dequantized_weight(
    interpreted: None, n: int, k: int, dq: bool, dtype: torch.dtype
) -> None:
    """One token and three (a batched decode step), with bias, LoRA addend, GELU tail and residual."""
    kernels_nf4.TILE = (16, 256, 4)  # several row tiles, the last one partly empty (monkeypatched)
    q, w = nf4_weight(n, k, dq, dtype)
    packed = pack_nf4(q)
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(n, generator=g).to(dtype)
    for tokens in (1, 3):
        x = torch.randn(tokens, 1, k, generator=g).to(dtype)
        assert use_nf4_gemv(x)
        close(nf4_gemv(x, packed), F.linear(x, w), dtype)
        add, residual = (torch.randn(tokens, 1, n, generator=g).to(dtype) for _ in range(2))
        y = F.linear(x, w, bias) + add
        expected = torch.cat((y[..., :7], F.gelu(y[..., 7:], approximate="tanh")), dim=-1) + residual
        got = nf4_gemv(x, packed, bias, gelu_from=7, approximate="tanh", residual=residual, add=add)
        close(got, expected, dtype)
    assert not use_nf4_gemv(torch.randn(17, 1, k))  # a prefill: dequantize and F.linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_and_concatenating_nf4_gemvs(interpreted: None, dtype: torch.dtype) -> None:
    """`act(gate) * up` from a stacked [gate; up] NF4 weight (with LoRA addends), and `[a | b]` read from
    two inputs with a residual (Falcon's output projection), batch 1 and 2."""
    n, k, k2 = 37, 100, 64
    (qg, wg), (qu, wu) = nf4_weight(n, k, True, dtype, 0), nf4_weight(n, k, True, dtype, 1)
    stacked = stack_rows(pack_nf4(qg), pack_nf4(qu))
    q2, w2 = nf4_weight(n, k2, True, dtype, 2)
    glued = stack_cols(pack_nf4(qg), pack_nf4(q2))
    g = torch.Generator().manual_seed(4)
    acts = {"silu": F.silu, "gelu": F.gelu}
    for tokens in (1, 2):
        # outputs near 1: an ulp of a bf16 gate moves act(gate) * up by an ulp, not by ten
        x = (torch.randn(tokens, 1, k, generator=g) / 4).to(dtype)
        add = torch.randn(tokens, 1, 2 * n, generator=g).to(dtype)
        for name, act in acts.items():
            gate, up = (F.linear(x, torch.cat((wg, wu))) + add).chunk(2, dim=-1)
            close(nf4_glu_gemv(x, stacked, None, name, add=add), act(gate) * up, dtype)
        b = torch.randn(tokens, 1, k2, generator=g).to(dtype)
        residual = torch.randn(tokens, 1, n, generator=g).to(dtype)
        expected = F.linear(torch.cat((x, b), -1), torch.cat((wg, w2), 1)) + residual
        close(nf4_cat_gemv(x, b, glued, None, residual), expected, dtype)
    with pytest.raises(ValueError, match="a gated GEMV needs"):
        nf4_glu_gemv(x, pack_nf4(qg), None, "silu")  # 37 rows: no [gate; up]


def test_code_pairs_hold_both_weights_of_a_byte(interpreted: None) -> None:
    """The bf16 kernel's pair table: byte b's entry is table[b >> 4] in the upper 16 bits and table[b & 15]
    in the lower, each an fp32 value once shifted into the upper half; it follows the table's dtype when
    the weight moves (`.to(torch.bfloat16)` after packing in fp32), and the GEMV then uses it."""
    q, w = nf4_weight(20, 128, True, torch.float32)
    packed = pack_nf4(q)
    assert not packed.pairs.any()  # an fp32 table: the kernel gathers table values instead
    packed = packed.to(torch.bfloat16)
    table = packed.table.float()
    pairs = packed.pairs.to(torch.int64) & 0xFFFFFFFF
    upper = ((pairs >> 16) << 16).to(torch.int32).view(torch.float32)
    lower = ((pairs & 0xFFFF) << 16).to(torch.int32).view(torch.float32)
    byte = torch.arange(256)
    assert torch.equal(upper, table[byte >> 4]) and torch.equal(lower, table[byte & 15])
    assert torch.equal(code_pairs(packed.table), packed.pairs)
    x = torch.randn(1, 1, 128, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    close(nf4_gemv(x, packed), F.linear(x, packed.dequantize()), torch.bfloat16)


@pytest.mark.parametrize("kind", ["nf4", "int4"])
def test_the_byte_permute_decode_gives_every_code_its_weight(kind: str) -> None:
    """The GPU's decode without gathers (`PRMT_ASM`, byte permutes of the 16 values' high and low bytes),
    run instruction by instruction in torch on its own selectors and masks: every byte value in every
    position of a code word (and random words) becomes the bf16 bits of table[code] for both of its
    columns, in the order the kernel multiplies them with the input's word pairs."""
    q, _ = nf4_weight(16, 64, False, torch.bfloat16)
    table = pack_nf4(q).table if kind == "nf4" else torch.arange(-8, 8).to(torch.bfloat16)
    tables = byte_tables(table)
    byte = torch.arange(256, dtype=torch.uint8)
    words = torch.stack([byte.roll(k) for k in range(4)], dim=1)  # every byte value in every position
    random = torch.randint(0, 256, (4096, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    codes = torch.cat((words, random))  # (n, 4) bytes, as a row's codes lie in memory
    outputs = prmt_decode(codes.contiguous().view(torch.int32).view(-1), tables)
    columns = torch.stack((codes >> 4, codes & 15), dim=-1).view(-1, 8).long()  # the even column: high nibble
    bits = table.view(torch.int16).long()[columns] & 0xFFFF  # (n, 8)
    for t, got in enumerate(outputs):  # output t: columns 2t (low half) and 2t + 1 (high half)
        assert torch.equal(got, bits[:, 2 * t] | bits[:, 2 * t + 1] << 16), t
    assert not byte_tables(table.float()).any()  # the decode is for bf16 tables only


@pytest.mark.parametrize(
    ("ahead", "split"), [(False, 1), (True, 1), (False, 4)], ids=["load-then-multiply", "prefetch", "split-k"]
)
def test_the_quads_kernel_computes_every_fold(
    interpreted: None, monkeypatch: pytest.MonkeyPatch, ahead: bool, split: int
) -> None:
    """The `quads` kernel (a thread's 16-byte code loads of several rows against one input load; the CPU
    gathers the words the GPU's byte permutes give) on each fold, 1 and 3 tokens: a partial row tile, a
    masked tail of quads, bias + addend + GELU tail + residual, [gate; up], the [a | b] concatenation —
    against F.linear on torchao's dequantized weight, and equal to the `pairs` kernel's output. Split-K:
    320 columns in 4 ranges of one 4-quad chunk — two full, one of 2 quads, one empty — added up by the
    second kernel, which runs the epilogue."""
    monkeypatch.setattr(kernels_nf4, "TILE", (8, 128, 1))  # 4 quads a chunk: 320 columns = 2 + a tail of 2
    monkeypatch.setattr(kernels_nf4, "QUADS_PREFETCH", ahead)
    monkeypatch.setattr(kernels_nf4, "QUADS_SPLIT", split)
    dtype = torch.bfloat16
    n, k, k2 = 37, 320, 192
    (q, w), (qu, wu), (q2, w2) = (nf4_weight(n, kk, True, dtype, s) for s, kk in enumerate((k, k, k2)))
    packed, stacked = pack_nf4(q), stack_rows(pack_nf4(q), pack_nf4(qu))
    glued = stack_cols(pack_nf4(q), pack_nf4(q2))
    g = torch.Generator().manual_seed(5)
    bias = torch.randn(n, generator=g).to(dtype)
    for tokens in (3,) if ahead or split > 1 else (1,):  # a batched step, a batch-1 step
        x = (torch.randn(tokens, 1, k, generator=g) / 4).to(dtype)
        add = torch.randn(tokens, 1, 2 * n, generator=g).to(dtype)
        residual = torch.randn(tokens, 1, n, generator=g).to(dtype)
        b = torch.randn(tokens, 1, k2, generator=g).to(dtype)
        y = F.linear(x, w, bias) + add[..., :n]
        gate, up = (F.linear(x, torch.cat((w, wu))) + add).chunk(2, dim=-1)
        cases = {
            "fused": (
                partial(nf4_gemv, x, packed, bias, gelu_from=7, residual=residual, add=add[..., :n]),
                torch.cat((y[..., :7], F.gelu(y[..., 7:])), dim=-1) + residual,
            ),
            "glu": (partial(nf4_glu_gemv, x, stacked, None, "silu", add=add), F.silu(gate) * up),
            "cat": (
                partial(nf4_cat_gemv, x, b, glued, None, residual),
                F.linear(torch.cat((x, b), -1), torch.cat((w, w2), 1)) + residual,
            ),
        }
        for name, (run, expected) in cases.items():
            monkeypatch.setattr(kernels_nf4, "DECODE", "quads")
            assert kernels_nf4.nf4_decode(packed, x.view(-1, k), k) == "quads"
            got = run()
            close(got, expected, dtype)
            monkeypatch.setattr(kernels_nf4, "DECODE", "pairs")
            torch.testing.assert_close(got, run(), rtol=0.02, atol=0.02, msg=name)
    # where its layout does not hold (K no multiple of 32), the quads decode falls back
    q_odd, _ = nf4_weight(n, 100, True, dtype)
    monkeypatch.setattr(kernels_nf4, "DECODE", "quads")
    assert kernels_nf4.nf4_decode(pack_nf4(q_odd), torch.zeros(1, 100, dtype=dtype), 100) != "quads"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_with_group_scales_runs_on_the_same_kernel(interpreted: None, dtype: torch.dtype) -> None:
    """Symmetric int4, one scale per 32 columns of a row: within half a step of the weight, and the
    GEMV equal to `F.linear` on its dequantized weight."""
    n, k = 37, 96
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(6)).to(dtype)
    packed = pack_int4(weight, group=32)
    w = packed.dequantize()
    step = packed.scales.float().repeat_interleave(32, dim=1)
    assert ((w.float() - weight.float()).abs() <= step / 2 + 1e-2 * weight.float().abs()).all()
    for tokens in (1, 2):
        x = torch.randn(tokens, 1, k, generator=torch.Generator().manual_seed(7)).to(dtype)
        close(nf4_gemv(x, packed), F.linear(x, w), dtype)


def nf4_family_model(family: str, mode: str = "nf4-dq") -> GPT:
    """A tiny random model of `family` with its base in NF4 and a random LoRA adapter on every target
    (q and v of qkv, proj, the MLP), unmerged: litgpt's NF4 + LoRA model, as `serve --quantize` loads it."""
    plain = random_family_model(family, vocab_size=320)  # no padded rows for litgpt to pick
    config = lora.Config(
        **asdict(plain.config), lora_r=4, lora_alpha=8, lora_dropout=0.0,
        lora_query=True, lora_value=True, lora_projection=True, lora_mlp=True,
    )  # fmt: skip
    torch.manual_seed(5)
    model = load_quantized_model(config, plain.state_dict(), mode, "cpu", torch.float32)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, lora.LoRALinear) and module.r > 0:
                module.lora_B.normal_(0.0, 0.2)
    return strip_unused_lora(model).eval().requires_grad_(False)


def test_lora_updates_equal_litgpts_merged_updates() -> None:
    """qkv's update with q and v on (k's rows zero) and grouped queries, and a plain LoRA layer's."""
    model = nf4_family_model("llama-3.1")
    attn = model.transformer.h[0].attn
    for layer in (attn.qkv, attn.proj):
        update = LowRank.of(layer)
        assert update is not None
        torch.testing.assert_close(update.B @ update.A, layer.get_lora_AB())


FAMILY_BLOCKS = {"falcon": ParallelNF4Block, "llama-3.1": SequentialNF4Block}


@pytest.mark.parametrize("family", list(FAMILY_BLOCKS))
def test_nf4_fused_blocks_decode_what_litgpt_decodes(interpreted: None, family: str) -> None:
    """Falcon's parallel and Llama's sequential NF4 blocks with every LoRA target: the logits of litgpt's
    own NF4 + LoRA decoding (prefill, then steps of 3 tokens and of 1, all on the NF4 GEMVs), and the
    engine's greedy tokens (batch buckets 2 and 1) equal to litgpt's `generate`."""
    reference = nf4_family_model(family)

    def build(model: GPT) -> None:
        assert fuse_blocks(model) == model.config.n_layer
        assert all(type(block) is FAMILY_BLOCKS[family] and block.gemv for block in model.transformer.h)
        assert isinstance(model.lm_head, GemvLinear) and uses_kernels(model)

    check_decodes_like_litgpt(reference, build, lambda a, e: close(a, e, torch.float32), steps=2)
    n = 5
    outs, engine = engine_greedy_tokens(reference, n, compile=False)
    assert engine.runner is not None and engine.runner.fused_blocks == reference.config.n_layer
    assert outs == [litgpt_greedy(reference, prompt, n) for prompt in ENGINE_PROMPTS]


COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from serve.kernels_nf4 import _nf4_gemv_kernel, _nf4_quads_kernel, _nf4_split_kernel

INTS = ["M", "N", "K1", "K", "KU", "KQ", "KG", "act_from"]
ALIGNED = ["N", "K1", "K", "KU", "KG"]  # what Triton sees at Falcon-7B's and Llama-3.1-8B's shapes


def ptx(kernel, consts, types, warps):
    # the kernel's PTX for an H200; pointers bf16 but those in `types`, the _ptr and ALIGNED ints 16-aligned
    names = list(kernel.arg_names)
    signature = {
        n: "constexpr" if n in consts else "i32" if n in INTS else types.get(n, "*bf16") for n in names
    }
    attrs = {
        (names.index(n),): [["tt.divisibility", 16]] for n in names if n.endswith("_ptr") or n in ALIGNED
    }
    constexprs = {(names.index(n),): v for n, v in consts.items()}
    source = ASTSource(kernel, signature, constexprs, attrs)
    options = {"num_warps": warps, "num_stages": 3}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]


plain = dict(HAS_X2=False, ACT=0, GLU=False, HAS_BIAS=False, HAS_ADD=False, HAS_RES=False)
folds = [
    plain,
    dict(HAS_X2=False, ACT=3, GLU=True, HAS_BIAS=True, HAS_ADD=True, HAS_RES=False),
    dict(HAS_X2=True, ACT=0, GLU=False, HAS_BIAS=False, HAS_ADD=True, HAS_RES=True),
    dict(HAS_X2=False, ACT=1, GLU=False, HAS_BIAS=True, HAS_ADD=True, HAS_RES=False),
]
pairs = {"lut_ptr": "*i32", "x_ptr": "*i32", "x2_ptr": "*i32"}  # bf16 inputs read as int32 pairs
for decode, variant in [(2, f) for f in folds] + [(1, plain), (0, plain)]:
    unit = 4 if decode == 2 else 1  # the codes as bytes or (prmt) as int32 words
    consts = dict(GU=32 // unit, BLOCK_N=2, G=16, DECODE=decode, X_PAIRS=True, **variant)
    text = ptx(_nf4_gemv_kernel, consts, {"q_ptr": "*i32" if unit == 4 else "*u8", **pairs}, 4)
    # the codes: evict-first loads (16-byte vectors but for prmt, whose int32 words are read one a
    # thread to share the input's layout); PRMT_ASM's mask selector marks the prmt decode
    loads = "ld.global.L1::evict_first.L2::cache_hint" + ("" if decode == 2 else ".v")
    print(text.count(loads), text.count("0x9D8C"))

quads = dict(QG=2, ASM=True, BLOCK_N=8, C=32, PREFETCH=False)
for variant in folds:
    text = ptx(_nf4_quads_kernel, dict(SPLIT=1, **quads, **variant), {"q_ptr": "*i32", **pairs}, 1)
    # a thread's 4 code words of a row in one 16-byte evict-first load; decoded by the byte permutes
    print(text.count("ld.global.L1::evict_first.L2::cache_hint.v4"), text.count("0x9D8C"))

# split-K: the quads kernel storing fp32 partial sums, and the kernel adding them up (gated: both halves)
sums = {"ws_ptr": "*fp32"}
text = ptx(_nf4_quads_kernel, dict(SPLIT=4, **quads, **folds[1]), {"q_ptr": "*i32", **pairs, **sums}, 1)
epilogue = {k: v for k, v in folds[1].items() if k != "HAS_X2"}
reduce_text = ptx(_nf4_split_kernel, dict(SPLIT=4, BLOCK_N=256, **epilogue), sums, 4)
print(text.count("st.global.b32"), reduce_text.count("ld.global"))
"""


def test_the_kernel_compiles_for_an_h200(tmp_path: Path) -> None:
    """Every fold of the kernel through Triton's compiler to sm_90 PTX (no GPU needed), for each decode:
    the codes read evict-first (as 16-byte vectors for the gathering decodes), the byte-permute decode's
    inline PTX assembled — the interpreter runs none of that; and every fold of the quads kernel, its
    codes in 16-byte loads."""
    counts = compile_for_sm90(COMPILE_FOR_SM90, tmp_path)
    counts, quads, (partials, reduce_loads) = counts[:12], counts[12:20], counts[20:]
    assert partials >= 1 and reduce_loads >= 1, counts[20:]  # split-K: fp32 sums stored, then loaded
    loads, permutes = counts[0::2], counts[1::2]
    assert len(loads) == 6 and all(c >= 1 for c in loads), counts
    assert all(p >= 1 for p in permutes[:4]) and permutes[4:] == [0, 0], counts  # PRMT_ASM: decode 2 only
    # the quads kernel, 8 rows a program: 8 vector loads of codes a chunk (16 for [gate; up]), each of its
    # 32 code words a thread decoded by PRMT_ASM
    assert len(quads) == 8, quads
    for variant, (vectors, masks) in enumerate(zip(quads[0::2], quads[1::2], strict=True)):
        rows = 16 if variant == 1 else 8  # folds[1] is the gated one
        assert vectors >= rows and masks >= 4 * rows, quads
