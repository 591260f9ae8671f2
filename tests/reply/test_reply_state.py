"""The listener's memory across restarts (`reply.state`): a restarted listener, on the same state file,
still counts the last hour's auto-replies and never answers a message again; the file is owner-only and
small; a damaged one is one clear line. Telegram is the fake client of `reply_fake`, in virtual time."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from reply_fake import ANNA, BORIS, T0, FakeEvent, World, build_world, message

from reply.cli import main
from reply.errors import ReplyError


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


@pytest.fixture(autouse=True)
def _no_server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWIN_API_URL", raising=False)


def restart(before: World, tmp_path: Path, after: timedelta, **settings: Any) -> World:
    """A new listener on the same files `after` the first one started; Telegram keeps the chats."""
    world = build_world(tmp_path, start=T0 + after, **settings)
    world.client.history = before.client.history
    world.client.drafts = before.client.drafts
    world.client.next_id = before.client.next_id
    return world


def sent_to(world: World, chat_id: int) -> list[str]:
    return [text for entity, text, _ in world.client.sent if getattr(entity, "id", entity) == chat_id]


def test_a_restarted_listener_still_counts_the_last_hours_auto_replies(tmp_path: Path) -> None:
    limits: dict[str, Any] = {"replies": ("ok",), "auto_reply": [ANNA.id, BORIS.id], "per_chat_per_hour": 2,
                              "global_per_hour": 3}  # fmt: skip
    first = build_world(tmp_path, **limits)

    async def crash_loop() -> None:
        for mid in (1, 2):  # Anna: the per-chat limit
            await first.client.partner_says(ANNA, mid, f"question {mid}")
            await first.clock.advance(60)
        assert sent_to(first, ANNA.id) == ["ok", "ok"]

        second = restart(first, tmp_path, timedelta(minutes=10), **limits)
        await second.client.partner_says(ANNA, 3, "question 3")
        await second.clock.advance(60)
        assert sent_to(second, ANNA.id) == []  # past the limit: a draft instead
        assert second.drafts() == [(ANNA.id, "ok")]
        await second.client.partner_says(BORIS, 4, "coffee?")
        await second.clock.advance(60)
        assert sent_to(second, BORIS.id) == ["ok"]  # the third auto-reply of the hour

        third = restart(second, tmp_path, timedelta(minutes=20), **limits)
        await third.client.partner_says(BORIS, 5, "still there?")
        await third.clock.advance(60)
        assert third.client.sent == [] and third.drafts() == [(BORIS.id, "ok")]  # the limit over all chats

        later = restart(third, tmp_path, timedelta(minutes=62), **limits)  # the first sends are an hour old
        later.client.drafts.clear()  # the person dealt with the drafts (else they would hold replies back)
        await later.client.partner_says(ANNA, 6, "question 6")
        await later.clock.advance(60)
        assert sent_to(later, ANNA.id) == ["ok"]

    run(crash_loop)


@pytest.mark.parametrize("mode", ["draft", "saved"])
def test_a_restarted_listener_does_not_answer_a_message_again(tmp_path: Path, mode: str) -> None:
    """Telegram hands a restarted client the updates it had not confirmed: the same message again."""
    first = build_world(tmp_path, replies=("see you at 8",), mode=mode)
    hello = message(1, ANNA.id, "dinner tonight?")
    first.client.history[ANNA.id] = [hello]

    async def body() -> None:
        await first.client.dispatch(FakeEvent(hello, ANNA))
        await first.clock.advance(60)
        assert len(first.twin.asked) == 1
        await first.replier.close()

        second = restart(first, tmp_path, timedelta(minutes=1), replies=("see you at 8",), mode=mode)
        second.client.drafts.clear()  # the person cleared the first draft
        await second.client.dispatch(FakeEvent(hello, ANNA))  # the same message, delivered again
        await second.clock.advance(60)
        assert second.twin.asked == [] and second.client.sent == [] and second.drafts() == []
        await second.client.partner_says(ANNA, 2, "or tomorrow?")  # a new one is answered
        await second.clock.advance(60)
        assert len(second.twin.asked) == 1
        assert len(second.client.sent if mode == "saved" else second.drafts()) == 1

    run(body)


def test_the_state_file_is_owner_only_and_keeps_only_the_last_hour(tmp_path: Path) -> None:
    w = build_world(tmp_path, replies=("ok",), auto_reply=[ANNA.id], per_chat_per_hour=2)

    async def body() -> None:
        for mid in range(1, 6):  # one auto-reply every 40 minutes, for over two hours
            await w.client.partner_says(ANNA, mid, f"question {mid}")
            await w.clock.advance(40 * 60)

    run(body)
    path = w.settings.state_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    saved = json.loads(path.read_text())
    assert saved["version"] == 1 and saved["saved"] == {}
    last = T0.timestamp() + 4 * 40 * 60  # the fifth question's reply (debounce aside)
    (times,) = saved["auto_replies"].values()
    assert len(times) == 2 and all(last - 3600 < t <= last + 60 for t in times)  # older ones pruned
    assert saved["answered"] == {str(ANNA.id): {"message_id": 5, "at": times[-1]}}


def state_json(**fields: Any) -> bytes:
    return json.dumps({"version": 1, "auto_replies": {}, "saved": {}, "answered": {}, **fields}).encode()


DAMAGED: dict[str, bytes] = {
    "cut short": b'{"version": 1, "auto_replies": {"101": [1717416000.0,',
    "empty": b"",
    "not an object": b"[]",
    "a newer version": state_json(version=2),
    "a time that is no number": state_json(auto_replies={"101": ["soon"]}),
    "a chat id that is no number": state_json(auto_replies={"anna": []}),
    "an answered id below zero": state_json(answered={"101": {"message_id": -1, "at": 0.0}}),
    "a field it never writes": state_json(sends=[]),
}


@pytest.mark.parametrize("content", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_state_file_is_one_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state" / "state.json"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ReplyError) as caught:
        build_world(tmp_path)
    message = str(caught.value)
    assert str(path) in message and "delete it" in message and "\n" not in message
    assert path.read_bytes() == content  # left for the person to look at


def test_an_unreadable_state_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state" / "state.json").mkdir(parents=True)  # a folder where the file should be
    with pytest.raises(ReplyError, match=r"cannot read the reply state .*state\.json \(Is a directory\)"):
        build_world(tmp_path)


def test_the_command_stops_on_a_damaged_state_file_before_telegram(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env: no Telegram settings, no server; the state file is checked first
    path = tmp_path / "state.json"
    path.write_text("{")
    umask = os.umask(0o022)
    try:
        assert main(["--state-file", str(path)]) == 2
    finally:
        os.umask(umask)
    err = capsys.readouterr().err
    assert err.startswith(f"reply: the reply state {path} is damaged") and len(err.strip().splitlines()) == 1


def test_a_send_that_cannot_be_recorded_becomes_a_draft(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = build_world(tmp_path, auto_reply=[ANNA.id])
    (tmp_path / "state").write_text("a file where the state's folder should be")  # every write fails

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(60)

    with caplog.at_level(logging.INFO):
        run(body)
    assert w.client.sent == [] and w.drafts() == [(ANNA.id, "sure, see you then")]
    assert "cannot write the reply state" in caplog.text and "a restart would forget it" in caplog.text


def test_a_dry_run_writes_no_state(tmp_path: Path) -> None:
    w = build_world(tmp_path, auto_reply=[ANNA.id], dry_run=True)

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(60)

    run(body)
    assert w.client.sent == [] and any("would send" in line for line in w.announced)
    assert not w.settings.state_file.exists()
