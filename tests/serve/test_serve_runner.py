"""The runner's compiled decode step (torch.compile; CUDA graphs are GPU-only) against the eager one."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import pytest
import torch

from serve.engine import Engine, EngineConfig, GenerationRequest
from serve.model import load_model

PROMPTS = [[11, 42, 7, 99, 5, 23], [300, 2], list(range(40, 71))]


def greedy_tokens(checkpoint: Path, compile: bool, n: int = 16) -> tuple[list[list[int]], Engine]:
    """Three greedy requests: two at once (batch bucket 2), the third once they are done (bucket 1)."""
    engine = Engine(
        partial(load_model, checkpoint, None, torch.device("cpu"), torch.float32),
        EngineConfig(max_batch_size=2, max_seq_length=64, warmup_prompt_tokens=16, compile=compile),
    )
    engine.start()
    try:
        assert engine.wait_ready(300), engine.load_error

        async def drain(prompt: list[int]) -> list[int]:
            out: list[int] = []
            async for chunk in engine.submit(GenerationRequest(prompt, n, ignore_eos=True)).tokens():
                out.extend(chunk)
            return out

        async def run() -> list[list[int]]:
            together = await asyncio.gather(drain(PROMPTS[0]), drain(PROMPTS[1]))
            return [*together, await drain(PROMPTS[2])]

        return asyncio.run(run()), engine
    finally:
        engine.stop()


@pytest.mark.slow
def test_compiled_decode_step_gives_the_eager_tokens(tiny_checkpoint: Path) -> None:
    eager, eager_engine = greedy_tokens(tiny_checkpoint, compile=False)
    marks = eager_engine.stats()["warmup_marks"]  # where the start-up went, stage by stage
    assert (
        list(marks) == ["prefill paths", "first launches"]
        and 0 <= marks["prefill paths"] <= marks["first launches"]
    )
    try:
        compiled, engine = greedy_tokens(tiny_checkpoint, compile=True)
    finally:
        torch._dynamo.reset()  # the compiled step's caches stay out of later tests
    assert engine.compiled and engine.compile_error is None  # the first attempt of the fallback chain
    assert engine.stats()["triton_kernels"] is False  # the Triton kernels run on GPUs only
    assert compiled == eager
    assert [len(out) for out in compiled] == [16, 16, 16]
    marks = engine.stats()["warmup_marks"]  # compiled on a CPU: every bucket, no CUDA graphs
    assert list(marks) == ["prefill paths", "bucket 1", "bucket 2", "first launches"]
    assert list(marks.values()) == sorted(marks.values())
