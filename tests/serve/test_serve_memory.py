"""Memory at serving time: a twin trained with --memory-k loads its memory.jsonl once, each chat's prompt
shows the exchanges retrieved for it (as training rendered them), /health says so, TWIN_MEMORY_K=0 turns
it off; nothing of the memory or the chat is logged."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from serve_helpers import make_settings, user

from finetune.twin import HPARAMS_FILE, TwinError
from prepare.memory import MEMORY_FILE, Exchange, Memory
from prepare.prompt import MEMORY_BLOCK
from serve.app import create_app
from serve.routes.chat import plan_generation
from serve.schemas import ChatCompletionRequest
from serve.service import TwinService, build_service
from serve.settings import Settings

HEADING = MEMORY_BLOCK.split("\n")[0]
ZEBRA = Exchange("how is the zebra at the zoo", "the zebra sleeps all day, lazy zebra")
EXCHANGES = [
    Exchange("are you free on friday", "yeah friday works"),
    Exchange("want to grab pizza later", "always down for pizza"),
    ZEBRA,
]
CHAT = [user("hey", name="Anna"), {"role": "assistant", "content": "hi"}, user("seen the zebra today?")]


@pytest.fixture(scope="module")
def memory_twin(lora_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the served adapter's out-dir as a memory twin: memory_k 2 and a memory.jsonl beside it."""
    out = tmp_path_factory.mktemp("memory-twin") / "twin"
    shutil.copytree(lora_path.parent, out, ignore=shutil.ignore_patterns("checkpoints"))
    hparams = yaml.safe_load((out / HPARAMS_FILE).read_text())
    (out / HPARAMS_FILE).write_text(yaml.safe_dump(hparams | {"memory_k": 2}))
    Memory(EXCHANGES).save(out / MEMORY_FILE)
    return out


def memory_service(settings: Settings, shared: TwinService) -> TwinService:
    """The service `build_service` makes of `settings`, on the session's started engine (same weights:
    the memory twin's adapter is a copy of the served one)."""
    return dataclasses.replace(build_service(settings), engine=shared.engine)


@pytest.fixture(scope="module")
def memory_settings(tiny_checkpoint: Path, memory_twin: Path) -> Settings:
    return make_settings(tiny_checkpoint, memory_twin, max_input_tokens=200)


@pytest.fixture(scope="module")
def memory_client(memory_settings: Settings, service: TwinService) -> Iterator[TestClient]:
    with TestClient(create_app(memory_settings, memory_service(memory_settings, service))) as client:
        yield client


def plan_prompt(settings: Settings, service: TwinService) -> str:
    body = ChatCompletionRequest.model_validate({"model": "twin", "messages": CHAT, "max_tokens": 4})
    return asyncio.run(plan_generation(body, service, settings)).prompt


def test_health_reports_the_memory(memory_client: TestClient, client: TestClient) -> None:
    body = memory_client.get("/health").json()
    assert body["ready"] is True and (body["memory_exchanges"], body["memory_k"]) == (3, 2)
    plain = client.get("/health").json()  # an adapter trained without memory
    assert (plain["memory_exchanges"], plain["memory_k"]) == (0, 0)


def test_each_prompt_shows_the_exchanges_retrieved_for_the_chat(
    memory_settings: Settings, service: TwinService
) -> None:
    served = memory_service(memory_settings, service)
    prompt = plan_prompt(memory_settings, served)
    assert f"{HEADING}\nThem: {ZEBRA.message}\nMe: {ZEBRA.reply}\n\n### Our previous messages:" in prompt
    assert "pizza" not in prompt  # only what shares words with the chat
    # the very prompt training renders for such a record (same Prompter, same retrieval)
    assert prompt == served.prompter.prompt_from_messages(CHAT, memories=[ZEBRA])


def test_twin_memory_k_0_switches_it_off(
    memory_settings: Settings, service: TwinService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWIN_MEMORY_K", "0")
    off = make_settings(memory_settings.checkpoint_dir, memory_settings.lora_path, max_input_tokens=200)
    assert off.memory_k == 0
    served = memory_service(off, service)
    assert served.memory is None and served.memory_k == 0
    assert plan_prompt(off, served) == served.prompter.prompt_from_messages(CHAT)
    with TestClient(create_app(off, served)) as client:
        body = client.get("/health").json()
        assert (body["memory_exchanges"], body["memory_k"]) == (0, 0)
    # and TWIN_MEMORY_K=1 shows fewer than the twin was trained with
    monkeypatch.setenv("TWIN_MEMORY_K", "1")
    one = make_settings(memory_settings.checkpoint_dir, memory_settings.lora_path, max_input_tokens=200)
    assert memory_service(one, service).memory_k == 1


def test_chat_completion_with_memory_and_nothing_private_logged(
    memory_client: TestClient, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    request = {"model": "twin", "messages": CHAT, "max_tokens": 4, "temperature": 0}
    with caplog.at_level(logging.DEBUG):
        with_memory = memory_client.post("/v1/chat/completions", json=request)
    assert with_memory.status_code == 200, with_memory.text
    without = client.post("/v1/chat/completions", json=request).json()
    assert with_memory.json()["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "zebra" not in logged and "lazy" not in logged


def test_a_memory_that_is_not_there_is_refused_in_one_line(
    tiny_checkpoint: Path, memory_twin: Path, lora_path: Path, tmp_path: Path
) -> None:
    gone = tmp_path / "twin"
    shutil.copytree(memory_twin, gone)
    (gone / MEMORY_FILE).unlink()
    with pytest.raises(TwinError, match=f"{MEMORY_FILE} is missing.*TWIN_MEMORY_K=0"):
        build_service(make_settings(tiny_checkpoint, gone))
    build_service(make_settings(tiny_checkpoint, gone, memory_k=0))  # switched off: serves
    with pytest.raises(TwinError, match="TWIN_MEMORY_K=2 needs an adapter trained with memory"):
        build_service(make_settings(tiny_checkpoint, None, memory_k=2))
    (gone / MEMORY_FILE).write_text('{"message": "hi"}\n')
    with pytest.raises(TwinError, match=rf"{MEMORY_FILE}:1: field 'reply'"):
        build_service(make_settings(tiny_checkpoint, gone))
