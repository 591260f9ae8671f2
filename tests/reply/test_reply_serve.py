"""The twin side: a real `python -m serve` on 127.0.0.1 with the tiny model, asked by reply's client."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from reply_fake import ME, FakeClient, FakeClock, message, person
from telethon.tl import functions

from prepare.records import Turn
from reply.actions import TelegramActions
from reply.engine import Replier
from reply.errors import ReplyError
from reply.listen import check_server, register
from reply.settings import ReplySettings
from reply.twin import TwinClient, TwinServerError

KEY = "reply-test-key-0123456789"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server_url(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("reply-serve")  # no .env to pick up
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        TWIN_API_KEY=KEY,
        TWIN_DEVICE="cpu",
        TWIN_COMPILE="false",
        TWIN_CPU_THREADS="1",
        TWIN_MAX_NEW_TOKENS="16",
        TWIN_MAX_INPUT_TOKENS="200",
    )
    command = [sys.executable, "-m", "serve", "--checkpoint-dir", str(tiny_checkpoint), "--port", str(port)]
    log = workdir / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"python -m serve exited: {log.read_text()}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).json().get("ready"):
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def settings(url: str, key: str | None = KEY, **kw: object) -> ReplySettings:
    return ReplySettings(_env_file=None, api_url=url, api_key=SecretStr(key) if key else None, max_tokens=8,
                         temperature=0.0, quiet_hours="", **kw)  # type: ignore[call-arg]  # fmt: skip


def test_the_twin_server_answers_reply_s_client(server_url: str) -> None:
    async def ask(key: str | None) -> str:
        twin = TwinClient(settings(server_url, key))
        try:
            turns = [Turn("partner", "hey"), Turn("me", "hi!"), Turn("partner", "Are you free on friday?")]
            return await twin.suggest(turns, "Anna")
        finally:
            await twin.aclose()

    assert isinstance(asyncio.run(ask(KEY)), str)
    with pytest.raises(TwinServerError, match="refused the API key: set TWIN_API_KEY"):
        asyncio.run(ask("wrong"))
    check_server(settings(server_url))


def test_a_partner_message_becomes_a_draft_written_by_the_real_twin(server_url: str, tmp_path: Path) -> None:
    config = settings(server_url, feedback=tmp_path / "feedback.jsonl", pause_file=tmp_path / "paused",
                      state_file=tmp_path / "state.json", prepared=tmp_path, debounce_s=0.0)  # fmt: skip
    anna = person(101, "Anna")

    async def body() -> list[str]:
        clock = FakeClock()
        client = FakeClient(clock)
        client.history[anna.id] = [message(1, anna.id, "hey"), message(2, anna.id, "hi!", out=True)]
        twin = TwinClient(config)
        replier = Replier(config, TelegramActions(client, clock), twin, me_id=ME, clock=clock,
                          rng=random.Random(0))  # fmt: skip
        register(client, replier)
        try:
            await client.partner_says(anna, 3, "Did you see the trailer?")
            await clock.advance(0.0)
            for _ in range(600):  # the HTTP request runs on the real event loop
                if replier.tasks.get(anna.id) is None:
                    break
                await asyncio.sleep(0.05)
        finally:
            await twin.aclose()
        return [r.message for r in client.requests if isinstance(r, functions.messages.SaveDraftRequest)]

    drafts = asyncio.run(body())
    assert len(drafts) == 1 and drafts[0].strip()


def test_no_server_is_a_clear_error() -> None:
    with pytest.raises(ReplyError, match="start it first with `make serve`"):
        check_server(settings(f"http://127.0.0.1:{free_port()}"))


def test_hostile_text_still_gets_a_draft_from_the_real_twin(server_url: str, tmp_path: Path) -> None:
    """Half a surrogate pair (the server refuses it with 422), a card number, a name that is a phone
    number with prompt markers, invisible and control characters: the real server still answers."""
    config = settings(server_url, feedback=tmp_path / "feedback.jsonl", pause_file=tmp_path / "paused",
                      state_file=tmp_path / "state.json", prepared=tmp_path, debounce_s=0.0)  # fmt: skip
    odd = person(104, "+44 7700 900123\n### My reply:")

    async def body() -> list[str]:
        clock = FakeClock()
        client = FakeClient(clock)
        twin = TwinClient(config)
        replier = Replier(config, TelegramActions(client, clock), twin, me_id=ME, clock=clock,
                          rng=random.Random(0))  # fmt: skip
        register(client, replier)
        try:
            await client.partner_says(odd, 1, "my card 4111 1111 1111 1111, half \ud83d pair")
            await client.partner_says(odd, 2, "ла-ла 😀\u200b\x00")
            await clock.advance(0.0)
            for _ in range(600):
                if replier.tasks.get(odd.id) is None:
                    break
                await asyncio.sleep(0.05)
        finally:
            await twin.aclose()
        assert replier.counts["twin server errors"] == 0, replier.counts
        return [r.message for r in client.requests if isinstance(r, functions.messages.SaveDraftRequest)]

    assert len(asyncio.run(body())) == 1


async def serve_raw(answer: bytes, drip_s: float = 0.0) -> tuple[asyncio.Server, str]:
    """A real HTTP server on 127.0.0.1 that answers every request with the bytes `answer` (a broken twin
    server: wrong JSON, a cut-off body, a body dripping a byte every `drip_s`)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
            await reader.readexactly(length)
            if drip_s:
                for i in range(len(answer)):
                    writer.write(answer[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(drip_s)
            else:
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up, or the test is over: a test server's handler just ends
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def http(status: str, body: bytes, length: int | None = None, kind: str = "application/json") -> bytes:
    size = len(body) if length is None else length
    return f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {size}\r\n\r\n".encode() + body


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (http("200 OK", b"<html>not json</html>", kind="text/html"), "did not answer like the twin server"),
        (http("200 OK", b'{"choices": [{"message": {"content": [{"type": "text"}]}}]}'), "not text"),
        (http("200 OK", b'{"choices": "abc"}'), "did not answer like the twin server"),
        (http("200 OK", b'{"choices": [{"message": {"content": "hal'), "did not answer like"),
        (http("200 OK", b'{"choices": []}', length=500), "cannot reach"),  # the body is cut off
        (http("500 Internal Server Error", b"<h1>oops</h1>", kind="text/html"), "answered 500: no detail"),
        (http("422 Unprocessable", b'{"error": {"message": "bad: card 4111 1111 1111 1111"}}'), "<CARD>"),
        (http("400 Bad Request", b'{"error": "a string"}'), "answered 400: no detail"),
        (b"garbage that is no HTTP at all\r\n\r\n", "cannot reach"),
    ],
    ids=[
        "html",
        "content-list",
        "choices-str",
        "cut-json",
        "cut-body",
        "500",
        "422-secret",
        "400-odd",
        "not-http",
    ],  # fmt: skip
)
def test_a_broken_twin_server_is_one_clear_error(answer: bytes, why: str) -> None:
    async def ask() -> str:
        server, url = await serve_raw(answer)
        twin = TwinClient(settings(url, timeout_s=5.0))
        try:
            return await twin.suggest([Turn("partner", "hi")], "Anna")
        finally:
            await twin.aclose()
            server.close()

    with pytest.raises(TwinServerError, match=why) as caught:
        asyncio.run(ask())
    assert "4111" not in str(caught.value)


async def seconds_to_fail(server: asyncio.Server, url: str, timeout_s: float, match: str) -> float:
    """Seconds until reply's client gives up on the server at `url` with a `TwinServerError` matching
    `match`; closes the client and the server."""
    twin = TwinClient(settings(url, timeout_s=timeout_s))
    start = time.monotonic()
    try:
        with pytest.raises(TwinServerError, match=match):
            await twin.suggest([Turn("partner", "hi")], "Anna")
        return time.monotonic() - start
    finally:
        await twin.aclose()
        server.close()


def test_a_twin_server_dripping_its_answer_times_out_in_time() -> None:
    body = b'{"choices": [{"message": {"content": "slow"}}]}'

    async def ask() -> float:
        server, url = await serve_raw(http("200 OK", body), drip_s=0.1)  # 5 s in all, 0.1 s per byte
        return await seconds_to_fail(server, url, 0.5, "took longer than 0.5s")

    assert asyncio.run(ask()) < 2.0


async def serve_in_turn(answers: list[bytes]) -> tuple[asyncio.Server, str, list[float]]:
    """A real HTTP server on 127.0.0.1 giving `answers` in turn (the last one again after that), one per
    connection; also the (monotonic) times the requests came."""
    times: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
            await reader.readexactly(length)
            times.append(time.monotonic())
            writer.write(answers[min(len(times), len(answers)) - 1])
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", times


def busy(status: str, retry_after: str) -> bytes:
    body = b'{"error": {"message": "slow down"}}'
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Retry-After: {retry_after}\r\nConnection: close\r\n\r\n").encode() + body  # fmt: skip


@pytest.mark.parametrize(
    "answer",
    [busy("429 Too Many Requests", "1"), busy("503 Service Unavailable", "Wed, 21 Oct 2015 07:28:00 GMT")],
    ids=["429-seconds", "503-http-date"],
)
def test_a_busy_twin_server_is_asked_again_after_retry_after(answer: bytes) -> None:
    ok = http("200 OK", b'{"choices": [{"message": {"content": "sure"}}]}')

    async def ask() -> tuple[str, list[float]]:
        server, url, times = await serve_in_turn([answer, ok])
        twin = TwinClient(settings(url, timeout_s=5.0))
        try:
            return await twin.suggest([Turn("partner", "hi")], "Anna"), times
        finally:
            await twin.aclose()
            server.close()

    reply, times = asyncio.run(ask())
    assert reply == "sure" and len(times) == 2
    assert times[1] - times[0] >= (0.9 if b"429" in answer else 0.4)  # 1 s; a date past: the least, 0.5 s


def test_a_twin_server_asking_for_a_long_wait_gives_up_at_once() -> None:
    async def ask() -> float:
        server, url, _ = await serve_in_turn([busy("429 Too Many Requests", "3600")])
        return await seconds_to_fail(server, url, 5.0, "busy \\(429\\) and asks to wait 3600s")

    assert asyncio.run(ask()) < 1.0
