"""Speed of the serve engine at Falcon-7B's shape with random bf16 weights, and plain litgpt as the anchor.

    python bench/serve_bench.py --out serve_bench.json     # CUDA: Falcon-7B shape, bf16 (< 8 minutes)
    python bench/serve_bench.py --smoke                    # CPU: a tiny Falcon-shaped config, seconds

Measures, in one process:
- start-up to ready: random weights on the device, KV cache, compile + CUDA-graph warm-up of every
  decode batch bucket (what `python -m serve` does before /health says ready, minus reading 14 GB);
- time to first token of a 512-token prompt on an idle engine;
- batch-1 decode tokens/s of one stream (sampling at the server's default temperature/top-p);
- total tokens/s with 1, 4, 16 and 64 concurrent streams (all submitted at once, EOS ignored);
- the anchor: litgpt 0.5.13's own `generate` (eager; then `torch.compile(next_token,
  mode="reduce-overhead")` as `litgpt generate --compile` does it, and, if that crashes, with the
  two-line fix: `cudagraph_mark_step_begin()` before each step and a clone of the sampled token).

The engine is driven directly (no HTTP): this imports only torch, litgpt and `serve`'s engine modules,
so it runs where the web stack is not installed. Prints one JSON line per measurement and a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from litgpt.config import Config  # noqa: E402

from finetune.tiny import tiny_config  # noqa: E402
from serve.engine import Engine, EngineConfig, GenerationRequest  # noqa: E402
from serve.model import random_model  # noqa: E402

T0 = time.perf_counter()
BUDGET_S = 470.0  # the whole run (main() sets it from --budget-s); phases that would not fit are skipped
CUDAGRAPH_NOTES: list[str] = []


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


def make_plan(args: argparse.Namespace) -> Plan:
    if args.smoke:
        config = tiny_config(vocab_size=512, n_layer=2, n_embd=64, n_head=4, block_size=512)
        return Plan(
            "cpu", torch.float32, config, 8, 256, 64, 48, [1, 2, 4, 8], 32, 24, 24, args.compile, args.tuning
        )
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU: run with --smoke on a CPU")
    config = Config.from_name("falcon-7b")
    return Plan(
        "cuda",
        torch.bfloat16,
        config,
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


def emit(record: dict[str, Any], sink: list[dict[str, Any]]) -> None:
    record = {"t": round(time.perf_counter() - T0, 1), **record}
    sink.append(record)
    print(json.dumps(record), flush=True)
    if OUT is not None:  # rewritten after every record: a run cut short keeps what it measured
        OUT.write_text(json.dumps(sink, indent=2) + "\n", encoding="utf-8")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def random_prompt(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


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
        "cudagraph_non_static_inputs_recorded": counters["inductor"].get(
            "cudagraph_recorded_non_static_inputs", 0
        ),
        "cudagraph_notes": list(CUDAGRAPH_NOTES),
    }


def make_engine(plan: Plan, seed: int = 0) -> Engine:
    """The serve engine over a random model of the plan's shape (not started)."""
    return Engine(
        lambda: random_model(plan.config, torch.device(plan.device), plan.dtype, seed=seed),
        EngineConfig(
            max_batch_size=plan.max_batch,
            max_seq_length=plan.max_seq,
            compile=plan.compile,
            compile_tuning=plan.tuning,
        ),
    )


def bench_engine(plan: Plan, sink: list[dict[str, Any]]) -> None:
    cfg = plan.config
    engine = make_engine(plan)
    t = time.perf_counter()
    engine.start()
    ok = engine.wait_ready(timeout=900)
    startup = time.perf_counter() - t
    emit(
        {
            "what": "engine start-up to ready (random init + caches + compile/CUDA-graph warm-up)",
            "seconds": round(startup, 2),
            "ready": ok,
            "compiled": engine.compiled,
            "compile_error": engine.compile_error,
            "load_error": engine.load_error,
            "buckets": engine.buckets,
            "max_batch": plan.max_batch,
            "max_seq": plan.max_seq,
            **compile_counters(),
        },
        sink,
    )
    if not ok:
        return
    vocab = cfg.vocab_size
    try:
        # time to first token: a 512-token prompt on an idle engine
        ttfts = []
        for i in range(5):
            req = GenerationRequest(random_prompt(plan.ttft_prompt, vocab, i), 4, 0.8, 0.95, ignore_eos=True)
            t_submit, arrivals = asyncio.run(run_stream(engine, req))
            ttfts.append(arrivals[0] - t_submit)
        emit(
            {
                "what": f"time to first token, {plan.ttft_prompt}-token prompt, idle engine",
                "ms_median": round(1000 * statistics.median(ttfts), 2),
                "ms_all": [round(1000 * x, 2) for x in ttfts],
            },
            sink,
        )
        # batch-1 decode
        rates = []
        for i in range(3):
            req = GenerationRequest(
                random_prompt(32, vocab, 10 + i), plan.decode_tokens, 0.8, 0.95, ignore_eos=True
            )
            _, arrivals = asyncio.run(run_stream(engine, req))
            rates.append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
        emit(
            {
                "what": f"batch-1 decode, {plan.decode_tokens} tokens, temperature 0.8 top-p 0.95",
                "tokens_per_s_median": round(statistics.median(rates), 1),
                "tokens_per_s_all": [round(r, 1) for r in rates],
            },
            sink,
        )

        # sampling inside the CUDA graph must draw new random numbers on every replay
        async def draw() -> list[int]:
            seq = engine.submit(GenerationRequest(random_prompt(16, vocab, 3), 32, 1.0, 1.0, ignore_eos=True))
            return [t async for chunk in seq.tokens() for t in chunk]

        draws = [asyncio.run(draw()) for _ in range(2)]
        emit(
            {
                "what": "sampling check: the same prompt twice at temperature 1 (random weights)",
                "different_replies": draws[0] != draws[1],
                "distinct_tokens_in_first": len(set(draws[0])),
            },
            sink,
        )
        # concurrent streams
        for n in plan.stream_counts:
            steps0 = engine.steps

            async def many(n: int = n) -> list[tuple[float, list[float]]]:
                reqs = [
                    GenerationRequest(
                        random_prompt(plan.stream_prompt, vocab, 100 + i),
                        plan.stream_tokens,
                        0.8,
                        0.95,
                        ignore_eos=True,
                    )
                    for i in range(n)
                ]
                return await asyncio.gather(*(run_stream(engine, r) for r in reqs))

            t = time.perf_counter()
            results = asyncio.run(many())
            wall = time.perf_counter() - t
            total = sum(len(a) for _, a in results)
            ttft = sorted(a[0] - s for s, a in results)
            per_stream = [(len(a) - 1) / (a[-1] - a[0]) for _, a in results if len(a) > 1]
            emit(
                {
                    "what": f"{n} streams x {plan.stream_tokens} tokens at once",
                    "prompt_tokens": plan.stream_prompt,
                    "streams": n,
                    "total_tokens_per_s": round(total / wall, 1),
                    "tokens": total,
                    "wall_s": round(wall, 3),
                    "ttft_ms_p50": round(1000 * ttft[len(ttft) // 2], 1),
                    "ttft_ms_max": round(1000 * ttft[-1], 1),
                    "per_stream_decode_tokens_per_s_median": round(statistics.median(per_stream), 1),
                    "decode_steps": engine.steps - steps0,
                },
                sink,
            )
    finally:
        engine.stop()
        if torch.cuda.is_available():
            emit(
                {
                    "what": "engine peak GPU memory",
                    "gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                },
                sink,
            )


def bench_restart(argv: list[str], sink: list[dict[str, Any]]) -> None:
    """A second start in a new process, as a restarted server on the same machine gets it: compiled
    kernels and graphs come from inductor's on-disk caches. The child (`--startup-only`) also times its
    first request, to show the first user does not wait for a compile."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--startup-only", *argv]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60.0, time_left() - 10))
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    child = next((r for r in records if r.get("what") == "startup-only"), None)
    emit(
        {
            "what": "engine start-up in a second process, compile caches warm (a restarted server)",
            "process_wall_s": round(time.perf_counter() - t, 2),
            **({k: v for k, v in child.items() if k not in ("what", "t")} if child else {}),
            **({} if child else {"error": (done.stderr or done.stdout)[-1500:]}),
        },
        sink,
    )


def bench_startup_only(plan: Plan, sink: list[dict[str, Any]]) -> None:
    """Start the engine, time it to ready, then its first request (TTFT and 64 decoded tokens)."""
    engine = make_engine(plan, seed=1)
    t = time.perf_counter()
    engine.start()
    ok = engine.wait_ready(timeout=900)
    record: dict[str, Any] = {
        "what": "startup-only",
        "seconds_to_ready": round(time.perf_counter() - t, 2),
        "ready": ok,
        "compiled": engine.compiled,
        "compile_error": engine.compile_error,
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
        emit(record, sink)


def bench_anchor(plan: Plan, sink: list[dict[str, Any]]) -> None:
    """Plain litgpt 0.5.13 `generate`, set up as `litgpt generate` sets it up (minus Fabric)."""
    import litgpt.generate.base as litgpt_generate

    cfg = plan.config
    model = random_model(cfg, torch.device(plan.device), plan.dtype)
    prompt = torch.tensor(random_prompt(32, cfg.vocab_size, 7), device=plan.device)
    max_returned = prompt.numel() + plan.anchor_tokens
    model.max_seq_length = max_returned
    model.set_kv_cache(batch_size=1, device=torch.device(plan.device), dtype=plan.dtype)

    def time_generations(label: str, runs: int, extra: dict[str, Any] | None = None) -> None:
        rates = []
        for _ in range(runs):
            if time_left() < 20:
                emit({"what": f"{label}: the remaining runs skipped (time budget)"}, sink)
                break
            sync()
            t = time.perf_counter()
            y = litgpt_generate.generate(model, prompt, max_returned, temperature=0.8, top_k=50, top_p=1.0)
            sync()
            rates.append((y.numel() - prompt.numel()) / (time.perf_counter() - t))
            for block in model.transformer.h:
                block.attn.kv_cache.reset_parameters()
        if rates:
            emit({"what": label, "tokens_per_s_by_run": [round(r, 1) for r in rates], **(extra or {})}, sink)

    time_generations(f"litgpt generate eager, batch 1, {plan.anchor_tokens} tokens", 2)
    if plan.device != "cuda" and not plan.compile:
        return
    if time_left() < 200:  # compiling 7B with coordinate-descent tuning takes minutes
        emit({"what": "litgpt generate --compile: skipped (time budget; run with --no-engine)"}, sink)
        return
    original = litgpt_generate.next_token
    torch._dynamo.config.automatic_dynamic_shapes = True  # as litgpt's generate --compile
    torch._inductor.config.triton.unique_kernel_names = True
    torch._inductor.config.coordinate_descent_tuning = True
    compiled = torch.compile(original, mode="reduce-overhead")
    litgpt_generate.next_token = compiled
    try:
        time_generations(f"litgpt generate --compile (reduce-overhead), {plan.anchor_tokens} tokens", 3)
    except Exception as e:
        emit({"what": "litgpt generate --compile", "error": f"{type(e).__name__}: {e}"[:400]}, sink)

        def fixed(*args: Any, **kwargs: Any) -> torch.Tensor:
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*args, **kwargs).clone()

        litgpt_generate.next_token = fixed
        for block in model.transformer.h:
            block.attn.kv_cache.reset_parameters()
        try:
            time_generations(
                f"litgpt generate --compile + mark_step_begin/clone fix, {plan.anchor_tokens} tokens",
                3,
                {"note": "the first runs include compilation"},
            )
        except Exception as e2:
            emit(
                {"what": "litgpt generate --compile with fix", "error": f"{type(e2).__name__}: {e2}"[:400]},
                sink,
            )
    finally:
        litgpt_generate.next_token = original


def guarded(name: str, fn: Callable[[], None], sink: list[dict[str, Any]]) -> None:
    try:
        fn()
    except Exception as e:  # keep what was measured; report the failure
        emit(
            {
                "what": name,
                "error": f"{type(e).__name__}: {e}"[:600],
                "trace": traceback.format_exc()[-1500:],
            },
            sink,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny config, seconds")
    p.add_argument("--out", type=Path, help="also write the records here (JSON)")
    p.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    p.add_argument("--decode-tokens", type=int, default=512, help="batch-1 decode length")
    p.add_argument("--stream-tokens", type=int, default=256, help="tokens per concurrent stream")
    p.add_argument("--anchor-tokens", type=int, default=128, help="tokens per litgpt generate run")
    p.add_argument(
        "--budget-s", type=float, default=470.0, help="the whole run; phases that won't fit are skipped"
    )
    p.add_argument("--no-engine", action="store_true", help="skip the serve engine (time only litgpt)")
    p.add_argument("--no-anchor", action="store_true", help="skip timing plain litgpt")
    p.add_argument("--tuning", action="store_true", help="compile with coordinate-descent kernel tuning")
    p.add_argument(
        "--restart", action="store_true", help="last: time a second start in a new process (warm caches)"
    )
    p.add_argument("--startup-only", action="store_true", help=argparse.SUPPRESS)  # --restart's child
    compile_group = p.add_mutually_exclusive_group()
    compile_group.add_argument("--compile", dest="compile", action="store_true", default=None)
    compile_group.add_argument("--no-compile", dest="compile", action="store_false")
    args = p.parse_args(argv)
    global BUDGET_S, OUT
    BUDGET_S, OUT = args.budget_s, args.out
    plan = make_plan(args)
    sink: list[dict[str, Any]] = []
    torch._logging.set_logs(perf_hints=True, recompiles=True)  # why CUDA graphs were skipped, if they were
    logging.getLogger("torch").addHandler(_CudagraphNotes())
    import litgpt

    emit(
        {
            "what": "environment",
            "device": torch.cuda.get_device_name()
            if plan.device == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "litgpt": getattr(litgpt, "__version__", None) or _dist_version("litgpt"),
            "python": platform.python_version(),
            "model": plan.config.name,
            "dtype": str(plan.dtype).removeprefix("torch."),
            "plan": {k: v for k, v in asdict(plan).items() if k not in ("config", "dtype")},
            "argv": sys.argv[1:],
        },
        sink,
    )
    if args.startup_only:
        guarded("startup-only", lambda: bench_startup_only(plan, sink), sink)
        return 0
    if not args.no_engine:
        guarded("engine", lambda: bench_engine(plan, sink), sink)
        gc.collect()
        if torch.cuda.is_available():
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    if not args.no_anchor and time_left() > 30:
        guarded("anchor", lambda: bench_anchor(plan, sink), sink)
    if args.restart:
        if time_left() > 120:
            gc.collect()
            # what decides the engine's shape and compile, from the parsed flags
            child_argv = ["--smoke"] if args.smoke else []
            child_argv += ["--streams", ",".join(map(str, args.streams))]
            child_argv += {True: ["--compile"], False: ["--no-compile"], None: []}[args.compile]
            child_argv += ["--tuning"] if args.tuning else []
            guarded("restart", lambda: bench_restart(child_argv, sink), sink)
        else:
            emit({"what": "restart: skipped (time budget; run the bench again on the same machine)"}, sink)
    emit({"what": "done", "total_s": round(time.perf_counter() - T0, 1)}, sink)
    return 0


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
