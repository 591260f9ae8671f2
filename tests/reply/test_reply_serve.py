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
                      prepared=tmp_path, debounce_s=0.0)  # fmt: skip
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
