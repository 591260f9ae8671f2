"""The model worker: limits, the bounded queue, cancellation, timeouts, EOS, load failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch
from serve_helpers import pause_worker

from serve.engine import (
    Engine,
    EngineBusy,
    EngineConfig,
    EngineNotReady,
    GenerationRequest,
    Sequence,
    decode_buckets,
)
from serve.model import load_model
from serve.routes.chat import openai_finish_reason

PROMPT = [11, 42, 7, 99, 5, 23]


def start_engine(checkpoint: Path, **config: int) -> Engine:
    build = partial(load_model, checkpoint, None, torch.device("cpu"), torch.float32)
    engine = Engine(build, EngineConfig(**{"max_seq_length": 128, "warmup_prompt_tokens": 16, **config}))
    engine.start()
    assert engine.wait_ready(60), engine.load_error
    return engine


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Path) -> Iterator[Engine]:
    engine = start_engine(tiny_checkpoint, max_batch_size=2, max_queue=1)
    yield engine
    engine.stop()


async def drain(seq: Sequence) -> list[int]:
    out: list[int] = []
    async for chunk in seq.tokens():
        out.extend(chunk)
    return out


def greedy(n: int, **kw: object) -> GenerationRequest:
    return GenerationRequest(PROMPT, n, temperature=0.0, **kw)  # type: ignore[arg-type]


def test_decode_buckets() -> None:
    assert decode_buckets(1) == [1]
    assert decode_buckets(16) == [1, 2, 4, 8, 16]
    assert decode_buckets(6) == [1, 2, 4, 6]


def test_generates_exactly_max_new_tokens(engine: Engine) -> None:
    async def run() -> tuple[list[int], Sequence]:
        seq = engine.submit(greedy(9, ignore_eos=True))
        return await drain(seq), seq

    out, seq = asyncio.run(run())
    assert len(out) == 9 and seq.end_reason == "length"  # not "timeout"
    assert engine.stats()["active"] == 0


def test_tokens_that_come_with_the_end_while_the_consumer_is_busy_come_out(engine: Engine) -> None:
    """The consumer is still busy with a chunk (a stream sending it to its client) when the last tokens
    and the end of the reply arrive: they come out all the same. Before, `tokens()` saw the end when it
    resumed after its `yield` and returned without them: a streamed reply a piece short of the plain one.
    """

    async def run() -> tuple[list[int], list[int], Sequence]:
        seq = engine.submit(greedy(8, ignore_eos=True))
        # held once the first token is out and before the next step, so the rest comes after `first`
        resume = pause_worker(engine, only_if=lambda: seq.first_token_at is not None)
        tokens = seq.tokens()
        first = await anext(tokens)
        resume.set()
        deadline = time.monotonic() + 30
        while not seq._end_delivered:  # busy until the rest of the reply and its end have come in
            assert time.monotonic() < deadline, engine.stats()
            await asyncio.sleep(0.005)
        rest = [token async for chunk in tokens for token in chunk]
        return first, rest, seq

    first, rest, seq = asyncio.run(run())
    assert seq.end_reason == "length" and len(first) + len(rest) == 8, (first, rest)


def test_eos_ends_the_reply_without_being_sent(engine: Engine) -> None:
    async def run(**kw: object) -> tuple[list[int], Sequence]:
        seq = engine.submit(greedy(8, **kw))
        return await drain(seq), seq

    reference, _ = asyncio.run(run(ignore_eos=True))
    eos = reference[3]  # pretend the 4th greedy token is the end-of-sequence token
    cut = reference.index(eos)
    saved = engine.eos_ids
    engine.eos_ids = frozenset({eos})
    try:
        out, seq = asyncio.run(run())
    finally:
        engine.eos_ids = saved
    assert out == reference[:cut] and seq.end_reason == "stop"


def test_full_engine_answers_busy(engine: Engine) -> None:
    """2 slots + 1 queue place: a fourth request at once is refused; the admitted ones still finish."""

    async def run() -> list[list[int]]:
        seqs = [engine.submit(greedy(30, ignore_eos=True)) for _ in range(3)]
        with pytest.raises(EngineBusy, match="slots are busy"):
            engine.submit(greedy(30))
        return list(await asyncio.gather(*(drain(s) for s in seqs)))

    outs = asyncio.run(run())
    assert [len(o) for o in outs] == [30, 30, 30]
    assert outs[0] == outs[1] == outs[2]  # same greedy request, whichever slot and batch it ran in


def test_cancel_frees_the_slot(engine: Engine) -> None:
    async def run() -> tuple[list[int], Sequence]:
        seq = engine.submit(greedy(100, ignore_eos=True))
        out: list[int] = []
        async for chunk in seq.tokens():
            out.extend(chunk)
            seq.cancel()  # e.g. the client disconnected after its first token
        return out, seq

    out, seq = asyncio.run(run())
    assert seq.end_reason == "cancelled" and len(out) < 100
    assert engine.stats()["active"] == 0


def test_timeout_while_generating_ends_with_length(engine: Engine) -> None:
    async def run() -> tuple[list[int], Sequence]:
        seq = engine.submit(greedy(100, ignore_eos=True, timeout_s=60.0))
        out: list[int] = []
        async for chunk in seq.tokens():
            out.extend(chunk)
            seq.deadline = 0.0  # as if 60 s had passed
        return out, seq

    out, seq = asyncio.run(run())
    assert seq.end_reason == "timeout" and 0 < len(out) < 100
    assert openai_finish_reason(seq.end_reason, stopped_by_text=False) == "length"  # what the client sees
    assert engine.stats()["finished"]["timeout"] >= 1


def test_timeout_in_the_queue_is_busy(engine: Engine) -> None:
    async def run() -> None:
        seq = engine.submit(greedy(4, timeout_s=1e-9))
        await drain(seq)

    with pytest.raises(EngineBusy, match="timed out waiting"):
        asyncio.run(run())


def test_submit_checks_the_request(engine: Engine) -> None:
    async def run(request: GenerationRequest) -> None:
        engine.submit(request)

    with pytest.raises(ValueError, match="empty"):
        asyncio.run(run(GenerationRequest([], 4)))
    with pytest.raises(ValueError, match="exceeds the 128-token cache"):
        asyncio.run(run(GenerationRequest(PROMPT * 20, 10)))
    with pytest.raises(ValueError, match="at least 1"):
        asyncio.run(run(GenerationRequest(PROMPT, 0)))


def test_not_started_and_failed_engines_refuse_work(tiny_checkpoint: Path) -> None:
    idle = Engine(
        lambda: load_model(tiny_checkpoint, None, torch.device("cpu"), torch.float32), EngineConfig()
    )

    async def submit(e: Engine) -> None:
        e.submit(greedy(4))

    with pytest.raises(EngineNotReady, match="loading"):
        asyncio.run(submit(idle))

    def broken() -> torch.nn.Module:
        raise FileNotFoundError("lit_model.pth vanished")

    failed = Engine(broken, EngineConfig())  # type: ignore[arg-type]
    failed.start()
    assert not failed.wait_ready(30)
    assert failed.state == "failed" and "lit_model.pth vanished" in (failed.load_error or "")
    with pytest.raises(EngineNotReady, match="vanished"):
        asyncio.run(submit(failed))


def test_bad_config_is_one_error() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be at least 1; max_queue must be 0 or more"):
        Engine(lambda: None, EngineConfig(max_batch_size=0, max_queue=-1))  # type: ignore[arg-type,return-value]
