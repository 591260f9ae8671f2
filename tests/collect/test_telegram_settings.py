"""Credentials and the session file: clear errors, no secret ever echoed, owner-only files."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from telethon import errors
from telethon_fake import FakeTelegram, Fault, text, user

import collect.telegram as telegram_module
from collect.errors import CollectError
from collect.telegram import TelegramSettings, load_settings, make_client, run_telegram_export

REPO = Path(__file__).resolve().parents[2]
HASH = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def no_telegram_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TELEGRAM_"):
            monkeypatch.delenv(name)


def test_missing_credentials_say_what_to_set_and_where(tmp_path: Path) -> None:
    with pytest.raises(CollectError) as info:
        load_settings(tmp_path / ".env")
    message = str(info.value)
    for var in ("TELEGRAM_API_ID is missing", "TELEGRAM_API_HASH is missing", "TELEGRAM_PHONE is missing"):
        assert var in message
    assert "my.telegram.org" in message and "collect desktop" in message


def test_bad_values_are_named_but_never_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_API_ID", "not-a-number")
    monkeypatch.setenv("TELEGRAM_API_HASH", "supersecretbutwronglength")
    monkeypatch.setenv("TELEGRAM_PHONE", "+44 7700 900123")
    with pytest.raises(CollectError) as info:
        load_settings(None)
    message = str(info.value)
    assert "TELEGRAM_API_ID must be a whole number" in message
    assert "TELEGRAM_API_HASH must be the 32-character hex string" in message
    assert "supersecret" not in message and "not-a-number" not in message and "7700" not in message


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"
    env.write_text(f"TELEGRAM_API_ID=12345\nTELEGRAM_API_HASH={HASH}\nTELEGRAM_PHONE=+1 (555) 010-9999\n")
    settings = load_settings(env)
    assert settings.api_id == 12345 and settings.phone.get_secret_value() == "+15550109999"
    assert HASH not in repr(settings) and "5550109999" not in repr(settings)  # SecretStr hides them
    monkeypatch.setenv("TELEGRAM_API_ID", "777")
    assert load_settings(env).api_id == 777


def test_session_file_is_created_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_API_ID", "12345")
    monkeypatch.setenv("TELEGRAM_API_HASH", HASH)
    monkeypatch.setenv("TELEGRAM_PHONE", "+15550109999")
    monkeypatch.setenv("TELEGRAM_SESSION", str(tmp_path / "cfg" / "twin" / "telegram"))
    client = make_client(load_settings(None))  # the real TelegramClient; it does not connect here
    try:
        session = tmp_path / "cfg" / "twin" / "telegram.session"
        assert session.exists()
        assert stat.S_IMODE(session.stat().st_mode) == 0o600
        assert stat.S_IMODE(session.parent.stat().st_mode) == 0o700
        assert client.flood_sleep_threshold == 0  # every FloodWait reaches the exporter (and its bar)
    finally:
        client.session.close()


def test_cli_without_credentials_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEGRAM_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "collect", "telegram", "--out", str(tmp_path / "raw"), "--limit-dialogs", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Telegram API credentials")
    assert "Traceback" not in result.stderr and "TELEGRAM_API_ID" in lines[0]
    assert not (tmp_path / "raw").exists()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TelegramSettings:
    monkeypatch.setenv("TELEGRAM_API_ID", "12345")
    monkeypatch.setenv("TELEGRAM_API_HASH", HASH)
    monkeypatch.setenv("TELEGRAM_PHONE", "+15550109999")
    monkeypatch.setenv("TELEGRAM_SESSION", str(tmp_path / "session" / "telegram.session"))
    return load_settings(None)


def wrong_code() -> BaseException:
    return errors.PhoneCodeInvalidError(request=None)


def needs_password() -> BaseException:
    return errors.SessionPasswordNeededError(request=None)


@pytest.mark.parametrize(
    ("fake", "typed", "expected"),
    [
        (FakeTelegram([], {}, authorized=False, send_code_error=errors.ApiIdInvalidError(request=None)),
         [], "rejected TELEGRAM_API_ID / TELEGRAM_API_HASH"),
        (FakeTelegram([], {}, authorized=False, send_code_error=errors.PhoneNumberInvalidError(request=None)),
         [], "does not know TELEGRAM_PHONE"),
        (FakeTelegram([], {}, authorized=False, code_results=[wrong_code()] * 3),
         ["1", "2", "3"], "the login code was wrong 3 times: run the command again for a new code"),
        (FakeTelegram([], {}, authorized=False, code_results=[errors.PhoneCodeExpiredError(request=None)]),
         ["12345"], "the login code expired: run the command again"),
        (FakeTelegram([], {}, authorized=False, code_results=[needs_password()],
                      password_results=[errors.PasswordHashInvalidError(request=None)] * 3),
         ["12345"], "wrong two-step verification password 3 times"),
        (FakeTelegram([], {}, authorized=False), [EOFError()], "needs a terminal"),
        (FakeTelegram([], {}, connect_errors=[ConnectionError("no route")]), [], "cannot reach Telegram"),
        (FakeTelegram([], {}, connect_errors=[ValueError("Request was unsuccessful 6 time(s)")]), [],
         "Telegram is having trouble"),
    ],
)  # fmt: skip
def test_login_failures_become_clear_errors(
    settings: TelegramSettings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fake: FakeTelegram,
    typed: list[Any],
    expected: str,
) -> None:
    def type_in(prompt: str = "") -> str:
        value = typed.pop(0)
        if isinstance(value, BaseException):
            raise value
        return str(value)

    monkeypatch.setattr("builtins.input", type_in)
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "not my password")
    monkeypatch.setattr(telegram_module, "make_client", lambda s: fake)
    with pytest.raises(CollectError, match=expected) as info:
        asyncio.run(run_telegram_export(settings, tmp_path / "raw"))
    assert HASH not in str(info.value) and "5550109999" not in str(info.value)
    assert "\n" not in str(info.value) and not typed  # one line; every prompt was answered
    assert not fake.connected


def test_login_asks_again_after_a_wrong_code_then_the_password(
    settings: TelegramSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    prompts: list[str] = []
    typed = iter(["11111", " 22 222 "])
    monkeypatch.setattr("builtins.input", lambda prompt="": prompts.append(prompt) or next(typed))
    monkeypatch.setattr("getpass.getpass", lambda prompt="": prompts.append(prompt) or "secret")
    fake = FakeTelegram([user(5, "Zoe")], {5: [text(1, 5, "hello")]}, authorized=False,
                        code_results=[wrong_code(), needs_password()])  # fmt: skip
    monkeypatch.setattr(telegram_module, "make_client", lambda s: fake)
    summary = asyncio.run(run_telegram_export(settings, tmp_path / "raw"))
    assert summary.new_messages == 1
    assert [s["code"] for s in fake.sign_ins] == ["11111", "22222", None]
    assert fake.sign_ins[-1]["password"] == "secret"
    assert "wrong (2 tries left)" in prompts[1] and "password" in prompts[2]


def test_full_run_logs_in_exports_and_disconnects(
    settings: TelegramSettings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = FakeTelegram([user(5, "Zoe")], {5: [text(1, 5, "hello"), text(2, 5, "hi!", out=True)]})
    fake.faults = [Fault(5, 1, errors.FloodWaitError(request=None, capture=0))]
    monkeypatch.setattr(telegram_module, "make_client", lambda s: fake)
    real_export = telegram_module.export_account

    async def export_with_bars(*args: Any, **kwargs: Any) -> Any:
        return await real_export(*args, progress=True, **kwargs)  # the bars, as on a terminal

    monkeypatch.setattr(telegram_module, "export_account", export_with_bars)
    summary = asyncio.run(run_telegram_export(settings, tmp_path / "raw"))
    assert summary.new_messages == 2 and summary.flood_waits == 1 and not fake.connected
    assert "collect telegram: 1 personal chats, 2 new messages" in summary.line()
    bars = capsys.readouterr().err
    assert "dialogs" in bars and "Zoe" in bars and "FloodWait" in bars
    session = Path(settings.session)
    assert stat.S_IMODE(session.stat().st_mode) == 0o600  # created owner-only even though unused here
