"""Bounded load test of the real server: `python -m serve` on 127.0.0.1, many concurrent chat clients.

    python bench/serve_load.py --checkpoint-dir checkpoints/tiny-falcon   # after `make tiny`

Starts the server in a subprocess (CPU, an API key, the settings below), waits for /health to say ready,
then sends a fixed number of chat completions from `--concurrency` clients at once — half of them
streamed — and stops sending after `--time-limit` seconds. A request fails if its status is not 200, its
body is not a complete OpenAI answer (a stream must end with `data: [DONE]`), or it raises. Prints JSON:
failures, latency p50/p99 (whole request; first content for streams), throughput, the server's counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]

CHATS: list[list[dict[str, str]]] = [
    [{"role": "user", "name": "Anna", "content": "Are you free on friday?"}],
    [
        {"role": "user", "name": "Boris", "content": "hey"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "name": "Boris", "content": "Want to grab ramen later?"},
    ],
    [{"role": "user", "name": "Chloe", "content": "Did you see the new episode?? 😂"}],
    [
        {"role": "user", "name": "Dmitri", "content": "привет! how was your day?"},
        {"role": "assistant", "content": "long day 😴 but fine"},
        {"role": "user", "name": "Dmitri", "content": "I'm at the station, where are you?"},
    ],
]


@dataclass
class Result:
    ok: bool
    stream: bool
    latency: float
    first_content: float | None = None
    tokens: int = 0
    error: str | None = None


@dataclass
class Load:
    results: list[Result] = field(default_factory=list)
    issued: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_request(http: httpx.AsyncClient, i: int, max_tokens: int, stream: bool) -> Result:
    payload = {"model": "twin", "messages": CHATS[i % len(CHATS)], "max_tokens": max_tokens, "stream": stream}
    t = time.perf_counter()
    try:
        if not stream:
            r = await http.post("/v1/chat/completions", json=payload)
            latency = time.perf_counter() - t
            if r.status_code != 200:
                return Result(False, False, latency, error=f"HTTP {r.status_code}: {r.text[:200]}")
            body = r.json()
            assert body["object"] == "chat.completion" and isinstance(
                body["choices"][0]["message"]["content"], str
            )
            return Result(True, False, latency, tokens=body["usage"]["completion_tokens"])
        first = None
        chunks = 0
        done = False
        async with http.stream("POST", "/v1/chat/completions", json=payload) as r:
            if r.status_code != 200:
                await r.aread()
                return Result(
                    False, True, time.perf_counter() - t, error=f"HTTP {r.status_code}: {r.text[:200]}"
                )
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                assert chunk["object"] == "chat.completion.chunk", chunk
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    chunks += 1
                    first = first or time.perf_counter() - t
        latency = time.perf_counter() - t
        if not done:
            return Result(False, True, latency, error="stream ended without [DONE]")
        return Result(True, True, latency, first, tokens=chunks)
    except Exception as e:  # a failure of the server under test, counted and reported
        return Result(False, stream, time.perf_counter() - t, error=f"{type(e).__name__}: {e}"[:200])


async def run_load(url: str, key: str, args: argparse.Namespace) -> tuple[Load, float]:
    load = Load()
    deadline = time.perf_counter() + args.time_limit
    counter = iter(range(args.requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                return
            load.issued += 1
            load.results.append(await one_request(http, i, args.max_tokens, stream=i % 2 == 1))

    limits = httpx.Limits(max_connections=args.concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as http:
        t = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(args.concurrency)))
        return load, time.perf_counter() - t


def start_server(args: argparse.Namespace, port: int, key: str) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TWIN_")},
        "TWIN_API_KEY": key,
        "TWIN_DEVICE": "cpu",
        "TWIN_MAX_BATCH_SIZE": str(args.max_batch_size),
        "TWIN_MAX_QUEUE": str(args.requests),
        "TWIN_MAX_INPUT_TOKENS": str(args.max_input_tokens),
        "TWIN_MAX_NEW_TOKENS": str(args.max_tokens),
    }
    cmd = [sys.executable, "-m", "serve", "--checkpoint-dir", str(args.checkpoint_dir), "--port", str(port)]
    if args.lora_path:
        cmd += ["--lora-path", str(args.lora_path)]
    if args.cpu_threads:
        env["TWIN_CPU_THREADS"] = str(args.cpu_threads)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint-dir", type=Path, required=True)
    p.add_argument("--lora-path", type=Path)
    p.add_argument("--requests", type=int, default=200, help="requests in all")
    p.add_argument("--concurrency", type=int, default=16, help="clients sending at once")
    p.add_argument(
        "--max-tokens", type=int, default=32, help="max_tokens of each request (and the server cap)"
    )
    p.add_argument("--max-batch-size", type=int, default=8, help="the server's TWIN_MAX_BATCH_SIZE")
    p.add_argument("--max-input-tokens", type=int, default=256, help="the server's TWIN_MAX_INPUT_TOKENS")
    p.add_argument("--time-limit", type=float, default=300.0, help="stop sending new requests after this")
    p.add_argument("--cpu-threads", type=int, help="the server's TWIN_CPU_THREADS (default: cores - 1)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)

    port, key = free_port(), secrets.token_urlsafe(16)
    url = f"http://127.0.0.1:{port}"
    t = time.perf_counter()
    server = start_server(args, port, key)
    try:
        while True:
            if server.poll() is not None:
                sys.exit(
                    f"the server exited with {server.returncode}: run `python -m serve` by hand to see why"
                )
            try:
                health = httpx.get(f"{url}/health", timeout=2).json()
                if health.get("ready"):
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t > 300:
                sys.exit("the server was not ready after 300 s")
            time.sleep(0.2)
        ready_s = time.perf_counter() - t
        load, wall = asyncio.run(run_load(url, key, args))
        after = httpx.get(f"{url}/health", timeout=10).json()
    finally:
        server.terminate()
        server.wait(timeout=30)

    ok = [r for r in load.results if r.ok]
    latencies = [r.latency for r in ok]
    firsts = [r.first_content for r in ok if r.first_content is not None]
    report: dict[str, Any] = {
        "requests": len(load.results),
        "failures": len(load.results) - len(ok),
        "failure_examples": sorted({r.error or "" for r in load.results if not r.ok})[:5],
        "concurrency": args.concurrency,
        "server_cpu_threads": args.cpu_threads or "default",
        "streamed": sum(r.stream for r in load.results),
        "max_tokens": args.max_tokens,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 2),
        "completion_tokens_per_s": round(after["tokens_generated"] / wall, 1),
        "latency_s": {
            "p50": round(statistics.median(latencies), 3) if latencies else None,
            "p99": round(percentile(latencies, 0.99) or 0, 3),
            "max": round(max(latencies), 3) if latencies else None,
        },
        "stream_first_content_s": {
            "p50": round(statistics.median(firsts), 3) if firsts else None,
            "p99": round(percentile(firsts, 0.99) or 0, 3),
        },
        "server": {
            "process_start_to_ready_s": round(ready_s, 2),
            "startup_seconds": health.get("startup_seconds"),
            "decode_steps": after["decode_steps"],
            "tokens_generated": after["tokens_generated"],
            "finished": after["finished"],
            "max_batch_size": after["max_batch_size"],
        },
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
