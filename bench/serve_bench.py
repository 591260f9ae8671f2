"""Speed of the serve engine at Falcon-7B's and Llama-3.1-8B's shapes (random bf16 weights), against the
memory-bandwidth ceiling and two anchors, in one process.

    python bench/serve_bench.py --out serve_bench.json          # CUDA: both shapes, one 10-minute call
    python bench/serve_bench.py --model llama-3.1-8b --out x.json
    python bench/serve_bench.py --smoke                         # CPU: tiny configs of both families

Measures (one JSON record a row, the whole list rewritten to --out after every row):
- the device's copy bandwidth: a 2 GiB device-to-device copy, bytes read + written (once);
- per shape (`--model`, a comma list), in phases (`--phases`), each skipped when its guessed cost no
  longer fits the whole run's `--budget-s`, in this order: every shape's `engine`, then every shape's
  `hf`, and so on:
  - `engine`: the serve engine as `python -m serve` runs it (fused blocks, Triton GEMVs and decode
    attention, compiled decode step in CUDA graphs per batch bucket): start-up to ready, time to first
    token of a 512-token prompt, batch-1 decode tokens/s (sampling at temperature 0.8, top-p 0.95) with
    the batch-1 ceiling = weight bytes / copy bandwidth and the share of it reached, and total tokens/s
    of --streams concurrent streams (all submitted at once, EOS ignored);
  - `hf`: Hugging Face transformers' `generate` on its own model class for the shape (`FalconForCausalLM`,
    `LlamaForCausalLM`, built from a config matching litgpt's, its own random init — speed only) with
    its standard fast path: `generation_config.cache_implementation = "static"` and
    `model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)`, batch 1,
    sampling as the engine samples; `hf16`: the same at batch 16 (16 same-length prompts);
  - `litgpt`: plain litgpt 0.5.13 `generate` (eager), batch 1; `litgpt-compile`: with
    `torch.compile(next_token, mode="reduce-overhead")` as `litgpt generate --compile` does it (and the
    two-line fix if that crashes);
  - `burst`: an engine of --burst slots (its start-up with the compile caches the `engine` phase left),
    then --burst prompts of 128 tokens (32 with --smoke) submitted at once, each generating
    --stream-tokens: time to first token p50/p99 and total tokens/s, in two arrival orders (how much the
    total swings), and once more with one prompt per prefill chunk (the budget cut to one prompt: how
    prompts were prefilled before chunks held several);
  - `restart`: a second engine start in a new process (warm compile caches) and its first request;
  - `twins`: several twins on one base (`serve.multi_lora`): an engine holding --twins random adapters
    unmerged (LoRA r=16 on q and v, finetune's defaults), batch-1 decode of one twin and --streams
    streams spread evenly over all twins, each against the `engine` phase's merged rows (a merged
    adapter costs what the base costs: the same matmuls).
- a summary per shape: engine batch 1 as a share of the ceiling and against each anchor.

The engine is driven directly (no HTTP): this imports only torch, litgpt, `serve`'s engine modules and
(for `hf`) transformers, so it runs where the web stack is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]  # the repo's packages, and this folder's helpers

from litgpt.config import Config  # noqa: E402

from finetune.tiny import tiny_config  # noqa: E402
from serve.engine import Engine, EngineConfig, GenerationRequest  # noqa: E402
from serve.model import random_model  # noqa: E402

T0 = time.perf_counter()
IMPORTED_AT = time.time()  # the module's imports done (a restart's child reports it)
BUDGET_S = 570.0  # the whole run (main() sets it from --budget-s); phases that would not fit are skipped
CUDAGRAPH_NOTES: list[str] = []
MODELS = {"falcon-7b": "falcon-7b", "llama-3.1-8b": "Llama-3.1-8B"}
"""--model names → litgpt `Config.from_name` names."""
PHASES = {
    "engine": 170.0,
    "hf": 150.0,
    "litgpt": 30.0,
    "hf16": 110.0,
    "litgpt-compile": 150.0,
    "burst": 90.0,
    "restart": 60.0,
    "twins": 200.0,
}
"""Phase → guessed GPU seconds at a 7–8B shape on a fresh machine (compiles dominate: the engine's two,
transformers' prefill and decode graphs); a phase starts only if this much of the budget is left."""
DEFAULT_PHASES = "engine,burst,hf,litgpt,hf16"


def time_left() -> float:
    return BUDGET_S - (time.perf_counter() - T0)


class _CudagraphNotes(logging.Handler):
    """Keeps inductor's "skipping cudagraphs due to ..." hints for the start-up record."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "cudagraph" in message.lower() and len(CUDAGRAPH_NOTES) < 10:
            CUDAGRAPH_NOTES.append(message[:300])


@dataclass
class Plan:
    """One shape's run: the model, its engine's sizes and the lengths measured."""

    model: str
    device: str
    dtype: torch.dtype
    config: Config
    max_batch: int
    max_seq: int
    ttft_prompt: int
    decode_tokens: int
    stream_counts: list[int]
    stream_prompt: int
    stream_tokens: int
    anchor_tokens: int
    compile: bool | None
    tuning: bool

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


def smoke_config(model: str) -> Config:
    """A tiny config of the shape's family (same block kind, grouping, RoPE settings)."""
    if model == "falcon-7b":
        return tiny_config(vocab_size=512, n_layer=2, n_embd=64, n_head=4, block_size=512)
    config = Config.from_name(
        MODELS[model],
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_query_groups=2,
        head_size=16,
        intermediate_size=160,
        vocab_size=512,
        padded_vocab_size=512,
        block_size=512,
    )
    config.name = f"tiny-{model}"
    return config


def make_plan(model: str, args: argparse.Namespace) -> Plan:
    if args.smoke:
        return Plan(
            model,
            "cpu",
            torch.float32,
            smoke_config(model),
            max(args.streams),
            256,
            64,
            32,
            args.streams,
            32,
            16,
            16,
            args.compile,
            args.tuning,
        )
    return Plan(
        model,
        "cuda",
        torch.bfloat16,
        Config.from_name(MODELS[model], **({"n_layer": args.layers} if args.layers else {})),
        max(args.streams),
        2048,
        512,
        args.decode_tokens,
        args.streams,
        128,
        args.stream_tokens,
        args.anchor_tokens,
        args.compile,
        args.tuning,
    )


OUT: Path | None = None
RECORDS: list[dict[str, Any]] = []


def emit(record: dict[str, Any]) -> dict[str, Any]:
    record = {"t": round(time.perf_counter() - T0, 1), **record}
    RECORDS.append(record)
    print(json.dumps(record), flush=True)
    if OUT is not None:  # rewritten after every record: a run cut short keeps what it measured
        OUT.write_text(json.dumps(RECORDS, indent=2) + "\n", encoding="utf-8")
    return record


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch._dynamo.reset()
        torch.cuda.empty_cache()


def random_prompt(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


# ------------------------------------------------------------------------------------ the ceiling
def measure_copy_bandwidth(device: str) -> float:
    """Bytes read + written per second by a large device-to-device copy (2 GiB; 256 MiB on a CPU)."""
    n = 2**31 if device == "cuda" else 2**28
    x = torch.empty(n, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    reps = 20 if device == "cuda" else 5
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            y.copy_(x)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        t = time.perf_counter()
        for _ in range(reps):
            y.copy_(x)
        seconds = time.perf_counter() - t
    del x, y
    return 2 * n * reps / seconds


def weight_bytes(config: Config, dtype: torch.dtype) -> dict[str, int]:
    """The litgpt model's parameter bytes; and what a decode step reads of them (the embedding table
    only one row a token: left out)."""
    with torch.device("meta"):
        from litgpt.model import GPT

        model = GPT(config)
    size = torch.empty((), dtype=dtype).element_size()
    total = sum(p.numel() for p in model.parameters()) * size
    embedding = model.transformer.wte.weight.numel() * size
    return {"all": total, "read_per_step": total - embedding}


CEILINGS: dict[str, dict[str, Any]] = {}
"""model → its bandwidth ceiling record (for the summary)."""


def ceiling_record(plan: Plan, bandwidth: float) -> dict[str, Any]:
    sizes = weight_bytes(plan.config, plan.dtype)
    record = {
        "weight_gb": round(sizes["all"] / 1e9, 3),
        "weight_gb_read_per_step": round(sizes["read_per_step"] / 1e9, 3),
        "copy_bandwidth_tb_per_s": round(bandwidth / 1e12, 3),
        "ceiling_tokens_per_s": round(bandwidth / sizes["all"], 1),
        "ceiling_read_tokens_per_s": round(bandwidth / sizes["read_per_step"], 1),
    }
    CEILINGS[plan.model] = record
    return record


# --------------------------------------------------------------------------------------- engine
async def run_stream(engine: Engine, request: GenerationRequest) -> tuple[float, list[float]]:
    """(submit time, arrival time of every token)."""
    t_submit = time.perf_counter()
    seq = engine.submit(request)
    arrivals: list[float] = []
    async for chunk in seq.tokens():
        now = time.perf_counter()
        arrivals.extend([now] * len(chunk))
    return t_submit, arrivals


def compile_counters() -> dict[str, Any]:
    """Did compilation do what it should: few graphs, no recompiles past the buckets, CUDA graphs used."""
    from torch._dynamo.utils import counters

    return {
        "dynamo_unique_graphs": counters["stats"].get("unique_graphs", 0),
        "dynamo_graph_breaks": sum(counters["graph_break"].values()),
        "cudagraph_skips": counters["inductor"].get("cudagraph_skips", 0),
        "cudagraph_notes": list(CUDAGRAPH_NOTES),
    }


COMPILE_CACHE: str | None = None
"""The engines' compile-cache folder (main() sets it from --compile-cache-dir), shared by every phase and
the restart's child process."""


def make_engine(plan: Plan, seed: int = 0, max_batch: int | None = None) -> Engine:
    """The serve engine over a random model of the plan's shape (not started)."""
    return Engine(
        lambda: random_model(plan.config, plan.torch_device, plan.dtype, seed=seed),
        EngineConfig(
            max_batch_size=max_batch or plan.max_batch,
            max_seq_length=plan.max_seq,
            compile=plan.compile,
            compile_tuning=plan.tuning,
            compile_cache_dir=COMPILE_CACHE,
        ),
    )


def startup_stats(engine: Engine) -> dict[str, Any]:
    """What start-up compiled, and whether the compile caches held an earlier start's artifacts."""
    stats = engine.stats()
    return {
        "compile_seconds": stats["compile_seconds"],
        "compile_cache_warm": stats["compile_cache_warm"],
        "compile_cache_counters": stats["compile_cache_counters"],
        "compile_cache_dir": stats["compile_cache_dir"],
        "warmup_marks": stats["warmup_marks"],
    }


RESULTS: dict[tuple[str, str], float] = {}
"""(model, row key) → tokens/s, for the summary."""


def bench_engine(plan: Plan) -> None:
    cfg, model = plan.config, plan.model
    engine = make_engine(plan)
    t = time.perf_counter()
    engine.start()
    ok = engine.wait_ready(timeout=900)
    stats = engine.stats()
    emit(
        {
            "model": model,
            "what": "engine start-up to ready (random init + caches + compile/CUDA-graph warm-up)",
            "seconds": round(time.perf_counter() - t, 2),
            "ready": ok,
            "compiled": engine.compiled,
            "compile_error": engine.compile_error,
            "load_error": engine.load_error,
            "fused_blocks": stats["fused_blocks"],
            "n_layer": cfg.n_layer,
            "triton_kernels": stats["triton_kernels"],
            "buckets": engine.buckets,
            "max_batch": plan.max_batch,
            "max_seq": plan.max_seq,
            "prefill_chunk_tokens": stats["prefill_chunk_tokens"],
            **startup_stats(engine),
            **compile_counters(),
        }
    )
    if not ok:
        return
    vocab = cfg.vocab_size
    try:
        ttfts = []
        for i in range(5):
            req = GenerationRequest(random_prompt(plan.ttft_prompt, vocab, i), 4, 0.8, 0.95, ignore_eos=True)
            t_submit, arrivals = asyncio.run(run_stream(engine, req))
            ttfts.append(arrivals[0] - t_submit)
        emit(
            {
                "model": model,
                "what": f"time to first token, {plan.ttft_prompt}-token prompt, idle engine",
                "ms_median": round(1000 * statistics.median(ttfts), 2),
                "ms_all": [round(1000 * x, 2) for x in ttfts],
            }
        )
        rates = batch1_rates(engine, plan)
        rate = statistics.median(rates)
        RESULTS[(model, "engine-b1")] = rate
        ceiling = CEILINGS.get(model, {})
        emit(
            {
                "model": model,
                "what": f"engine batch-1 decode, {plan.decode_tokens} tokens, temperature 0.8 top-p 0.95",
                "tokens_per_s_median": round(rate, 1),
                "tokens_per_s_all": [round(r, 1) for r in rates],
                **ceiling,
                **(
                    {
                        "pct_of_ceiling": round(100 * rate / ceiling["ceiling_tokens_per_s"], 1),
                        "pct_of_read_ceiling": round(100 * rate / ceiling["ceiling_read_tokens_per_s"], 1),
                    }
                    if ceiling
                    else {}
                ),
            }
        )

        # sampling inside the CUDA graph must draw new random numbers on every replay
        async def draw() -> list[int]:
            seq = engine.submit(GenerationRequest(random_prompt(16, vocab, 3), 32, 1.0, 1.0, ignore_eos=True))
            return [t async for chunk in seq.tokens() for t in chunk]

        draws = [asyncio.run(draw()) for _ in range(2)]
        emit(
            {
                "model": model,
                "what": "sampling check: the same prompt twice at temperature 1 (random weights)",
                "different_replies": draws[0] != draws[1],
                "distinct_tokens_in_first": len(set(draws[0])),
            }
        )
        for n in plan.stream_counts:
            steps0 = engine.steps
            wall, results = streams_at_once(engine, plan, n)
            total = sum(len(a) for _, a in results)
            ttft = sorted(a[0] - s for s, a in results)
            per_stream = [(len(a) - 1) / (a[-1] - a[0]) for _, a in results if len(a) > 1]
            RESULTS[(model, f"engine-{n}-streams")] = total / wall
            emit(
                {
                    "model": model,
                    "what": f"engine, {n} streams x {plan.stream_tokens} tokens at once",
                    "prompt_tokens": plan.stream_prompt,
                    "streams": n,
                    "total_tokens_per_s": round(total / wall, 1),
                    "tokens": total,
                    "wall_s": round(wall, 3),
                    "ttft_ms_p50": round(1000 * ttft[len(ttft) // 2], 1),
                    "ttft_ms_max": round(1000 * ttft[-1], 1),
                    "per_stream_decode_tokens_per_s_median": round(statistics.median(per_stream), 1),
                    "decode_steps": engine.steps - steps0,
                }
            )
    finally:
        engine.stop()
        if torch.cuda.is_available():
            emit(
                {
                    "model": model,
                    "what": "engine peak GPU memory",
                    "gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                }
            )
            torch.cuda.reset_peak_memory_stats()


# ------------------------------------------------------------------------------ burst prefill
BURST = 64
"""Prompts arriving at once in the `burst` phase (main() sets it from --burst)."""


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank: p99 of 64 values is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def start_engine(engine: Engine, model: str, what: str, **extra: Any) -> bool:
    """Start `engine`, wait until it is ready and emit how long that took; returns whether it is."""
    t = time.perf_counter()
    engine.start()
    ok = engine.wait_ready(timeout=900)
    emit(
        {
            "model": model,
            "what": what,
            "seconds": round(time.perf_counter() - t, 2),
            "ready": ok,
            "compiled": engine.compiled,
            "compile_error": engine.compile_error,
            "load_error": engine.load_error,
            **extra,
            **startup_stats(engine),
        }
    )
    return ok


def batch1_rates(engine: Engine, plan: Plan, twin: int = 0) -> list[float]:
    """Decode tokens/s of three batch-1 requests of plan.decode_tokens (sampling, EOS ignored)."""
    rates = []
    for i in range(3):
        req = GenerationRequest(
            random_prompt(32, plan.config.vocab_size, 10 + i),
            plan.decode_tokens,
            0.8,
            0.95,
            ignore_eos=True,
            twin=twin,
        )
        _, arrivals = asyncio.run(run_stream(engine, req))
        rates.append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
    return rates


def streams_at_once(engine: Engine, plan: Plan, n: int, twins: int = 0) -> tuple[float, list]:
    """(wall seconds, per-stream (submit, arrivals)) of n streams submitted at once; with `twins`, stream i
    generates with twin slot 1 + i % twins."""

    async def many() -> list[tuple[float, list[float]]]:
        reqs = [
            GenerationRequest(
                random_prompt(plan.stream_prompt, plan.config.vocab_size, 100 + i),
                plan.stream_tokens,
                0.8,
                0.95,
                ignore_eos=True,
                twin=1 + i % twins if twins else 0,
            )
            for i in range(n)
        ]
        return await asyncio.gather(*(run_stream(engine, r) for r in reqs))

    t = time.perf_counter()
    results = asyncio.run(many())
    return time.perf_counter() - t, results


def bench_burst(plan: Plan) -> None:
    """--burst prompts submitted at once to an idle engine of as many slots: TTFT p50/p99 and total
    tokens/s, in two arrival orders and with one prompt per prefill chunk."""
    cfg, model = plan.config, plan.model
    prompt_tokens = 32 if plan.device == "cpu" else 128
    engine = make_engine(plan, max_batch=BURST)
    what = f"burst engine ({BURST} slots) start-up to ready, compile caches of the earlier phases"
    ok = start_engine(engine, model, what, buckets=engine.buckets)
    if not ok or engine.runner is None:
        return
    runner = engine.runner
    budget = runner.prefill_tokens
    prompts = [random_prompt(prompt_tokens, cfg.vocab_size, 1000 + i) for i in range(BURST)]
    orders = {
        "submission order": list(range(BURST)),
        "shuffled order": torch.randperm(BURST, generator=torch.Generator().manual_seed(5)).tolist(),
    }
    runs = [(name, order, budget) for name, order in orders.items()]
    runs.append(("one prompt per prefill chunk", orders["submission order"], prompt_tokens))
    totals = []
    try:
        for name, order, chunk_tokens in runs:
            runner.prefill_tokens = chunk_tokens
            steps0, chunks0 = engine.steps, engine.prefill_chunks

            async def burst(order: list[int] = order) -> list[tuple[float, list[float]]]:
                reqs = [
                    GenerationRequest(prompts[i], plan.stream_tokens, 0.8, 0.95, ignore_eos=True)
                    for i in order
                ]
                return await asyncio.gather(*(run_stream(engine, r) for r in reqs))

            t = time.perf_counter()
            results = asyncio.run(burst())
            wall = time.perf_counter() - t
            total = sum(len(a) for _, a in results)
            ttft = [a[0] - s for s, a in results]
            if chunk_tokens == budget:
                totals.append(total / wall)
            RESULTS[(model, f"burst-{BURST}-{name.replace(' ', '-')}")] = total / wall
            emit(
                {
                    "model": model,
                    "what": f"burst: {BURST} prompts x {prompt_tokens} tokens at once, {plan.stream_tokens} "
                    f"tokens each, {name}",
                    "prefill_chunk_tokens": chunk_tokens,
                    "ttft_ms_p50": round(1000 * percentile(ttft, 0.5), 1),
                    "ttft_ms_p99": round(1000 * percentile(ttft, 0.99), 1),
                    "ttft_ms_min": round(1000 * min(ttft), 1),
                    "total_tokens_per_s": round(total / wall, 1),
                    "tokens": total,
                    "wall_s": round(wall, 3),
                    "prefill_chunks": engine.prefill_chunks - chunks0,
                    "decode_steps": engine.steps - steps0,
                }
            )
        if len(totals) == 2:
            emit(
                {
                    "model": model,
                    "what": "burst: total tokens/s across the two arrival orders",
                    "swing_pct": round(100 * abs(totals[0] - totals[1]) / statistics.mean(totals), 2),
                }
            )
    finally:
        engine.stop()


# --------------------------------------------------------------------------- Hugging Face anchor
def build_hf_model(plan: Plan) -> Any:
    """transformers' own model class for the shape, from a config matching litgpt's (bench/hf_anchor.py),
    its own random init, in the bench's dtype, SDPA attention, KV cache on."""
    from hf_anchor import hf_config
    from transformers import AutoModelForCausalLM

    config = hf_config(plan.config)
    config.use_cache = True
    with torch.device(plan.device):
        model = AutoModelForCausalLM.from_config(config, dtype=plan.dtype, attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


HF_AUTO_COMPILE = True
"""Leave transformers' own auto-compile of the decode step on (main() sets it from --hf-no-auto-compile)."""


def bench_hf(plan: Plan, batch: int) -> None:
    """transformers `generate` with a static cache, the way transformers 5 documents its fast path: `generate`
    compiles the decode step itself (`_valid_auto_compile_criteria`: a compileable cache on a GPU;
    `CompileConfig()`, mode "reduce-overhead", so CUDA graphs) and runs the prefill eagerly. Two warm-up
    generations (the compiles), then three timed ones. --smoke turns the auto-compile on for the CPU too
    (`CompileConfig._compile_all_devices`), so the CPU run takes the GPU's path.

    The older recipe — also wrapping `model.forward` in `torch.compile(mode="reduce-overhead",
    fullgraph=True)` — fails on transformers 5.17 on a GPU ("accessing tensor output of CUDAGraphs that has
    been overwritten": the prefill's logits live in a graph's pool the decode step reuses; H200 run of
    2026-12-02). If the documented path fails, the fallback compiles `model.forward` without CUDA graphs
    and turns generate's own compile off; the record names the recipe that ran."""
    import transformers
    from transformers.generation.configuration_utils import CompileConfig

    model = build_hf_model(plan)
    gen = model.generation_config
    gen.cache_implementation = "static"
    gen.eos_token_id = None  # random weights: never stop early
    gen.pad_token_id = 0
    gen.compile_config = CompileConfig()
    recipe = "static cache + generate's auto-compile of the decode step (CompileConfig: reduce-overhead)"
    if not HF_AUTO_COMPILE:
        gen.disable_compile = True
        model.forward = torch.compile(model.forward, fullgraph=True)
        recipe = "static cache + torch.compile(model.forward, fullgraph), generate's auto-compile off"
    elif plan.device == "cpu":
        gen.compile_config._compile_all_devices = True
    prompts = torch.tensor(
        [random_prompt(32, plan.config.vocab_size, 7 + i) for i in range(batch)], device=plan.device
    )  # (batch, 32), no padding
    kwargs = dict(
        max_new_tokens=plan.anchor_tokens,
        min_new_tokens=plan.anchor_tokens,
        do_sample=True,
        temperature=0.8,
        top_p=0.95,
        top_k=0,
        attention_mask=torch.ones_like(prompts),
    )

    def generate() -> float:
        sync()
        t = time.perf_counter()
        out = model.generate(prompts, **kwargs)
        sync()
        return (out.numel() - prompts.numel()) / (time.perf_counter() - t)

    t = time.perf_counter()
    try:
        warm = [generate() for _ in range(2)]
    except Exception as e:
        if gen.disable_compile:
            raise
        emit(
            {
                "model": plan.model,
                "what": f"hf generate batch {batch}: the documented auto-compile failed; again with "
                "torch.compile(model.forward) without CUDA graphs and generate's own compile off",
                "error": f"{type(e).__name__}: {e}"[:600],
            }
        )
        torch._dynamo.reset()
        gen.disable_compile = True
        model.forward = torch.compile(model.forward, fullgraph=True)
        recipe = "static cache + torch.compile(model.forward, fullgraph), generate's auto-compile off"
        warm = [generate() for _ in range(2)]
    warm_s = time.perf_counter() - t
    rates = [generate() for _ in range(3)]
    rate = statistics.median(rates)
    RESULTS[(plan.model, f"hf-b{batch}")] = rate
    emit(
        {
            "model": plan.model,
            "what": f"hf transformers generate, batch {batch}, {plan.anchor_tokens} new tokens, "
            "temperature 0.8 top-p 0.95",
            "total_tokens_per_s_median": round(rate, 1),
            "tokens_per_s_per_stream": round(rate / batch, 1),
            "tokens_per_s_all": [round(r, 1) for r in rates],
            "warmup_s": round(warm_s, 1),
            "warmup_tokens_per_s": [round(r, 1) for r in warm],
            "recipe": recipe,
            "model_class": type(model).__name__,
            "transformers": transformers.__version__,
        }
    )


# -------------------------------------------------------------------------------- litgpt anchor
def bench_litgpt(plan: Plan, compile: bool) -> None:
    """Plain litgpt 0.5.13 `generate`, set up as `litgpt generate` sets it up (minus Fabric)."""
    import litgpt.generate.base as litgpt_generate

    cfg = plan.config
    model = random_model(cfg, plan.torch_device, plan.dtype)
    prompt = torch.tensor(random_prompt(32, cfg.vocab_size, 7), device=plan.device)
    max_returned = prompt.numel() + plan.anchor_tokens
    model.max_seq_length = max_returned
    model.set_kv_cache(batch_size=1, device=plan.torch_device, dtype=plan.dtype)

    def time_generations(label: str, key: str, runs: int, extra: dict[str, Any] | None = None) -> None:
        rates = []
        for _ in range(runs):
            if time_left() < 20:
                emit({"model": plan.model, "what": f"{label}: the remaining runs skipped (time budget)"})
                break
            sync()
            t = time.perf_counter()
            y = litgpt_generate.generate(model, prompt, max_returned, temperature=0.8, top_k=50, top_p=1.0)
            sync()
            rates.append((y.numel() - prompt.numel()) / (time.perf_counter() - t))
            for block in model.transformer.h:
                block.attn.kv_cache.reset_parameters()
        if rates:
            RESULTS[(plan.model, key)] = max(rates)
            emit(
                {
                    "model": plan.model,
                    "what": label,
                    "tokens_per_s_by_run": [round(r, 1) for r in rates],
                    **(extra or {}),
                }
            )

    if not compile:
        time_generations(f"litgpt generate eager, batch 1, {plan.anchor_tokens} tokens", "litgpt-b1", 2)
        return
    original = litgpt_generate.next_token
    torch._dynamo.config.automatic_dynamic_shapes = True  # as litgpt's generate --compile
    torch._inductor.config.triton.unique_kernel_names = True
    torch._inductor.config.coordinate_descent_tuning = True
    compiled = torch.compile(original, mode="reduce-overhead")
    litgpt_generate.next_token = compiled
    label = f"litgpt generate --compile (reduce-overhead), {plan.anchor_tokens} tokens"
    try:
        time_generations(label, "litgpt-compile-b1", 3)
    except Exception as e:
        emit(
            {
                "model": plan.model,
                "what": "litgpt generate --compile",
                "error": f"{type(e).__name__}: {e}"[:400],
            }
        )

        def fixed(*args: Any, **kwargs: Any) -> torch.Tensor:
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*args, **kwargs).clone()

        litgpt_generate.next_token = fixed
        for block in model.transformer.h:
            block.attn.kv_cache.reset_parameters()
        time_generations(
            f"litgpt generate --compile + mark_step_begin/clone fix, {plan.anchor_tokens} tokens",
            "litgpt-compile-b1",
            3,
            {"note": "the first runs include compilation"},
        )
    finally:
        litgpt_generate.next_token = original
        torch._inductor.config.coordinate_descent_tuning = False


# ------------------------------------------------------------------------------ several twins
TWINS = 8
"""Adapters the `twins` phase serves together (main() sets it from --twins)."""


def random_twin_updates(config: Config, seed: int) -> Any:
    """Slot updates (`serve.multi_lora.adapter_updates`) of a random adapter of finetune's default shape."""
    from litgpt import lora

    from finetune.twin import Adapter, AdapterSpec, LoraArgs, lora_config
    from serve.multi_lora import adapter_updates

    args = LoraArgs(lora_r=16, lora_alpha=32, lora_dropout=0.0)  # q and v, as finetune trains by default
    spec = AdapterSpec(lora=args, base_name=config.name, base_family=None)
    with torch.device("meta"):
        shapes = lora.GPT(lora_config(config, spec)).state_dict()
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        k: torch.randn(v.shape, generator=gen) * 0.02 for k, v in shapes.items() if lora.lora_filter(k, v)
    }
    return adapter_updates(config, Adapter(Path(f"random-twin-{seed}"), spec, tensors))


def bench_twins(plan: Plan) -> None:
    """An engine of TWINS random twins over one base: batch-1 decode of one twin, and streams spread over
    all of them, against the merged engine's rows of the `engine` phase."""
    model = plan.model
    updates = {slot: random_twin_updates(plan.config, seed=slot) for slot in range(1, TWINS + 1)}
    engine = Engine(
        lambda: random_model(plan.config, plan.torch_device, plan.dtype, seed=0),
        EngineConfig(
            max_batch_size=plan.max_batch,
            max_seq_length=plan.max_seq,
            compile=plan.compile,
            compile_tuning=plan.tuning,
            compile_cache_dir=COMPILE_CACHE,
            twin_slots=TWINS,
            max_lora_rank=16,
            lora_layers=("query", "value"),  # what a server started with such twins holds by default
        ),
        twins=updates,
    )
    ok = start_engine(engine, model, f"twins engine start-up ({TWINS} twins unmerged, LoRA r=16 on q and v)")
    if not ok:
        return
    try:
        rates = batch1_rates(engine, plan, twin=1)
        rate = statistics.median(rates)
        RESULTS[(model, "twins-b1")] = rate
        merged = RESULTS.get((model, "engine-b1"))
        emit(
            {
                "model": model,
                "what": f"one twin of {TWINS}, unmerged: batch-1 decode, {plan.decode_tokens} tokens",
                "tokens_per_s_median": round(rate, 1),
                "tokens_per_s_all": [round(r, 1) for r in rates],
                "merged_tokens_per_s": None if merged is None else round(merged, 1),
                "unmerged_over_merged": None if merged is None else round(rate / merged, 3),
            }
        )
        for n in plan.stream_counts:
            wall, results = streams_at_once(engine, plan, n, twins=TWINS)
            total = sum(len(a) for _, a in results)
            RESULTS[(model, f"twins-{n}-streams")] = total / wall
            merged = RESULTS.get((model, f"engine-{n}-streams"))
            emit(
                {
                    "model": model,
                    "what": f"{n} streams spread over {TWINS} twins x {plan.stream_tokens} tokens at once",
                    "total_tokens_per_s": round(total / wall, 1),
                    "merged_one_twin_tokens_per_s": None if merged is None else round(merged, 1),
                    "over_merged": None if merged is None else round(total / wall / merged, 3),
                    "wall_s": round(wall, 3),
                }
            )
    finally:
        engine.stop()


# ------------------------------------------------------------------------------ restart (optional)
def bench_restart(plan: Plan, argv: list[str]) -> None:
    """A second start in a new process, as a restarted server on the same machine gets it: compiled
    kernels and graphs come from inductor's on-disk caches. The child (`--startup-only`) also times its
    first request, to show the first user does not wait for a compile."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--startup-only", "--model", plan.model, *argv]
    t, launched = time.perf_counter(), time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60.0, time_left() - 10))
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    child = next((r for r in records if r.get("what") == "startup-only"), None)
    emit(
        {
            "model": plan.model,
            "what": "engine start-up in a second process, compile caches warm (a restarted server)",
            "process_wall_s": round(time.perf_counter() - t, 2),
            # from launching the process (imports, model, compile caches, CUDA graphs) to ready
            "process_seconds_to_ready": round(child["ready_at_unix"] - launched, 2)
            if child and child.get("ready_at_unix")
            else None,
            # where the rest goes: interpreter + imports, then up to engine.start()
            "process_seconds_to_imported": round(child["imported_at_unix"] - launched, 2)
            if child and child.get("imported_at_unix")
            else None,
            "process_seconds_to_engine_start": round(child["started_at_unix"] - launched, 2)
            if child and child.get("started_at_unix")
            else None,
            **(
                {k: v for k, v in child.items() if k not in ("what", "t", "model") and "_unix" not in k}
                if child
                else {}
            ),
            **({} if child else {"error": (done.stderr or done.stdout)[-1500:]}),
        }
    )


def bench_startup_only(plan: Plan) -> None:
    """Start the engine, time it to ready, then its first request (TTFT and 64 decoded tokens)."""
    engine = make_engine(plan, seed=1)
    t, started_at = time.perf_counter(), time.time()
    engine.start()
    ok = engine.wait_ready(timeout=900)
    record: dict[str, Any] = {
        "model": plan.model,
        "what": "startup-only",
        "imported_at_unix": IMPORTED_AT,  # the process's imports done (torch, litgpt, lightning, serve)
        "started_at_unix": started_at,  # engine.start(): the model is built and compiled from here on
        "ready_at_unix": time.time(),
        "seconds_to_ready": round(time.perf_counter() - t, 2),
        "ready": ok,
        "compiled": engine.compiled,
        "compile_error": engine.compile_error,
        **startup_stats(engine),
    }
    try:
        if ok:
            req = GenerationRequest(
                random_prompt(plan.ttft_prompt, plan.config.vocab_size, 7), 65, 0.8, 0.95, ignore_eos=True
            )
            t_submit, arrivals = asyncio.run(run_stream(engine, req))
            record["first_request_ttft_ms"] = round(1000 * (arrivals[0] - t_submit), 1)
            record["first_request_decode_tokens_per_s"] = round(
                (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), 1
            )
    finally:
        engine.stop()
        emit(record)


# ----------------------------------------------------------------------------------------- driver
def guarded(name: str, model: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as e:  # keep what was measured; report the failure
        emit(
            {
                "model": model,
                "what": name,
                "error": f"{type(e).__name__}: {e}"[:600],
                "trace": traceback.format_exc()[-1500:],
            }
        )
    finally:
        release()


def summary(plans: list[Plan]) -> None:
    for plan in plans:
        m = plan.model
        engine = RESULTS.get((m, "engine-b1"))
        record: dict[str, Any] = {"model": m, "what": "summary", **CEILINGS.get(m, {})}
        for key, value in sorted((k, v) for (mm, k), v in RESULTS.items() if mm == m):
            record[f"{key}_tokens_per_s"] = round(value, 1)
        if engine is not None:
            if m in CEILINGS:
                record["engine_b1_pct_of_ceiling"] = round(
                    100 * engine / CEILINGS[m]["ceiling_tokens_per_s"], 1
                )
            for anchor in ("hf-b1", "litgpt-b1", "litgpt-compile-b1"):
                if (m, anchor) in RESULTS:
                    record[f"engine_b1_over_{anchor}"] = round(engine / RESULTS[(m, anchor)], 2)
        for key, merged_key in (("twins-b1", "engine-b1"), ("twins-16-streams", "engine-16-streams")):
            if (m, key) in RESULTS and (m, merged_key) in RESULTS:
                record[f"{key}_over_merged"] = round(RESULTS[(m, key)] / RESULTS[(m, merged_key)], 3)
        streams16 = RESULTS.get((m, "engine-16-streams"))
        if streams16 is not None and (m, "hf-b16") in RESULTS:
            record["engine_16_streams_over_hf_b16"] = round(streams16 / RESULTS[(m, "hf-b16")], 2)
        emit(record)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny configs of both families, every row type")
    p.add_argument("--model", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument(
        "--phases", help=f"comma list of {', '.join(PHASES)} (default: {DEFAULT_PHASES}; --smoke: all)"
    )
    p.add_argument("--out", type=Path, help="also write the records here (JSON)")
    p.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[16])
    p.add_argument("--decode-tokens", type=int, default=512, help="engine batch-1 decode length")
    p.add_argument("--stream-tokens", type=int, default=256, help="tokens per concurrent stream")
    p.add_argument("--anchor-tokens", type=int, default=128, help="new tokens per anchor generation")
    p.add_argument(
        "--budget-s", type=float, default=570.0, help="the whole run; phases that won't fit are skipped"
    )
    p.add_argument("--burst", type=int, default=BURST, help="prompts arriving at once in the burst phase")
    p.add_argument("--twins", type=int, default=TWINS, help="adapters served together in the twins phase")
    p.add_argument(
        "--layers",
        type=int,
        default=None,
        help="the model's first N layers only (a quicker start for ratios between rows of one run; the "
        "ceiling and every figure then describe that truncated model)",
    )
    p.add_argument(
        "--compile-cache-dir",
        default=str(Path(tempfile.gettempdir()) / "twin-serve-bench-compile-cache"),
        help="the engines' compile caches (reused by later phases, the restart's child and later runs); "
        "empty: Inductor's default",
    )
    p.add_argument("--tuning", action="store_true", help="compile with coordinate-descent kernel tuning")
    p.add_argument(
        "--hf-no-auto-compile",
        action="store_true",
        help="hf rows: torch.compile(model.forward), no CUDA graphs, instead of generate's auto-compile",
    )
    p.add_argument("--startup-only", action="store_true", help=argparse.SUPPRESS)  # restart's child
    compile_group = p.add_mutually_exclusive_group()
    compile_group.add_argument("--compile", dest="compile", action="store_true", default=None)
    compile_group.add_argument("--no-compile", dest="compile", action="store_false")
    args = p.parse_args(argv)
    problems = []
    args.models = [m.strip() for m in args.model.split(",") if m.strip()]
    phases = args.phases or (",".join(PHASES) if args.smoke else DEFAULT_PHASES)
    args.phase_list = [x.strip() for x in phases.split(",") if x.strip()]
    if unknown := [m for m in args.models if m not in MODELS]:
        problems.append(f"--model {','.join(unknown)}: choose from {', '.join(MODELS)}")
    if unknown := [x for x in args.phase_list if x not in PHASES]:
        problems.append(f"--phases {','.join(unknown)}: choose from {', '.join(PHASES)}")
    if problems:
        p.error("; ".join(problems))
    if not args.smoke and not torch.cuda.is_available():
        p.error("no CUDA GPU: run with --smoke on a CPU")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global BUDGET_S, OUT, HF_AUTO_COMPILE, COMPILE_CACHE, BURST, TWINS
    BUDGET_S, OUT, HF_AUTO_COMPILE = args.budget_s, args.out, not args.hf_no_auto_compile
    COMPILE_CACHE, BURST, TWINS = args.compile_cache_dir or None, args.burst, args.twins
    plans = [make_plan(m, args) for m in args.models]
    torch._logging.set_logs(perf_hints=True, recompiles=True)  # why CUDA graphs were skipped, if they were
    logging.getLogger("torch").addHandler(_CudagraphNotes())
    if args.startup_only:
        guarded("startup-only", plans[0].model, lambda: bench_startup_only(plans[0]))
        return 0
    emit({"what": "environment", **environment(plans[0].device), "argv": sys.argv[1:]})
    bandwidth = measure_copy_bandwidth(plans[0].device)
    emit(
        {
            "what": "device copy bandwidth (2 GiB device-to-device copy, bytes read + written)"
            if plans[0].device == "cuda"
            else "host copy bandwidth (256 MiB, bytes read + written)",
            "tb_per_s": round(bandwidth / 1e12, 3),
        }
    )
    for plan in plans:
        emit(
            {
                "model": plan.model,
                "what": "ceiling: weight bytes / copy bandwidth",
                **ceiling_record(plan, bandwidth),
            }
        )
    child_argv = (["--smoke"] if args.smoke else []) + ["--streams", ",".join(map(str, args.streams))]
    child_argv += {True: ["--compile"], False: ["--no-compile"], None: []}[args.compile]
    child_argv += ["--compile-cache-dir", COMPILE_CACHE or ""]
    runs: dict[str, Callable[[Plan], None]] = {
        "engine": bench_engine,
        "hf": lambda plan: bench_hf(plan, 1),
        "hf16": lambda plan: bench_hf(plan, 16),
        "litgpt": lambda plan: bench_litgpt(plan, compile=False),
        "litgpt-compile": lambda plan: bench_litgpt(plan, compile=True),
        "burst": bench_burst,
        "restart": lambda plan: bench_restart(plan, child_argv),
        "twins": bench_twins,
    }
    for phase in args.phase_list:
        for plan in plans:
            # a truncated model (--layers) compiles and starts in about its share of the layers' time
            share = 1.0 if not args.layers else max(0.3, min(1.0, args.layers / 32))
            needed = PHASES[phase] * share if not args.smoke else 0.0
            if time_left() < needed:
                emit(
                    {
                        "model": plan.model,
                        "what": f"{phase}: skipped (time budget: {time_left():.0f} s left, about "
                        f"{needed:.0f} s needed; run it alone with --model {plan.model} --phases {phase})",
                    }
                )
                continue
            guarded(phase, plan.model, lambda run=runs[phase], plan=plan: run(plan))
    summary(plans)
    emit({"what": "done", "total_s": round(time.perf_counter() - T0, 1)})
    return 0


def environment(device: str) -> dict[str, Any]:
    import litgpt

    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": _dist_version("triton"),
        "transformers": _dist_version("transformers"),
        "litgpt": getattr(litgpt, "__version__", None) or _dist_version("litgpt"),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
