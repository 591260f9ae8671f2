"""`make demo`: the whole twin pipeline on the shipped sample chats, on a CPU, no credentials, no downloads.

collect (the synthetic Telegram Desktop export in examples/sample_export) → prepare (secrets scrubbed) →
a tiny Falcon-shaped checkpoint → LoRA fine-tune → the twin-quality report → the server on a free loopback
port: wait for /health, ask /v1/chat/completions for a reply, stop it → how to chat in the browser.

Every stage runs through its own CLI, exactly as a user would call it. The demo's folders (data/demo,
checkpoints/tiny-falcon-demo, out/demo) are rebuilt from scratch on every run; nothing else is touched.
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

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_EXPORT = Path("examples/sample_export")
# Two partners of the sample chats write to the twin (in English and in Russian); it answers as Sasha.
QUESTIONS = [("Maya Fontaine", "Climbing on saturday?"), ("Дима Орлов", "Смотришь сегодня матч?")]
# The tiny model: 4 layers of width 128 (~0.9M parameters), a 1k BPE vocabulary, 512-token context.
TINY_ARGS = (
    "--n-layer 4 --n-embd 128 --n-head 4 --block-size 512 --vocab-size 1024 --pretrain-steps 100".split()
)
# A short CPU fine-tune: batches of 16 replies, 12 epochs, LoRA on every attention and MLP layer.
TRAIN_ARGS = (
    "--accelerator cpu --precision 32-true --global-batch-size 16 --epochs 12 --learning-rate 2e-3".split()
)
TRAIN_ARGS += "--eval-interval 40 --lora-key --lora-projection --lora-mlp".split()


@dataclass(frozen=True)
class Paths:
    raw: Path
    prepared: Path
    checkpoint: Path
    twin: Path
    report: Path
    log: Path

    @classmethod
    def under(cls, data: Path, checkpoint: Path, out: Path) -> Paths:
        return cls(
            data / "raw", data / "prepared", checkpoint, out / "twin", out / "report", out / "serve.log"
        )


class DemoError(Exception):
    """A step failed; the message says which and what to look at."""


def child_env() -> dict[str, str]:
    """The demo's environment for every stage: no TWIN_* settings of the user's, one torch thread.

    The tiny model's matrices are small: on a 2-core box shared with other work, two spinning OpenMP
    threads per process made each step several times slower than one (set OMP_NUM_THREADS to override).
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


def ask_twin(
    paths: Paths, timings: dict[str, float], questions: Sequence[tuple[str, str]] = QUESTIONS
) -> list[str]:
    """Start the server on a free loopback port, fetch the twin's reply to each question, stop the server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    adapter = paths.twin / "lit_model_lora_finetuned.pth"
    args = ["--checkpoint-dir", str(paths.checkpoint), "--lora-path", str(adapter), "--port", str(port)]
    cmd = [sys.executable, "-m", "serve", *args, "--device", "cpu"]
    print(f"$ python -m serve {' '.join(args)} --device cpu", flush=True)
    t0 = time.perf_counter()
    make_private_dir(paths.log.parent)
    fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as log:
        server = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    try:
        health = wait_ready(url, server, paths.log)
        print(
            f"  /health: ready on {health.get('device')} after {time.perf_counter() - t0:.1f} s", flush=True
        )
        replies = []
        for name, text in questions:
            messages = [{"role": "user", "name": name, "content": text}]
            request = {"model": "twin", "messages": messages, "max_tokens": 40, "temperature": 0.3}
            response = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=120.0)
            if response.status_code != 200:
                raise DemoError(
                    f"/v1/chat/completions answered {response.status_code}: {response.text[:300]}"
                )
            replies.append(response.json()["choices"][0]["message"]["content"])
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    timings["serve: start, answer, stop"] = time.perf_counter() - t0
    return replies


def fresh(paths: Paths) -> None:
    """Remove the demo's own folders (and only those) so every run starts from the sample export."""
    for path in (paths.raw.parent, paths.checkpoint, paths.twin.parent):
        if path.exists():
            shutil.rmtree(path)


def pipeline(paths: Paths) -> list[tuple[str, list[str]]]:
    """(title, command) of every step before serving: each is a stage's CLI, as a user would type it."""
    ckpt, data = str(paths.checkpoint), str(paths.prepared)
    return [
        ("collect the sample Telegram Desktop export",
         ["python", "-m", "collect", "desktop", str(SAMPLE_EXPORT), "--out", str(paths.raw)]),
        ("prepare instruction records (secrets scrubbed)",
         ["python", "-m", "prepare", "--raw", str(paths.raw), "--out", data, "--val-fraction", "0.1"]),
        ("build a tiny Falcon-shaped base model",
         ["python", "-m", "finetune.tiny", "--data", data, "--out", ckpt, *TINY_ARGS]),
        ("LoRA fine-tune the twin on the CPU",
         ["python", "-m", "finetune", "--data", data, "--checkpoint-dir", ckpt, "--out-dir", str(paths.twin),
          *TRAIN_ARGS]),
        ("twin-quality report",
         ["python", "-m", "finetune.report", "--data", data, "--checkpoint-dir", ckpt, "--lora-path",
          str(paths.twin), "--out", str(paths.report), "--samples", "40", "--device", "cpu"]),
    ]  # fmt: skip


def run(paths: Paths) -> int:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    fresh(paths)
    steps = pipeline(paths)
    total = len(steps) + 1
    for number, (title, cmd) in enumerate(steps, start=1):
        step(number, total, title, cmd, timings)
    print(f"\n\033[1m[6/{total}] serve the twin and ask it something\033[0m", flush=True)
    replies = ask_twin(paths, timings)
    elapsed = time.perf_counter() - t0

    found = json.loads((paths.report / "report.json").read_text(encoding="utf-8"))["perplexity"]
    print("\n" + "─" * 78)
    for (name, text), reply in zip(QUESTIONS, replies, strict=True):
        print(f"{name}: {text}")
        print("twin (Sasha): " + reply.replace("\n", "\n              ") + "\n")
    print("─" * 78)
    for title, seconds in timings.items():
        print(f"  {seconds:6.1f} s  {title}")
    print(f"\nReport: {paths.report / 'report.md'} (held-out perplexity base {found['base']:.2f} → twin "
          f"{found['twin']:.2f})")  # fmt: skip
    print("Chat with the demo twin in your browser (two terminals):")
    print(f"  make serve CHECKPOINT={paths.checkpoint} OUT={paths.twin}")
    print("  make ui        # then open http://localhost:8501")
    print(f"\ndemo finished in {elapsed / 60:.1f} min: twin in {paths.twin}, report in {paths.report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/demo"), help="demo data folder (raw + prepared)")
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/tiny-falcon-demo"), help="tiny model")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="adapter, report and server log")
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
