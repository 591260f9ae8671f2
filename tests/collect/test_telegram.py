"""The Telethon exporter against a fake of Telegram's servers: filtering, FloodWait, retries, resume."""

from __future__ import annotations

import asyncio
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from telethon import errors
from telethon.tl import types
from telethon_fake import FakeDialog, FakeTelegram, Fault, Group, forwarded_header, service, text, user

from collect.errors import CollectError
from collect.options import CollectOptions
from collect.records import RawMessage
from collect.store import RawStore
from collect.telegram import BACKOFF_BASE_S, export_account

ALICE, BOB = 101, 102


def read_raw(out: Path) -> dict[int, list[dict[str, Any]]]:
    """Every dialog file, each line validated against the RawMessage contract."""
    result = {}
    for path in sorted(out.glob("*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [RawMessage.from_dict(json.loads(line), f"{path}:{i}") for i, line in enumerate(lines, 1)]
        result[int(path.stem)] = [
            {"id": r.id, "date": r.date, "out": r.out, "message": r.message, "name": r.dialog_name}
            for r in records
        ]
        assert all(r.dialog_id == int(path.stem) for r in records)
    return result


def ids(out: Path) -> dict[int, list[int]]:
    return {dialog: [m["id"] for m in messages] for dialog, messages in read_raw(out).items()}


class Sleeps:
    """The injected sleep: records what was asked, never really waits."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def export(client: Any, out: Path, sleep: Sleeps | None = None, **kw: Any) -> Any:
    return asyncio.run(export_account(client, out, sleep=sleep or Sleeps(), progress=False, **kw))


def world() -> FakeTelegram:
    """Two friends, plus everything that must be left out."""
    photo = types.MessageMediaPhoto(photo=types.PhotoEmpty(id=1))
    poll = types.MessageMediaPoll(
        poll=types.Poll(
            id=1, question=types.TextWithEntities(text="Pizza?", entities=[]), answers=[], hash=0
        ),
        results=types.PollResults(),
    )
    alice = [
        text(1, ALICE, "hi Alice", out=True),
        text(2, ALICE, "hey! how are you?"),
        service(3, ALICE),
        text(4, ALICE, "", media=photo),
        text(5, ALICE, "look at this view", media=photo),
        text(6, ALICE, "", media=poll),
        text(7, ALICE, "", media=types.MessageMediaDice(value=3, emoticon="🎲")),
        text(8, ALICE, "forwarded words", fwd_from=forwarded_header()),
        text(9, ALICE, "  \n ", out=True),
        text(10, ALICE, "great, thanks", out=True),
        text(11, ALICE, "call me", media=types.MessageMediaContact("+000", "Zed", "", "", 0)),
    ]
    bob = [text(i, BOB, f"bob message {i}", out=i % 2 == 0) for i in range(1, 8)]
    dialogs = [
        user(ALICE, "Alice"),
        FakeDialog(Group(200, "Family group"), "Family group"),
        user(300, "HelperBot", bot=True),
        user(400, "Me", is_self=True),
        user(777000, "Telegram"),
        user(BOB, "Bob"),
    ]
    history = {ALICE: alice, BOB: bob, 200: [text(1, 200, "group chat")], 300: [text(1, 300, "bot")],
               400: [text(1, 400, "saved")], 777000: [text(1, 777000, "Login code: 12345")]}  # fmt: skip
    return FakeTelegram(dialogs, history)


def test_exports_personal_text_messages_only(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    summary = export(world(), out)

    raw = read_raw(out)
    assert sorted(raw) == [ALICE, BOB]  # not the group, bot, Saved Messages or Telegram's notices
    assert [(m["id"], m["out"], m["message"]) for m in raw[ALICE]] == [
        (1, True, "hi Alice"),
        (2, False, "hey! how are you?"),
        (5, False, "look at this view"),  # a caption is text
        (10, True, "great, thanks"),
    ]
    assert raw[ALICE][0]["date"] == "2024-01-01T09:01:00+00:00"
    assert {m["name"] for m in raw[ALICE]} == {"Alice"}
    assert len(raw[BOB]) == 7
    assert summary.dialogs == 2 and summary.new_messages == 11
    assert summary.skipped["forwarded"] == 1 and summary.skipped["service"] == 1
    assert summary.skipped["poll, contact or other non-text"] == 3

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dialogs"][str(ALICE)] | {"updated": None, "synced": None} == {
        "name": "Alice", "count": 4, "last_id": 11, "source": "telegram", "sorted": True, "updated": None,
        "synced": None,
        "bytes": (out / f"{ALICE}.jsonl").stat().st_size, "last_date": "2024-01-01T09:10:00+00:00",
    }  # fmt: skip
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_keep_forwarded_since_and_limit(tmp_path: Path) -> None:
    kept = export(world(), tmp_path / "fwd", options=CollectOptions(keep_forwarded=True))
    assert 8 in ids(tmp_path / "fwd")[ALICE] and kept.new_messages == 12

    since = datetime(2024, 1, 1, 9, 5, tzinfo=UTC)
    client = world()
    export(client, tmp_path / "since", options=CollectOptions(since=since))
    assert ids(tmp_path / "since")[ALICE] == [5, 10]
    assert client.calls[0]["offset_date"] < since and client.calls[0]["reverse"] is True

    export(world(), tmp_path / "one", limit_dialogs=1)
    assert sorted(ids(tmp_path / "one")) == [ALICE]
    with pytest.raises(CollectError, match="--limit-dialogs"):
        export(world(), tmp_path / "zero", limit_dialogs=0)


def test_flood_wait_sleeps_the_asked_time_and_continues(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    export(world(), clean)

    client = world()
    client.faults = [Fault(ALICE, 3, errors.FloodWaitError(request=None, capture=42))]
    sleeps = Sleeps()
    summary = export(client, tmp_path / "raw", sleeps, batch_size=100)

    assert sleeps.calls == [42]
    assert summary.flood_waits == 1
    assert read_raw(tmp_path / "raw") == read_raw(clean)
    alice_calls = [c["min_id"] for c in client.calls if c["dialog"] == ALICE]
    assert alice_calls == [0, 3]  # the second request resumes after the last message received


def test_network_errors_retry_with_bounded_backoff(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    export(world(), clean)

    client = world()
    client.faults = [Fault(BOB, 2, ConnectionError("reset")), Fault(BOB, 0, OSError("down"), only_min_id=2),
                     Fault(BOB, 1, TimeoutError(), only_min_id=2)]  # fmt: skip
    client.dialog_faults = [ConnectionError("while listing dialogs")]
    sleeps = Sleeps()
    summary = export(client, tmp_path / "raw", sleeps)
    assert read_raw(tmp_path / "raw") == read_raw(clean)
    # listing: 1 retry; Bob: errors after 2 messages, then immediately, then after 1 -> 1, 2, then reset to 1
    assert sleeps.calls == [BACKOFF_BASE_S, BACKOFF_BASE_S, 2 * BACKOFF_BASE_S, BACKOFF_BASE_S]
    assert summary.network_retries == 4

    client = world()
    client.faults = [
        Fault(BOB, 3, ConnectionError("down")),
        Fault(BOB, 0, errors.ServerError(request=None, message="INTERNAL"), 99, only_min_id=3),
    ]
    sleeps = Sleeps()
    out = tmp_path / "flaky"
    with pytest.raises(CollectError, match="run the same command again") as info:
        export(client, out, sleeps, max_retries=3)
    assert "network or server errors in a row" in str(info.value)
    assert sleeps.calls == [1, 2, 4]  # bounded: max_retries sleeps, doubling
    assert ids(out)[BOB] == [1, 2, 3]  # what arrived before the outage is kept
    export(world(), out)  # the network is back: the re-run completes without duplicates
    assert read_raw(out) == read_raw(clean)


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_killed_at_any_message_then_rerun_loses_and_duplicates_nothing(
    tmp_path: Path, batch_size: int
) -> None:
    clean = tmp_path / "clean"
    export(world(), clean)
    expected = read_raw(clean)
    total = len(world().history[ALICE])
    for kill_at in range(total + 1):
        out = tmp_path / f"killed-{kill_at}"
        client = world()
        client.faults = [Fault(ALICE, kill_at, KeyboardInterrupt())]
        if kill_at < total:
            with pytest.raises(KeyboardInterrupt):
                export(client, out, batch_size=batch_size)
        else:
            export(client, out, batch_size=batch_size)  # the fault never fires: a complete run
        export(world(), out, batch_size=batch_size)
        assert read_raw(out) == expected, f"killed after {kill_at} messages"
        manifest = json.loads((out / "manifest.json").read_text())["dialogs"]
        assert manifest[str(ALICE)]["count"] == len(expected[ALICE])


def test_killed_between_file_append_and_manifest_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = tmp_path / "clean"
    export(world(), clean)
    out = tmp_path / "raw"
    real_save = RawStore.save_manifest
    calls = {"n": 0}

    def dying_save(self: RawStore) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the lines of a batch are on disk, its manifest update is not
            raise KeyboardInterrupt
        real_save(self)

    monkeypatch.setattr(RawStore, "save_manifest", dying_save)
    with pytest.raises(KeyboardInterrupt):
        export(world(), out, batch_size=2)
    monkeypatch.setattr(RawStore, "save_manifest", real_save)
    export(world(), out, batch_size=2)
    assert read_raw(out) == read_raw(clean)


def test_torn_last_line_is_dropped_and_refetched(tmp_path: Path) -> None:
    client = world()
    client.history[ALICE] = client.history[ALICE][:2]
    out = tmp_path / "raw"
    export(client, out)
    with open(out / f"{ALICE}.jsonl", "ab") as f:  # a write cut short by a kill
        f.write(b'{"id": 5, "date": "2024-01-01T09:05:00+00:00", "out": fa')
    export(world(), out)
    clean = tmp_path / "clean"
    export(world(), clean)
    assert read_raw(out) == read_raw(clean)


def test_rerun_fetches_only_newer_messages(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    client = world()
    export(client, out)
    before = (out / f"{BOB}.jsonl").read_bytes()

    client = world()
    client.history[BOB] += [text(20, BOB, "new one"), text(21, BOB, "and another", out=True)]
    summary = export(client, out)

    assert summary.new_messages == 2
    assert client.served[BOB] == 2 and client.served[ALICE] == 0  # nothing old was downloaded again
    assert [c["min_id"] for c in client.calls] == [11, 7]
    after = (out / f"{BOB}.jsonl").read_bytes()
    assert after.startswith(before)
    assert ids(out)[BOB] == [1, 2, 3, 4, 5, 6, 7, 20, 21]
    assert json.loads((out / "manifest.json").read_text())["dialogs"][str(BOB)]["last_id"] == 21

    again = world()
    again.history[BOB] += [text(20, BOB, "new one"), text(21, BOB, "and another", out=True)]
    assert export(again, out).new_messages == 0 and sum(again.served.values()) == 0


def test_out_of_date_order_history_is_sorted(tmp_path: Path) -> None:
    client = world()
    # an imported chat: newer ids carrying older dates
    client.history[BOB] += [text(30, BOB, "imported old message", minutes=-500), text(31, BOB, "newest")]
    out = tmp_path / "raw"
    export(client, out, batch_size=2)
    dates = [m["date"] for m in read_raw(out)[BOB]]
    assert dates == sorted(dates) and ids(out)[BOB][0] == 30
    assert json.loads((out / "manifest.json").read_text())["dialogs"][str(BOB)]["sorted"] is True


def test_naive_dates_are_taken_as_utc(tmp_path: Path) -> None:
    client = FakeTelegram([user(ALICE, "Alice")], {ALICE: [text(1, ALICE, "x")]})
    client.history[ALICE][0].date = client.history[ALICE][0].date.replace(tzinfo=None)
    export(client, tmp_path)
    assert read_raw(tmp_path)[ALICE][0]["date"] == "2024-01-01T09:01:00+00:00"


def test_support_and_deleted_accounts_are_left_out_and_counted(tmp_path: Path) -> None:
    client = world()
    client.dialogs += [user(500, "Volunteer", support=True), user(600, "", deleted=True)]
    client.history |= {500: [text(1, 500, "how can I help?")], 600: [text(1, 600, "old words")]}
    summary = export(client, tmp_path)
    assert sorted(read_raw(tmp_path)) == [ALICE, BOB]
    assert summary.left_out == {"group or channel": 1, "bot": 1, "Saved Messages": 1, "Telegram notices": 1,
                                "support account": 1, "deleted account": 1}  # fmt: skip
    assert "1 support account, 1 deleted account" in summary.line()
    assert not {c["dialog"] for c in client.calls} & {500, 600}  # not even fetched


def test_a_chat_with_nothing_kept_is_not_fetched_again(tmp_path: Path) -> None:
    photo = types.MessageMediaPhoto(photo=types.PhotoEmpty(id=1))
    client = FakeTelegram(
        [user(ALICE, "Alice")], {ALICE: [service(1, ALICE), text(2, ALICE, "", media=photo)]}
    )
    assert export(client, tmp_path).new_messages == 0
    assert not (tmp_path / f"{ALICE}.jsonl").exists()  # no file: later stages see no empty chat

    again = FakeTelegram([user(ALICE, "Alice")], client.history)
    again.history[ALICE].append(text(3, ALICE, "finally some words"))
    assert export(again, tmp_path).new_messages == 1
    assert again.served[ALICE] == 1 and again.calls[-1]["min_id"] == 2  # only the new message
    assert ids(tmp_path) == {ALICE: [3]}


def test_imported_history_counts_as_the_chats_own(tmp_path: Path) -> None:
    sent = datetime(2019, 6, 1, 12, 0, tzinfo=UTC)
    imported = types.MessageFwdHeader(date=sent, imported=True, from_name="Alice (WhatsApp)")
    client = FakeTelegram([user(ALICE, "Alice")], {ALICE: [
        text(1, ALICE, "telegram words"),
        text(2, ALICE, "my words from whatsapp", out=True, fwd_from=imported),
        text(3, ALICE, "her words from whatsapp", fwd_from=imported),
        text(4, ALICE, "a real forward", fwd_from=forwarded_header()),
    ]})  # fmt: skip
    summary = export(client, tmp_path)
    raw = read_raw(tmp_path)[ALICE]
    assert [(m["id"], m["out"], m["date"]) for m in raw] == [
        (2, True, "2019-06-01T12:00:00+00:00"),  # when it was written, not when it was imported
        (3, False, "2019-06-01T12:00:00+00:00"),
        (1, False, "2024-01-01T09:01:00+00:00"),
    ]
    assert summary.skipped == {"forwarded": 1}
    with_since = tmp_path / "since"
    export(client, with_since, options=CollectOptions(since=datetime(2020, 1, 1, tzinfo=UTC)))
    assert ids(with_since)[ALICE] == [1]  # --since applies to the original date


def recent(mid: int, body: str, hours_ago: float, **kw: Any) -> Any:
    """A message in Alice's chat sent `hours_ago` hours before now."""
    message = text(mid, ALICE, body, **kw)
    message.date = datetime.now(UTC) - timedelta(hours=hours_ago)
    return message


def test_edits_are_picked_up_on_the_next_run(tmp_path: Path) -> None:
    photo = types.MessageMediaPhoto(photo=types.PhotoEmpty(id=1))
    history = [
        recent(1, "a week ago", 24 * 7),
        recent(2, "helo", 3),
        recent(3, "look at this", 2, media=photo),
        recent(4, "", 1, media=photo),
    ]
    client = FakeTelegram([user(ALICE, "Alice")], {ALICE: history})
    export(client, tmp_path)
    assert ids(tmp_path) == {ALICE: [1, 2, 3]}

    now = datetime.now(UTC)
    history[0].message, history[0].edit_date = "edited too long ago to matter", now  # outside the window
    history[1].message, history[1].edit_date = "hello", now  # a typo fixed
    history[2].message, history[2].edit_date = "", now  # the caption taken away
    history[3].message, history[3].edit_date = "and this one", now  # a caption added
    history.append(recent(5, "new", 0.5))
    again = FakeTelegram([user(ALICE, "Alice")], {ALICE: history})
    summary = export(again, tmp_path)
    assert [(m["id"], m["message"]) for m in read_raw(tmp_path)[ALICE]] == [
        (1, "a week ago"), (2, "hello"), (4, "and this one"), (5, "new")]  # fmt: skip
    assert summary.edited == 3 and summary.new_messages == 1
    assert again.calls[0]["max_id"] == 5 and again.calls[1]["min_id"] == 4  # edits of 1-4, then news
    state = json.loads((tmp_path / "manifest.json").read_text())["dialogs"][str(ALICE)]
    assert state["count"] == 4 and state["bytes"] == (tmp_path / f"{ALICE}.jsonl").stat().st_size

    before = (tmp_path / f"{ALICE}.jsonl").read_bytes()
    third = FakeTelegram([user(ALICE, "Alice")], {ALICE: history})
    assert export(third, tmp_path).edited == 0  # the same edits are not applied twice
    assert (tmp_path / f"{ALICE}.jsonl").read_bytes() == before


def test_premium_flood_wait_is_waited_out_too(tmp_path: Path) -> None:
    client = world()
    client.faults = [Fault(BOB, 2, errors.FloodPremiumWaitError(request=None, capture=7))]
    sleeps = Sleeps()
    summary = export(client, tmp_path, sleeps)
    assert sleeps.calls == [7] and summary.flood_waits == 1 and len(ids(tmp_path)[BOB]) == 7
