"""The exporter on Telethon's real `TelegramClient`, with only the network faked (telegram_wire.py):
Telethon's own retries and reconnects run, and what they finally raise is what the exporter sees."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from telegram_wire import ME, FakeServer, no_telethon_sleeps
from telethon.tl import functions, types
from telethon_fake import text
from test_telegram import Sleeps, read_raw

import collect.telegram as telegram_module
from collect.errors import CollectError
from collect.telegram import CLIENT_OPTIONS, export_account

ANN = types.User(id=101, access_hash=1001, first_name="Ann")
BEN = types.User(id=102, access_hash=1002, first_name="Ben")
History = functions.messages.GetHistoryRequest


def account() -> list[tuple[types.User, list[Any]]]:
    return [
        (ANN, [text(i, ANN.id, f"ann {i}", out=i % 3 == 0) for i in range(1, 131)]),  # two history pages
        (BEN, [text(i, BEN.id, f"ben {i}", out=i % 2 == 0) for i in range(1, 6)]),
    ]


def export_through(
    server: FakeServer, out: Path, sleeps: Sleeps, edit_window: timedelta | None = None, **options: Any
) -> Any:
    async def go() -> Any:
        client = server.client(**(CLIENT_OPTIONS | options))
        await client.connect()
        window = {} if edit_window is None else {"edit_window": edit_window}
        try:
            export = export_account(client, out, sleep=sleeps, progress=False, **window)
            return await asyncio.wait_for(export, 60)
        finally:
            await client.disconnect()

    return asyncio.run(go())


@pytest.fixture
def telethon_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    return no_telethon_sleeps(monkeypatch)


@pytest.fixture
def expected(tmp_path: Path, telethon_sleeps: list[float]) -> dict[int, list[dict[str, Any]]]:
    out = tmp_path / "clean"
    summary = export_through(FakeServer(account()), out, Sleeps())
    assert summary.new_messages == 135 and summary.network_retries == 0
    return read_raw(out)


@pytest.mark.parametrize(
    ("code", "message", "options"),
    [
        (500, "INTERNAL", {}),  # Telethon gives up with the ServerError itself (raise_last_call_error)
        (-503, "Timeout", {}),
        (500, "RPC_CALL_FAIL", {"raise_last_call_error": False}),  # ... or with its generic ValueError
    ],
)
def test_server_errors_beyond_telethons_retries_are_retried(
    tmp_path: Path,
    telethon_sleeps: list[float],
    expected: dict[int, list[dict[str, Any]]],
    code: int,
    message: str,
    options: dict[str, Any],
) -> None:
    server = FakeServer(account())
    # 8 failures in a row: Telethon's own 6 attempts fail and it gives up; the exporter's retry meets
    # 2 more, which Telethon absorbs, and then the history.
    server.errors[History] = [(code, message)] * 8
    telethon_sleeps.clear()
    sleeps = Sleeps()
    summary = export_through(server, tmp_path / "raw", sleeps, **options)
    assert read_raw(tmp_path / "raw") == expected
    assert summary.network_retries == 1 and sleeps.calls == [1.0]
    assert telethon_sleeps.count(2) == 8  # Telethon's own 2 s pause after each of them


def test_an_outage_longer_than_telethons_reconnects_is_reconnected(
    tmp_path: Path, telethon_sleeps: list[float], expected: dict[int, list[dict[str, Any]]]
) -> None:
    server = FakeServer(account())
    server.drop[History] = [2]  # Ann's second page: the connection goes ...
    server.outage = 40  # ... and stays down for Telethon's 30 reconnect attempts and then some
    sleeps = Sleeps()
    summary = export_through(server, tmp_path / "raw", sleeps)
    assert read_raw(tmp_path / "raw") == expected
    assert server.refused == 40 and summary.reconnects == 1
    # Telethon's reconnect gave up (30 refusals); the exporter's first connect() got 6 more refusals,
    # its second 4 more and then the connection.
    assert summary.network_retries == 2 and sleeps.calls == [1.0, 2.0]


def test_without_reconnecting_the_outage_would_never_end(
    tmp_path: Path, telethon_sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter before the fix: each retry failed at once ('Cannot send requests while disconnected')."""

    async def never(self: Any) -> None:
        return None

    monkeypatch.setattr(telegram_module._Exporter, "_connect_if_needed", never)
    server = FakeServer(account())
    server.drop[History] = [2]
    server.outage = 31
    with pytest.raises(CollectError, match="network or server errors in a row"):
        export_through(server, tmp_path / "raw", Sleeps())
    assert server.refused == 30  # Telethon's own reconnect attempts, then none: the client stays down
    assert server.seen["GetHistoryRequest"] == 2  # every retry failed at once, before reaching the server


SignIn = functions.auth.SignInRequest


def first_login_server() -> FakeServer:
    """An account whose session is not logged in yet: Telegram sends a code, then checks it."""
    server = FakeServer(account())
    server.authorized = False
    server.handlers[functions.auth.SendCodeRequest] = lambda request: types.auth.SentCode(
        type=types.auth.SentCodeTypeApp(length=5), phone_code_hash="code-hash"
    )

    def sign_in(request: Any) -> Any:
        assert request.phone_code_hash == "code-hash" and request.phone_code == "12345"
        server.authorized = True
        return types.auth.Authorization(user=ME)

    server.handlers[SignIn] = sign_in
    return server


def log_in(server: FakeServer, typed: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setattr("builtins.input", lambda prompt="": typed.pop(0))
    monkeypatch.setattr(telegram_module, "make_client", lambda settings: server.client(**CLIENT_OPTIONS))
    monkeypatch.setenv("TELEGRAM_API_ID", "12345")
    monkeypatch.setenv("TELEGRAM_API_HASH", "0123456789abcdef0123456789abcdef")
    monkeypatch.setenv("TELEGRAM_PHONE", "+15550109999")
    monkeypatch.setenv("TELEGRAM_SESSION", str(tmp_path / "session" / "telegram.session"))
    settings = telegram_module.load_settings(None)
    return asyncio.run(telegram_module.run_telegram_export(settings, tmp_path / "raw"))


@pytest.mark.parametrize(
    ("answers", "typed", "expected"),
    [
        ([(400, "PHONE_CODE_INVALID")] * 3, ["1", "2", "3"], "the login code was wrong 3 times: run the"),
        ([(400, "PHONE_CODE_EXPIRED")], ["12345"], "the login code expired: run the command again"),
        ([(500, "INTERNAL")] * 6, ["12345"], "Telegram is having trouble"),  # Telethon retried 5 times
    ],
)
def test_login_code_errors_from_telethons_client_become_one_line(
    tmp_path: Path,
    telethon_sleeps: list[float],
    monkeypatch: pytest.MonkeyPatch,
    answers: list[tuple[int, str]],
    typed: list[str],
    expected: str,
) -> None:
    """Telethon's client.start() would re-prompt and end in RuntimeError / ValueError here."""
    server = first_login_server()
    server.errors[SignIn] = list(answers)
    with pytest.raises(CollectError, match=expected) as info:
        log_in(server, typed, monkeypatch, tmp_path)
    assert "\n" not in str(info.value) and not typed
    assert not (tmp_path / "raw").exists()


def test_first_login_after_a_wrong_code_then_export(
    tmp_path: Path, telethon_sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = first_login_server()
    server.errors[SignIn] = [(400, "PHONE_CODE_INVALID")]
    summary = log_in(server, ["11111", "12345"], monkeypatch, tmp_path)
    assert summary.new_messages == 135 and server.seen["SignInRequest"] == 2


def test_edits_are_found_through_telethons_paging(
    tmp_path: Path, telethon_sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    ann = [text(i, ANN.id, f"ann {i}") for i in range(1, 151)]
    for i, message in enumerate(ann):  # 150 messages, one every 30 minutes up to now: three days
        message.date = now - timedelta(minutes=30 * (150 - i))
    ben = [text(1, BEN.id, "ben, long ago")]
    server = FakeServer([(ANN, ann), (BEN, ben)])
    out = tmp_path / "raw"
    export_through(server, out, Sleeps())

    ann[149].message, ann[149].edit_date = "ann 150, edited", now  # the newest
    ann[30].message, ann[30].edit_date = "ann 31, edited", now  # 60 hours old: on the second page
    ann[0].message, ann[0].edit_date = "ann 1, edited", now  # older than the window: not looked for
    before = dict(server.seen)
    summary = export_through(server, out, Sleeps(), edit_window=timedelta(hours=70))
    raw = {m["id"]: m["message"] for m in read_raw(out)[ANN.id]}
    assert (raw[150], raw[31], raw[1]) == ("ann 150, edited", "ann 31, edited", "ann 1")
    assert summary.edited == 2 and summary.new_messages == 0
    # Ann: two pages of edits (newest first, stopping at the window), one for news; Ben: only news
    # (his last message is older than the window)
    assert server.seen["GetHistoryRequest"] - before["GetHistoryRequest"] == 4
