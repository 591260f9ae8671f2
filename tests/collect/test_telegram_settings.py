"""Credentials and the session file: clear errors, no secret ever echoed, owner-only files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from collect.errors import CollectError
from collect.telegram import load_settings, make_client

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
