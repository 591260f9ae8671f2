"""A real `python -m serve` on 127.0.0.1 (uvicorn, one process, the tiny model with an adapter), talked to
with the official `openai` client — plain and streaming — and with raw HTTP for batching, 503 + Retry-After,
and a client that hangs up mid-stream. Plus the CLI's refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from serve_helpers import free_port, make_adapter, user

KEY = "test-key-0123456789"
MAX_NEW = 1024
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def wait_idle(self, timeout: float = 30.0) -> dict:
        """Health once nothing is generating (an earlier test's hung-up streams take a step to end)."""
        deadline = time.monotonic() + timeout
        while (health := self.health())["active"] or health["queued"]:
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        return health

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("ready"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server not ready")


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # The tiny checkpoint with no end-of-text token and a 2048-token context (RoPE extends to any length;
    # the weights do not depend on it), and a scrambled adapter: replies run to max_tokens, so the tests
    # below can act while a request is still generating.
    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path_factory.mktemp("openai") / "tiny-falcon"))
    config = yaml.safe_load((checkpoint / "model_config.yaml").read_text())
    (checkpoint / "model_config.yaml").write_text(yaml.safe_dump({**config, "block_size": 2048}))
    tokenizer_config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    del tokenizer_config["eos_token"], tokenizer_config["bos_token"]
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (checkpoint / "generation_config.json").unlink(missing_ok=True)
    adapter = make_adapter(checkpoint, checkpoint.parent / "twin", seed=1, scale=0.3)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TWIN_")},
        "TWIN_API_KEY": KEY,
        "TWIN_MAX_BATCH_SIZE": "2",
        "TWIN_MAX_QUEUE": "0",
        "TWIN_MAX_INPUT_TOKENS": "96",
        "TWIN_MAX_NEW_TOKENS": str(MAX_NEW),
        "TWIN_DEFAULT_STOP": "[]",
        "TWIN_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    args = ["--checkpoint-dir", str(checkpoint), "--lora-path", str(adapter), "--port", str(port)]
    process = subprocess.Popen([sys.executable, "-m", "serve", *args], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield Server(url, process)
    finally:
        process.terminate()
        process.wait(timeout=30)


MESSAGES = [
    user("hey", name="Chloe"),
    {"role": "assistant", "content": "hi!"},
    user("Did you see the trailer?"),
]


def test_openai_client_plain(server: Server) -> None:
    reply = server.client().chat.completions.create(
        model="twin", messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert reply.object == "chat.completion" and reply.model == "twin"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert [m.id for m in server.client().models.list()] == ["twin"]


def test_openai_client_streaming(server: Server) -> None:
    client = server.client()
    plain = client.chat.completions.create(model="twin", messages=MESSAGES, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model="twin",
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_openai_client_errors(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").chat.completions.create(model="twin", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="must end with a non-empty 'user' message"):
        server.client().chat.completions.create(
            model="twin", messages=[{"role": "assistant", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError, match="serves 'twin'"):
        server.client().chat.completions.create(model="gpt-4o", messages=MESSAGES)


def long_request() -> dict:
    return {"model": "twin", "messages": MESSAGES, "max_tokens": MAX_NEW, "temperature": 0, "stream": True}


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_long_greedy_reply_precondition(server: Server) -> None:
    """The requests below rely on replies running to max_tokens."""
    reply = server.client().chat.completions.create(
        model="twin", messages=MESSAGES, max_tokens=MAX_NEW, temperature=0
    )
    assert (
        reply.choices[0].finish_reason == "length"
        and reply.usage
        and reply.usage.completion_tokens == MAX_NEW
    )


def test_a_stop_string_ends_generation_early(server: Server) -> None:
    client = server.client()
    full = client.chat.completions.create(model="twin", messages=MESSAGES, max_tokens=40, temperature=0)
    text = full.choices[0].message.content or ""
    stop = text[4:7]
    before = server.wait_idle()["finished"]
    cut = client.chat.completions.create(
        model="twin", messages=MESSAGES, max_tokens=MAX_NEW, temperature=0, stop=stop
    )
    assert (
        cut.choices[0].message.content == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    )
    assert cut.usage is not None and cut.usage.completion_tokens < 40
    after = server.wait_idle()["finished"]  # the slot was freed there, not after MAX_NEW tokens
    assert after.get("stop_string", 0) == before.get("stop_string", 0) + 1
    assert after.get("length", 0) == before.get("length", 0)


def test_concurrent_requests_are_decoded_together(server: Server) -> None:
    before = server.wait_idle()
    results: list[int] = []

    def ask() -> None:
        reply = server.client().chat.completions.create(
            model="twin", messages=MESSAGES, max_tokens=300, temperature=0
        )
        assert reply.usage is not None
        results.append(reply.usage.completion_tokens)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = server.health()
    assert results == [300, 300]
    steps = after["decode_steps"] - before["decode_steps"]
    assert steps < 2 * 300 - 2  # one decode step served both requests most of the time


def test_full_server_answers_503_with_retry_after(server: Server) -> None:
    server.wait_idle()
    with httpx.Client(base_url=server.url, headers=auth(), timeout=60) as http:
        with (
            http.stream("POST", "/v1/chat/completions", json=long_request()) as a,
            http.stream("POST", "/v1/chat/completions", json=long_request()) as b,
        ):
            assert a.status_code == b.status_code == 200
            # keep both line iterators: a dropped one closes its connection (httpx), which cancels
            lines_a, lines_b = a.iter_lines(), b.iter_lines()
            next(lines_a), next(lines_b)  # both generating: 2 slots busy, no queue
            r = http.post("/v1/chat/completions", json={**long_request(), "stream": False, "max_tokens": 4})
            assert r.status_code == 503
            assert r.headers["retry-after"] == "2" and "server busy" in r.json()["detail"]
            assert server.health()["active"] == 2


def test_hanging_up_cancels_the_generation(server: Server) -> None:
    cancelled = server.wait_idle()["finished"].get("cancelled", 0)
    with httpx.Client(base_url=server.url, headers=auth(), timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=long_request()) as r:
            for line in r.iter_lines():  # read up to the first content delta
                if line.startswith("data: {") and '"delta": {"content"' in line:
                    break
            else:
                pytest.fail("the stream ended before its first content delta")
        # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 30
    while (health := server.health())["finished"].get("cancelled", 0) == cancelled or health["active"]:
        assert time.monotonic() < deadline, f"the server kept generating for a client that left: {health}"
        time.sleep(0.05)
    assert health["finished"]["cancelled"] == cancelled + 1


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")} | env
    return subprocess.run(
        [sys.executable, "-m", "serve", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_refuses_a_public_bind_without_a_key(tiny_checkpoint: Path) -> None:
    r = run_cli("--checkpoint-dir", str(tiny_checkpoint), "--host", "0.0.0.0")
    assert r.returncode == 2 and "TWIN_API_KEY" in r.stderr and "0.0.0.0" in r.stderr


def test_cli_reports_a_wrong_checkpoint(tmp_path: Path) -> None:
    r = run_cli("--checkpoint-dir", str(tmp_path / "nope"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert "--api-key" not in run_cli("--help").stdout  # the key never goes on a command line
