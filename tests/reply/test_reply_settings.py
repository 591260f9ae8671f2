"""Settings, the conversation built from history, pacing, and the command line."""

from __future__ import annotations

import asyncio
import random
from datetime import time, timedelta
from pathlib import Path

import pytest
from reply_fake import FakeClock, message
from telethon.tl import types

from prepare.records import CONFIG_FILE, Turn
from reply.cli import main
from reply.conversation import context_caps, conversation, prompt_turns, split_reply, typing_delay
from reply.limits import RateLimiter
from reply.listen import stay_connected
from reply.settings import ReplySettings, in_quiet_hours, parse_quiet_hours


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("TWIN_API_URL", "TWIN_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the developer's


def test_defaults_are_the_careful_ones() -> None:
    s = ReplySettings(_env_file=None)  # type: ignore[call-arg]
    assert s.mode == "draft" and s.auto_reply == [] and not s.log_content and not s.dry_run
    assert s.base_url == "http://127.0.0.1:8000" and s.stop_word == "/twinstop"


def test_a_remote_plain_http_server_needs_consent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWIN_API_URL", "http://192.168.1.5:8000/v1")
    with pytest.raises(ValueError, match="unencrypted"):
        ReplySettings(_env_file=None)  # type: ignore[call-arg]
    allowed = ReplySettings(_env_file=None, allow_remote=True)  # type: ignore[call-arg]
    assert allowed.base_url == "http://192.168.1.5:8000"
    monkeypatch.setenv("TWIN_API_URL", "https://twin.example.org")
    assert ReplySettings(_env_file=None).base_url == "https://twin.example.org"  # type: ignore[call-arg]


def test_quiet_hours_wrap_past_midnight() -> None:
    night = parse_quiet_hours("23:00-08:00")
    assert in_quiet_hours(time(23, 30), night) and in_quiet_hours(time(7, 59), night)
    assert not in_quiet_hours(time(8, 0), night) and not in_quiet_hours(time(12, 0), night)
    assert parse_quiet_hours("") is None and not in_quiet_hours(time(3), None)
    for bad in ("23-08", "25:00-08:00"):
        with pytest.raises(ValueError, match="e.g. 23:00-08:00"):
            parse_quiet_hours(bad)


def test_the_conversation_is_trainings_own() -> None:
    forwarded = message(3, 5, "look at this", out=True)
    forwarded.fwd_from = types.MessageFwdHeader(date=forwarded.date, from_name="Some Channel")
    history = [
        message(1, 5, "old topic", at=message(0, 5, "").date - timedelta(days=3)),  # before a long silence
        message(2, 5, "hey"),
        forwarded,  # not the person's own words: skipped, as collect skips it
        message(4, 5, "hi!", out=True),
        message(5, 5, "dinner?"),
        message(6, 5, "at 8?"),
    ]
    turns = conversation(reversed(history), 5, timedelta(hours=24))
    assert turns == [Turn("partner", "hey"), Turn("me", "hi!"), Turn("partner", "dinner?\nat 8?")]
    assert prompt_turns(turns, (1, 1500), "Anna") == [Turn("me", "hi!"), Turn("partner", "dinner?\nat 8?")]
    assert prompt_turns([*turns, Turn("me", "sure")], (8, 1500), "Anna") is None  # already answered


def test_caps_come_from_prepare_config(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text('{"max_context_turns": 3, "max_context_chars": 400}')
    assert context_caps(tmp_path) == (3, 400)
    assert context_caps(tmp_path / "missing") == (8, 1500)


def test_pacing_splits_lines_and_scales_with_length() -> None:
    s = ReplySettings(_env_file=None, jitter=0.0, read_delay_s=5, chars_per_s=5, line_pause_s=1,  # type: ignore[call-arg]
                      max_delay_s=20)  # fmt: skip
    assert split_reply("omw\n\n 5 min \n") == ["omw", "5 min"]
    rng = random.Random(0)
    assert typing_delay("hello", s, rng, first=True) == 6.0
    assert typing_delay("hello", s, rng, first=False) == 2.0
    assert typing_delay("x" * 1000, s, rng, first=False) == 20.0


def test_rate_limiter_slides() -> None:
    limiter = RateLimiter(per_chat=2, overall=3, window_s=100)
    for t in (0, 10):
        assert limiter.blocked(1, t) is None
        limiter.record(1, t)
    assert "one chat" in (limiter.blocked(1, 20) or "")
    assert limiter.blocked(2, 20) is None
    limiter.record(2, 20)
    assert "over all chats" in (limiter.blocked(3, 30) or "")
    assert limiter.blocked(1, 111) is None


def test_the_listener_reconnects_after_telegram_drops_it() -> None:
    class Client:
        def __init__(self) -> None:
            self.runs, self.connects, self.connected = 0, 0, False

        async def run_until_disconnected(self) -> None:
            self.runs += 1
            self.connected = False
            if self.runs == 2:
                raise KeyboardInterrupt  # the user stops it

        def is_connected(self) -> bool:
            return self.connected

        async def connect(self) -> None:
            self.connects += 1
            if self.connects < 3:
                raise ConnectionError("down")
            self.connected = True

    class Clock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            self.slept.append(seconds)

    client, clock = Client(), Clock()
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(stay_connected(client, clock))
    assert client.connects == 3 and clock.slept == [2.0, 4.0]


def test_the_typing_cap_is_a_setting_like_the_others(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ReplySettings(_env_file=None).max_typing_wait_s == 60.0  # type: ignore[call-arg]
    monkeypatch.setenv("TWIN_REPLY_MAX_TYPING_WAIT_S", "15")
    assert ReplySettings(_env_file=None).max_typing_wait_s == 15.0  # type: ignore[call-arg]
    assert main(["--help"]) == 0
    assert "--max-typing-wait-s" in capsys.readouterr().out
    assert main(["--max-typing-wait-s", "-1"]) == 2
    assert "--max-typing-wait-s" in capsys.readouterr().err


def test_cli_help_and_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--auto-reply" in capsys.readouterr().out
    assert main(["--quiet-hours", "late"]) == 2
    err = capsys.readouterr().err
    assert "HH:MM-HH:MM" in err and len(err.strip().splitlines()) == 1
    assert main(["stats", "--feedback", "nothing.jsonl"]) == 0
    assert "no drafts recorded" in capsys.readouterr().out
