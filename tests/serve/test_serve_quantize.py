"""`python -m serve --quantize nf4|nf4-dq`: the base in NF4, the adapter applied on top (not merged)."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from serve_helpers import make_settings

from common.nf4 import NF4Linear, is_nf4, is_quantized
from serve.engine import Engine, EngineConfig, GenerationRequest, Sequence
from serve.model import ModelLoadError, load_model
from serve.service import build_service

CPU = torch.device("cpu")
PROMPT = [11, 42, 7, 99, 5, 23, 64, 3]


@pytest.mark.parametrize("mode", ["nf4", "nf4-dq"])
def test_quantized_model_keeps_the_adapter_unmerged_and_close_to_the_merged_one(
    tiny_checkpoint: Path, lora_path: Path, mode: str
) -> None:
    merged = load_model(tiny_checkpoint, lora_path, CPU, torch.float32)
    model = load_model(tiny_checkpoint, lora_path, CPU, torch.float32, quantize=mode)
    assert is_quantized(model) and not is_quantized(merged)
    qkv = model.transformer.h[0].attn.qkv
    assert isinstance(qkv.linear, NF4Linear) and is_nf4(qkv.linear.weight)
    assert qkv.lora_B.abs().sum() > 0 and not qkv.merged  # the adapter, applied on top
    assert not any(p.requires_grad for p in model.parameters())

    base = load_model(tiny_checkpoint, None, CPU, torch.float32)
    x = torch.tensor([PROMPT])
    with torch.no_grad():
        expected, got, without = merged(x), model(x), base(x)
    # NF4 rounding moves the logits a little; the adapter moves them much more
    assert (got - expected).norm() < 0.5 * (without - expected).norm()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.75


def test_engine_decodes_with_an_nf4_base(tiny_checkpoint: Path, lora_path: Path) -> None:
    build = partial(load_model, tiny_checkpoint, lora_path, CPU, torch.float32, quantize="nf4-dq")
    engine = Engine(build, EngineConfig(max_batch_size=2, max_seq_length=64, warmup_prompt_tokens=8))
    engine.start()
    try:
        assert engine.wait_ready(120), engine.load_error

        async def run() -> list[list[int]]:
            seqs: list[Sequence] = [
                engine.submit(GenerationRequest(PROMPT, 10, temperature=0.0, ignore_eos=True))
                for _ in range(2)
            ]
            outs = []
            for seq in seqs:
                out: list[int] = []
                async for chunk in seq.tokens():
                    out.extend(chunk)
                outs.append(out)
            return outs

        first, second = asyncio.run(run())
    finally:
        engine.stop()
    # the KV-cache decode path equals recomputing the whole sequence with the same quantized model
    model = build()
    ids = list(PROMPT)
    with torch.no_grad():
        for _ in range(10):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert first == second == ids[len(PROMPT) :]


def test_settings_and_errors(tiny_checkpoint: Path, lora_path: Path, tmp_path: Path) -> None:
    assert make_settings(tiny_checkpoint, lora_path, quantize="nf4").quantize == "nf4"
    with pytest.raises(ValidationError, match="nf4-dq"):
        make_settings(tiny_checkpoint, lora_path, quantize="int4")
    service = build_service(make_settings(tiny_checkpoint, lora_path, quantize="nf4-dq"))
    assert service.engine is not None  # the model loads when the engine starts
    with pytest.raises(ModelLoadError, match="drop --quantize"):
        build_service(make_settings(tiny_checkpoint, lora_path, quantize="nf4", device="mps"))
