"""Batched, chunked prefill against one-at-a-time prefill: the chunk planner, the logits and KV cache of a
chunk of several prompts (one longer than a chunk, continued in the next), the engine's greedy tokens
with prompts arriving together and while others decode, and compile caches reused by a new process."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from litgpt.model import GPT
from model_families import _prefill_logits, random_family_model

from serve.engine import Engine, EngineConfig, GenerationRequest, Sequence
from serve.model import load_model
from serve.prefill import ChunkRow, plan_chunk
from serve.runner import Runner

PROMPTS = [[11, 42, 7, 99, 5, 23], [300, 2], list(range(40, 90)), [7] * 13, list(range(100, 131))]
"""Prompts of different lengths; the third is longer than the chunks of the tests below."""


def test_plan_chunk_packs_rows_under_the_padded_budget() -> None:
    assert plan_chunk([128] * 40, 4096) == [128] * 32  # 32 rows x 128 tokens
    assert plan_chunk([5000, 10], 4096) == [4096]  # a long prompt alone, its rest in the next chunk
    assert plan_chunk([10, 300, 4], 64) == [10, 32]  # two rows of at most 32; the second continues later
    assert plan_chunk([3, 3, 3], 4) == [3]  # a second row would not fit (2 x 3 > 4)
    assert plan_chunk([1] * 10, 4) == [1] * 4
    assert plan_chunk([], 16) == []
    for remaining in ([7, 1, 30, 2, 2, 9], [100], [1, 1, 50]):
        lengths = plan_chunk(remaining, 16)
        assert lengths and len(lengths) * max(lengths) <= 16
        assert all(0 < n <= left for n, left in zip(lengths, remaining, strict=False))


def one_at_a_time(model: GPT, prompts: list[list[int]], first_slot: int) -> list[torch.Tensor]:
    """Each prompt's last-token logits from `serve.generate.prefill`, prompt i into slot first_slot + i."""
    return [_prefill_logits(model, torch.tensor(p), first_slot + i).float() for i, p in enumerate(prompts)]


def chunked(runner: Runner, prompts: list[list[int]], budget: int) -> dict[int, torch.Tensor]:
    """Prompts i into slots i, in chunks planned as the engine plans them; the last-token logits of each."""
    from serve.prefill import chunk_logits, pad_chunk

    done: dict[int, torch.Tensor] = {}
    written = [0] * len(prompts)
    while len(done) < len(prompts):
        pending = [i for i in range(len(prompts)) if written[i] < len(prompts[i])]
        lengths = plan_chunk([len(prompts[i]) - written[i] for i in pending], budget)
        rows = []
        for i, n in zip(pending, lengths, strict=False):
            rows.append(ChunkRow(i, written[i], prompts[i][written[i] : written[i] + n], False))
            written[i] += n
            rows[-1].last = written[i] == len(prompts[i])
        tokens, positions, span = pad_chunk(rows, runner.config.max_seq_length)
        last = [r for r, row in enumerate(rows) if row.last]
        logits = chunk_logits(
            runner.model,
            tokens,
            positions,
            torch.tensor([row.slot for row in rows]),
            span,
            torch.tensor(last, dtype=torch.int64),
            torch.tensor([len(rows[r].tokens) - 1 for r in last], dtype=torch.int64),
        )
        for j, r in enumerate(last):
            done[rows[r].slot] = logits[j]
    return done


@pytest.mark.parametrize("family", ["falcon", "llama-3.1", "gemma"])
@torch.no_grad()
def test_chunks_give_the_one_at_a_time_logits_and_cache(family: str) -> None:
    """Five prompts (2 to 50 tokens) in chunks of 24 padded tokens: the longest spans three chunks,
    others share chunks with it. Same last-token logits and the same keys/values in their slots as
    `serve.generate.prefill`, one prompt at a time into other slots of the same cache."""
    model = random_family_model(family)
    runner = Runner(model, EngineConfig(max_batch_size=10, max_seq_length=96, fuse_blocks=True))
    prompts = [[t % 300 for t in p] for p in PROMPTS]
    reference = one_at_a_time(model, prompts, first_slot=5)
    ours = chunked(runner, prompts, budget=24)
    for i, expected in enumerate(reference):
        torch.testing.assert_close(ours[i], expected, atol=1e-4, rtol=1e-4)
        assert int(ours[i].argmax()) == int(expected.argmax())
        n = len(prompts[i])
        for block in model.transformer.h:
            cache = block.attn.kv_cache
            torch.testing.assert_close(cache.k[i, :, :n], cache.k[5 + i, :, :n], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(cache.v[i, :, :n], cache.v[5 + i, :, :n], atol=1e-5, rtol=1e-5)


def runner_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """One prompt alone: `Runner.prefill` (the whole prompt at once), then batch-1 decode steps."""
    runner = Runner(copy.deepcopy(model), EngineConfig(max_batch_size=1, max_seq_length=128, compile=False))
    out = [runner.prefill(0, prompt, 0.0, 1.0)]
    while len(out) < n:
        out.extend(runner.launch(1).tokens())
    return out


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint: Path) -> GPT:
    return load_model(tiny_checkpoint, None, torch.device("cpu"), torch.float32)


def start_engine(model: GPT, budget: int, slots: int = 4) -> Engine:
    engine = Engine(
        lambda: copy.deepcopy(model),
        EngineConfig(
            max_batch_size=slots,
            max_seq_length=128,
            warmup_prompt_tokens=16,
            prefill_token_budget=budget,
        ),
    )
    engine.start()
    assert engine.wait_ready(120), engine.load_error
    return engine


async def drain(seq: Sequence) -> list[int]:
    return [t async for chunk in seq.tokens() for t in chunk]


def greedy(prompt: list[int], n: int) -> GenerationRequest:
    return GenerationRequest(prompt, n, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("budget", [16, 4096])
def test_engine_tokens_match_one_at_a_time_prefill(tiny_model: GPT, budget: int) -> None:
    """Four prompts at once into 4 slots (budget 16: the 50-token prompt over four chunks, chunks shared
    by several prompts), a fifth arriving while they decode: every reply is the greedy reply of its prompt
    prefilled alone."""
    n = 12
    expected = [runner_greedy(tiny_model, p, n) for p in PROMPTS]
    engine = start_engine(tiny_model, budget)
    try:

        async def run() -> list[list[int]]:
            first = [engine.submit(greedy(p, n)) for p in PROMPTS[:4]]
            tasks = [asyncio.create_task(drain(s)) for s in first]
            while first[0].n_generated < 3:  # the others are decoding
                await asyncio.sleep(0.005)
            late = await drain(engine.submit(greedy(PROMPTS[4], n)))
            return [*await asyncio.gather(*tasks), late]

        outs = asyncio.run(run())
        stats = engine.stats()
    finally:
        engine.stop()
    assert outs == expected
    assert stats["prefill_tokens"] >= sum(map(len, PROMPTS))
    if budget == 16:  # 4 + 2 + 50 + 13 + 31 tokens, at most 16 a chunk
        assert stats["prefill_chunks"] >= 7
    else:  # the first four prompts in one chunk, the late one in another (warm-up aside)
        assert stats["prefill_chunks"] == 2


def test_cancel_during_prefill_frees_the_slot(tiny_model: GPT) -> None:
    """A prompt cancelled while its chunks are being written ends 'cancelled'; its slot serves the next."""
    engine = start_engine(tiny_model, budget=4, slots=1)
    try:

        async def run() -> tuple[Sequence, list[int]]:
            seq = engine.submit(greedy(PROMPTS[2], 4))  # 50 tokens: 13 chunks of 4
            while seq.prefilled == 0:
                await asyncio.sleep(0.001)
            seq.cancel()
            assert await drain(seq) == []
            return seq, await drain(engine.submit(greedy(PROMPTS[0], 4)))

        seq, out = asyncio.run(run())
    finally:
        engine.stop()
    assert seq.end_reason == "cancelled" and len(out) == 4
    assert out == runner_greedy(tiny_model, PROMPTS[0], 4)


CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from functools import partial
    from pathlib import Path
    from serve.engine import Engine, EngineConfig
    from serve.model import load_model

    checkpoint, cache = sys.argv[1], sys.argv[2]
    engine = Engine(
        partial(load_model, Path(checkpoint), None, torch.device("cpu"), torch.float32),
        EngineConfig(max_batch_size=1, max_seq_length=32, warmup_prompt_tokens=8, compile=True,
                     compile_cache_dir=cache),
    )
    engine.start()
    ok = engine.wait_ready(600)
    stats = engine.stats()
    engine.stop()
    print(json.dumps({"ok": ok, **{k: stats[k] for k in ("compiled", "compile_error", "compile_cache_dir",
          "compile_cache_warm", "compile_cache_counters", "startup_seconds")}}))
    """
)


@pytest.mark.slow
def test_a_second_process_reuses_the_compile_cache(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Two starts in new processes with the same cache folder: the first compiles (cold, cache misses)
    and leaves its artifacts in the owner-only folder; the second finds them (warm, FX graph cache hits,
    no misses)."""
    cache = tmp_path / "compile-cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def start() -> dict:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(tiny_checkpoint), str(cache)],
            capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).parents[2],
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = start()
    assert first["ok"] and first["compiled"] and first["compile_error"] is None, first
    assert first["compile_cache_dir"] == str(cache.resolve()) and not first["compile_cache_warm"]
    assert first["compile_cache_counters"]["fx_graph_misses"] >= 1
    assert cache.stat().st_mode & 0o777 == 0o700
    second = start()
    assert second["ok"] and second["compiled"] and second["compile_cache_warm"], second
    counters = second["compile_cache_counters"]
    assert counters["fx_graph_hits"] >= 1 and counters["fx_graph_misses"] == 0, counters


def test_health_reports_start_up_and_prefill(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["ready"] and body["startup_seconds"] > 0
    assert body["compile_cache_warm"] is None and body["compile_seconds"] is None  # not compiled on a CPU
    assert body["prefilling"] == 0 and body["prefill_chunks"] >= 0


def test_settings_reach_the_engine(tiny_checkpoint: Path, lora_path: Path) -> None:
    """TWIN_PREFILL_TOKENS sizes the chunks; the compile cache defaults to the checkpoint's folder."""
    from serve_helpers import make_settings

    from serve.service import build_service

    engine = build_service(make_settings(tiny_checkpoint, lora_path, prefill_tokens=64)).engine
    assert engine.config.prefill_token_budget == 64
    assert engine.config.compile_cache_dir == str(tiny_checkpoint / ".compile-cache")
    elsewhere = make_settings(tiny_checkpoint, lora_path, compile_cache_dir=tiny_checkpoint.parent / "cc")
    assert build_service(elsewhere).engine.config.compile_cache_dir == str(tiny_checkpoint.parent / "cc")


def test_an_unusable_compile_cache_falls_back_to_the_default(tmp_path: Path) -> None:
    from serve.compile_cache import use_compile_cache

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    cache = use_compile_cache(blocked)
    assert cache.dir is None and not cache.warm
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == before  # Inductor's own default stays
    assert use_compile_cache(None).dir is None
