"""Telegram Desktop import on real exports (tests/fixtures/telegram) and hand-written ones, rule by rule."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collect.desktop import SERVICE_CHAT, ImportSummary, WrittenIds, import_desktop_export
from collect.errors import CollectError
from collect.options import CollectOptions
from collect.records import RawMessage
from collect.store import DialogRewrite

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "telegram"
TKONVERTER = FIXTURES / "tkonverter_personal_result.json"
TG2MD = FIXTURES / "tg2md_channel_result.json"
FULL = FIXTURES / "full_account_result.json"
OLD = FIXTURES / "old_schema_chat_result.json"
AMBIGUOUS = FIXTURES / "ambiguous_me_result.json"


def read_raw(out: Path) -> dict[int, list[RawMessage]]:
    result = {}
    for path in sorted(out.glob("*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        result[int(path.stem)] = [
            RawMessage.from_dict(json.loads(x), f"{path}:{i}") for i, x in enumerate(lines, 1)
        ]
    return result


def run(path: Path, out: Path, **kw: Any) -> ImportSummary:
    return import_desktop_export(path, out, **{"progress": False, **kw})


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def test_tkonverter_personal_chat(tmp_path: Path) -> None:
    summary = run(TKONVERTER, tmp_path)
    messages = read_raw(tmp_path)[10001]
    # Captions (3, 21, 22) and text of locations (11, 12) stay; media without caption, the sticker, poll,
    # to-do list, contact, game, invoice, giveaways, ~60 service entries, the forward and `unsupported` go.
    assert [m.id for m in messages] == [84, 1, 3, 11, 12, 21, 22, 85, 86]  # sorted by date, not id
    assert summary.new_messages == 9 and summary.dialogs == 1
    first, second = messages[0], messages[1]
    assert (first.date, first.out, first.message) == ("2025-12-31T23:50:00+00:00", True, "Year end note")
    assert second.message == "Base text with entities"  # `text` wins over the disagreeing text_entities
    assert [m.out for m in messages] == [True, True, False, False, False, False, False, False, True]
    assert {m.dialog_name for m in messages} == {"Alice Example"}
    manifest = json.loads((tmp_path / "manifest.json").read_text())["dialogs"]["10001"]
    assert (manifest["count"], manifest["last_id"], manifest["source"]) == (9, 87, "desktop")

    with_forwards = run(TKONVERTER, tmp_path / "fwd", options=CollectOptions(keep_forwarded=True))
    assert with_forwards.new_messages == 10 and 2 in [m.id for m in read_raw(tmp_path / "fwd")[10001]]


def test_tg2md_channel_export_has_no_personal_chats(tmp_path: Path) -> None:
    with pytest.raises(CollectError) as info:
        run(TG2MD, tmp_path / "raw")
    message = str(info.value)
    assert message.startswith(str(TG2MD))
    assert "no personal chats" in message and "1 private_channel" in message and "Export" in message
    assert list((tmp_path / "raw").glob("*.jsonl")) == []


def test_full_account_export_rules(tmp_path: Path) -> None:
    summary = run(FULL, tmp_path)
    raw = read_raw(tmp_path)
    assert sorted(raw) == [111, 333]  # bot, Saved Messages, group, channel, left chats, 777000: left out
    assert [(m.id, m.out, m.message) for m in raw[111]] == [
        (19, False, "earlier, imported out of order"),
        (10, True, "hi Bob"),
        (11, False, "see https://example.org ok"),  # a text list flattened
        (14, True, "our cat"),  # a photo's caption
        (21, True, "bold and italic"),
    ]
    # date_unixtime (UTC) wins over the local `date` ("2023-11-15T01:13:20", three hours ahead)
    assert raw[111][1].date == "2023-11-14T22:13:20+00:00"
    assert [(m.id, m.out, m.dialog_name) for m in raw[333]] == [
        (5, False, "Deleted Account"),
        (6, True, "Deleted Account"),
    ]
    assert summary.other_chats == {
        "bot_chat": 1,
        "saved_messages": 1,
        "private_group": 1,
        "public_channel": 1,
        SERVICE_CHAT: 1,
        "private_supergroup": 1,
    }
    assert (
        summary.skipped["forwarded"] == 1 and summary.skipped["sticker"] == 1 and summary.skipped["poll"] == 1
    )
    assert "12345" not in "".join(p.read_text() for p in tmp_path.glob("*.jsonl"))  # the login code chat

    kept = run(FULL, tmp_path / "fwd", options=CollectOptions(keep_forwarded=True))
    assert kept.new_messages == 8 and (17, True, "breaking news") in [
        (m.id, m.out, m.message) for m in read_raw(tmp_path / "fwd")[111]
    ]


def test_since_filters_by_utc_day_and_a_later_run_without_it_fills_in(tmp_path: Path) -> None:
    from collect.options import parse_since

    run(FULL, tmp_path, options=CollectOptions(since=parse_since("2023-11-14")))
    assert [m.id for m in read_raw(tmp_path)[111]] == [19, 10, 11, 14, 21]
    assert 333 not in read_raw(tmp_path)  # all of 2022: nothing written, so no file for that chat
    # A chat without a file starts from scratch next time; one with a file continues after its last id.
    assert run(FULL, tmp_path).new_messages == 2
    assert [m.id for m in read_raw(tmp_path)[333]] == [5, 6]


def test_me_from_flag_overrides_personal_information(tmp_path: Path) -> None:
    run(FULL, tmp_path, me=111)  # pretend to be Bob
    assert [m.out for m in read_raw(tmp_path)[111]] == [True, False, True, False, False]


def test_old_schema_single_chat_uses_local_time(tmp_path: Path, local_tz: Any) -> None:
    local_tz("Asia/Tokyo")  # UTC+9, no DST
    run(OLD, tmp_path / "tokyo")
    local_tz("UTC")
    run(OLD, tmp_path / "utc")
    tokyo, utc = read_raw(tmp_path / "tokyo")[777], read_raw(tmp_path / "utc")[777]
    assert [(m.id, m.out, m.message) for m in utc] == [
        (1, False, "hello from the old schema"),  # integer from_id 777 = the chat id = the partner
        (2, True, "hey Dave, long time"),  # so the other sender (999) is me
    ]
    assert utc[0].date == "2020-01-01T12:00:00+00:00" and tokyo[0].date == "2020-01-01T03:00:00+00:00"


@pytest.fixture
def local_tz(monkeypatch: pytest.MonkeyPatch) -> Any:
    def use(zone: str) -> None:
        monkeypatch.setenv("TZ", zone)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


def test_ambiguous_me_says_how_to_pass_it(tmp_path: Path) -> None:
    with pytest.raises(CollectError, match=r"--me 1001") as info:
        run(AMBIGUOUS, tmp_path)
    assert "can't tell which sender is you" in str(info.value) and str(AMBIGUOUS) in str(info.value)
    assert list(tmp_path.glob("*.jsonl")) == []

    run(AMBIGUOUS, tmp_path, me=1002)
    assert [(m.id, m.out) for m in read_raw(tmp_path)[888]] == [(1, False), (2, True)]


def test_folder_holding_result_json(tmp_path: Path) -> None:
    folder = tmp_path / "ChatExport_2026-02-01"
    folder.mkdir()
    shutil.copy(TKONVERTER, folder / "result.json")
    assert run(folder, tmp_path / "raw").new_messages == 9


def test_unusual_key_order_and_tiny_chunks_give_the_same_result(tmp_path: Path) -> None:
    run(FULL, tmp_path / "plain")
    sorted_keys = tmp_path / "sorted.json"  # "chats" before "personal_information", "messages" before "type"
    sorted_keys.write_text(json.dumps(json.loads(FULL.read_text()), sort_keys=True), encoding="utf-8")
    run(sorted_keys, tmp_path / "sorted")
    run(FULL, tmp_path / "tiny", chunk_chars=3)
    assert read_raw(tmp_path / "sorted") == read_raw(tmp_path / "plain") == read_raw(tmp_path / "tiny")


def test_output_is_owner_only(tmp_path: Path) -> None:
    out = tmp_path / "data" / "raw"
    run(FULL, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert sorted(p.name for p in out.iterdir()) == ["111.jsonl", "333.jsonl", "manifest.json"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.iterdir())


def test_lone_surrogate_in_text_is_replaced(tmp_path: Path) -> None:
    export = tmp_path / "result.json"
    chat = '{"name": "X", "type": "personal_chat", "id": 9, "messages": [{"id": 1, "type": "message", '
    chat += '"date_unixtime": "1600000000", "from_id": "user9", "text": "broken \\ud83d emoji"}]}'
    export.write_text(chat, encoding="utf-8")
    run(export, tmp_path / "raw")
    assert read_raw(tmp_path / "raw")[9][0].message == "broken \ufffd emoji"


# ---- bad input ---------------------------------------------------------------------------------
BAD_INPUTS = [
    ("", "the file is empty"),
    ("hello there", "not a Telegram export"),
    ("<!DOCTYPE html><html></html>", "this is HTML, not JSON"),
    ("[1, 2, 3]", "not a Telegram export"),
    ('{"foo": 1}', "not a Telegram export"),
    ('{"about": "x", "chats": {"about": "y", "list": []}}', "contains no chats"),
    ('{"name": "Al", "type": "personal_chat", "id": 5, "messages": []}', "the export is empty"),
    ('{"name": "Al", "type": "personal_chat", "id": 5, "messages": [{"id": 1}]} trailing', "unexpected data"),
    ('{"name": "Al", "type": "personal_chat", "id": "x", "messages": [{"id": 1}]}', "a positive integer"),
    (
        '{"name": "Al", "type": "personal_chat", "id": 5, "messages": [{"type": "message"}]}',
        "no positive integer 'id'",
    ),
    ('{"chats": []}', "should be an object"),
    ("\xff\xfe garbage", "not a Telegram export"),
]


@pytest.mark.parametrize(("content", "expected"), BAD_INPUTS)
def test_bad_input_gets_a_clear_error(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "result.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CollectError) as info:
        run(path, tmp_path / "raw")
    assert str(info.value).startswith(str(path)) and expected in str(info.value)


def test_binary_file_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "export.zip"
    path.write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xb7\x8f\xff\xfe")
    with pytest.raises(CollectError, match="this is a zip archive: unzip it"):
        run(path, tmp_path / "raw")
    path.write_bytes(b"\x00\x01\x02\xb7\x8f\xff\xfe")
    with pytest.raises(CollectError, match="not UTF-8 text"):
        run(path, tmp_path / "raw")


def test_truncated_export_names_file_line_and_column(tmp_path: Path) -> None:
    text = TKONVERTER.read_text(encoding="utf-8")
    cut = text[: len(text) * 3 // 5]
    path = tmp_path / "result.json"
    path.write_text(cut, encoding="utf-8")
    with pytest.raises(CollectError) as info:
        run(path, tmp_path / "raw", chunk_chars=100)
    last_line = cut.count("\n") + 1
    assert "truncated" in str(info.value) and f"line {last_line}, column" in str(info.value)
    assert list((tmp_path / "raw").glob("*.jsonl")) == []  # nothing half-imported


def test_syntax_error_in_the_middle_names_its_position(tmp_path: Path) -> None:
    lines = FULL.read_text(encoding="utf-8").splitlines()
    lines[30] = lines[30].replace('"type": "message"', '"type": message', 1)
    column = lines[30].index("message,") + 1
    path = tmp_path / "result.json"
    path.write_text("\n".join(lines), encoding="utf-8")
    for chunk in (7, 1 << 20):
        with pytest.raises(CollectError) as info:
            run(path, tmp_path / "raw", chunk_chars=chunk)
        assert f"invalid JSON (Expecting value) at line 31, column {column}" in str(info.value)


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(CollectError, match="no such file"):
        run(tmp_path / "nope.json", tmp_path / "raw")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(CollectError, match="no result.json in this folder"):
        run(tmp_path / "empty_folder", tmp_path / "raw")
    html = tmp_path / "html_export"
    html.mkdir()
    (html / "messages.html").write_text("<html></html>")
    with pytest.raises(CollectError, match="HTML export"):
        run(html, tmp_path / "raw")
    out_file = tmp_path / "out.txt"
    out_file.write_text("x")
    with pytest.raises(CollectError, match="must be a folder"):
        run(TKONVERTER, out_file)


# ---- resumable and incremental -----------------------------------------------------------------
def test_reimporting_the_same_export_adds_nothing(tmp_path: Path) -> None:
    run(FULL, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = run(FULL, tmp_path)
    assert again.new_messages == 0 and again.total_messages == 7
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_newer_export_adds_only_newer_messages(tmp_path: Path) -> None:
    old = json.loads(FULL.read_text())
    bob = old["chats"]["list"][0]
    bob["messages"] = bob["messages"][:5]  # an export made earlier: ids 10..14
    run(write_json(tmp_path / "old.json", old), tmp_path / "raw")
    assert [m.id for m in read_raw(tmp_path / "raw")[111]] == [10, 11, 14]

    summary = run(FULL, tmp_path / "raw")
    assert summary.new_messages == 2  # 19 and 21; 10, 11 and 14 are not written twice
    run(FULL, tmp_path / "clean")
    assert read_raw(tmp_path / "raw") == read_raw(tmp_path / "clean")  # and 19 is sorted into place


@pytest.mark.parametrize("kill_after", [0, 1, 3, 4, 6])
def test_killed_import_then_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_after: int) -> None:
    run(FULL, tmp_path / "clean")
    real_add = DialogRewrite.add
    added = {"n": 0}

    def dying_add(self: DialogRewrite, ts: float, message: RawMessage) -> None:
        if added["n"] == kill_after:
            raise KeyboardInterrupt
        added["n"] += 1
        real_add(self, ts, message)

    monkeypatch.setattr(DialogRewrite, "add", dying_add)
    with pytest.raises(KeyboardInterrupt):
        run(FULL, tmp_path / "raw")
    monkeypatch.setattr(DialogRewrite, "add", real_add)
    assert not [p for p in (tmp_path / "raw").iterdir() if p.name.startswith(".")]  # no temp files left
    run(FULL, tmp_path / "raw")
    assert read_raw(tmp_path / "raw") == read_raw(tmp_path / "clean")


def test_killed_after_a_dialog_was_renamed_but_before_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collect.store import RawStore

    run(FULL, tmp_path / "clean")
    monkeypatch.setattr(RawStore, "save_manifest_soon", lambda self: setattr(self, "_dirty", False))
    monkeypatch.setattr(RawStore, "flush_manifest", lambda self: None)
    run(FULL, tmp_path / "raw")  # dialog files written, manifest never saved
    assert not (tmp_path / "raw" / "manifest.json").exists()
    monkeypatch.undo()
    assert run(FULL, tmp_path / "raw").new_messages == 0  # the files are the truth: rescanned, not redone
    assert read_raw(tmp_path / "raw") == read_raw(tmp_path / "clean")


def test_progress_bar_follows_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = json.loads(FULL.read_text())
    bob = big["chats"]["list"][0]
    bob["messages"] = [
        {
            "id": i,
            "type": "message",
            "date_unixtime": str(1600000000 + i),
            "from_id": "user111",
            "text": f"m{i}",
        }
        for i in range(1, 9001)
    ]
    summary = run(
        write_json(tmp_path / "result.json", big), tmp_path / "raw", progress=True, chunk_chars=4096
    )
    assert summary.new_messages == 9002
    bars = capsys.readouterr().err
    assert "importing" in bars and "100%" in bars and "Bob" in bars


def test_a_wrong_me_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run(FULL, tmp_path / "ok")
    assert caplog.records == []
    run(OLD, tmp_path / "wrong", me=12345)  # neither Dave (777, the partner) nor 999 (the real me)
    assert "neither you (--me = 12345) nor the partner" in caplog.text and "999" in caplog.text


# ---- old exports (Desktop before 2.8, mid-2021): ids + 2^32, numeric senders ----------------------
SHIFT = 1 << 32
ME, ANNA, BORIS = 4321, 111, 222


def message(mid: int, sender: Any, text: str, when: int = 1_600_000_000, **extra: Any) -> dict[str, Any]:
    """An entry as old Desktop wrote it: local `date` only (no `date_unixtime`), numeric `from_id`."""
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(when + mid * 60))
    return {
        "id": mid,
        "type": "message",
        "date": local,
        "from_id": sender,
        "text": text,
        **extra,
    }


def old_export(path: Path) -> Path:
    """A full-account export in the old scheme: chat ids are user id + 2^32; Anna's chat has bare numeric
    senders (Desktop 1.3-2.4), Boris's the + 2^32 senders of late 2020; plus Telegram's own chat."""
    anna = [
        {"id": 1, "type": "service", "date": "2020-09-13T12:00:00", "action": "phone_call"},  # no sender
        message(2, ANNA, "hi, it's Anna"),
        message(3, ME, "hey Anna"),
        message(4, ANNA, "old news"),
    ]
    boris = [message(10, BORIS + SHIFT, "Boris here"), message(11, ME + SHIFT, "hello Boris")]
    service = [message(20, 777000 + SHIFT, "Login code: 55555. Do not give this code to anyone")]
    group = [message(30, ANNA, "in the group")]
    chat = lambda name, kind, cid, messages: {"name": name, "type": kind, "id": cid, "messages": messages}  # noqa: E731
    return write_json(
        path,
        {
            "personal_information": {"user_id": ME, "first_name": "Me"},
            "chats": {
                "about": "old",
                "list": [
                    chat("Anna", "personal_chat", ANNA + SHIFT, anna),
                    chat("Boris", "personal_chat", BORIS + SHIFT, boris),
                    chat("Telegram", "personal_chat", 777000 + SHIFT, service),
                    chat("Club", "private_group", 2 * SHIFT + 5, group),
                ],
            },
        },
    )


def new_export(path: Path) -> Path:
    """The same account exported today: bare ids, `user<id>` senders, `date_unixtime`; one newer message."""

    def current(entry: dict[str, Any]) -> dict[str, Any]:
        sender = entry.get("from_id")
        if isinstance(sender, int):
            entry["from_id"] = f"user{sender % SHIFT}"
        entry["date_unixtime"] = str(int(time.mktime(time.strptime(entry["date"], "%Y-%m-%dT%H:%M:%S"))))
        return entry

    old = json.loads(old_export(path).read_text(encoding="utf-8"))
    for chat in old["chats"]["list"]:
        chat["id"] = chat["id"] % SHIFT if chat["type"] == "personal_chat" else chat["id"]
        chat["messages"] = [current(m) for m in chat["messages"]]
    old["chats"]["list"][0]["messages"].append(current(message(5, ME, "new since then")))
    return write_json(path, old)


def test_old_export_ids_are_read_as_today(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    summary = run(old_export(tmp_path / "old.json"), tmp_path / "raw")
    raw = read_raw(tmp_path / "raw")
    assert sorted(raw) == [ANNA, BORIS]  # not 4294967407 and 4294967518; Telegram's 777000 left out
    assert [(m.id, m.out, m.dialog_id) for m in raw[ANNA]] == [
        (2, False, ANNA),
        (3, True, ANNA),
        (4, False, ANNA),
    ]
    assert [(m.id, m.out) for m in raw[BORIS]] == [(10, False), (11, True)]  # + 2^32 senders: mine found
    assert caplog.records == []  # no false "neither you nor the partner" warning
    assert summary.other_chats == {SERVICE_CHAT: 1, "private_group": 1}
    assert "55555" not in "".join(p.read_text() for p in (tmp_path / "raw").glob("*.jsonl"))
    assert "1 Telegram service notifications (777000, login codes)" in summary.line()


def test_old_single_chat_export_without_personal_information(tmp_path: Path) -> None:
    boris = {"name": "Boris", "type": "personal_chat", "id": BORIS + SHIFT}
    boris["messages"] = [message(10, BORIS + SHIFT, "Boris here"), message(11, ME + SHIFT, "hello Boris")]
    run(write_json(tmp_path / "result.json", boris), tmp_path / "raw")
    assert [(m.id, m.out, m.dialog_id) for m in read_raw(tmp_path / "raw")[BORIS]] == [
        (10, False, BORIS),
        (11, True, BORIS),
    ]
    run(write_json(tmp_path / "result.json", boris), tmp_path / "me", me=ME + SHIFT)  # --me as old ids read
    assert [m.out for m in read_raw(tmp_path / "me")[BORIS]] == [False, True]


@pytest.mark.parametrize("order", ["old first", "new first"])
def test_old_and_new_export_of_one_account_merge(tmp_path: Path, order: str) -> None:
    old, new = old_export(tmp_path / "old.json"), new_export(tmp_path / "new.json")
    first, second = (old, new) if order == "old first" else (new, old)
    run(first, tmp_path / "raw")
    run(second, tmp_path / "raw")
    assert run(first, tmp_path / "raw").new_messages == 0 and run(second, tmp_path / "raw").new_messages == 0
    run(new, tmp_path / "clean")
    merged = read_raw(tmp_path / "raw")
    assert merged == read_raw(tmp_path / "clean")  # one file per chat, every message once
    assert [m.id for m in merged[ANNA]] == [2, 3, 4, 5]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["111.jsonl", "222.jsonl", "manifest.json"]


def test_a_copy_filed_under_the_old_id_by_an_earlier_import_is_pointed_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / f"{ANNA + SHIFT}.jsonl").write_text("")  # what twin wrote for Anna's chat before this fix
    run(new_export(tmp_path / "new.json"), out)
    assert len(caplog.records) == 1
    assert f"chat 'Anna' is also in {ANNA + SHIFT}.jsonl" in caplog.text and "delete" in caplog.text


def test_an_import_with_none_of_my_messages_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run(FULL, tmp_path / "raw", me=987654)  # neither Bob nor Carol nor the real me: nothing is mine
    assert "none of the 7 new messages is marked as yours (you: --me = 987654)" in caplog.text
    caplog.clear()
    run(FULL, tmp_path / "raw", me=987654)  # nothing new: nothing to say
    assert "none of" not in caplog.text


def test_todays_user_ids_above_2_32_are_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    big = 6_000_000_000  # user ids passed 2^32 in 2022: only an old-scheme export's ids are shifted back
    chat = {"name": "Zoe", "type": "personal_chat", "id": big, "messages": []}
    chat["messages"] = [
        {"id": 1, "type": "message", "date_unixtime": "1700000000", "from_id": f"user{big}", "text": "hi"},
        {"id": 2, "type": "message", "date_unixtime": "1700000060", "from_id": "user4321", "text": "yo"},
    ]
    run(write_json(tmp_path / "result.json", chat), tmp_path / "raw", me=ME)
    assert [(m.out, m.dialog_id) for m in read_raw(tmp_path / "raw")[big]] == [(False, big), (True, big)]
    assert caplog.records == []


# ---- dates, duplicates -------------------------------------------------------------------------
def chat_of(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "Al", "type": "personal_chat", "id": 5, "messages": entries}


def entry(mid: int, text: str, sender: str = "user5", **date: Any) -> dict[str, Any]:
    return {"id": mid, "type": "message", "from_id": sender, "text": text, **date}


def test_implausible_dates_are_skipped_and_future_ones_kept_with_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = [
        entry(1, "fine", date_unixtime="1600000000"),
        entry(2, "epoch zero", date_unixtime="0"),
        entry(3, "year 33658", date_unixtime="1000000000000"),
        entry(4, "too big for the OS", date_unixtime="99999999999999999999"),
        entry(5, "year one", date="0001-01-01T00:00:00"),
        entry(6, "year 2100", date_unixtime=str(int(time.time()) + 74 * 365 * 86400)),
        entry(7, "before Telegram", date_unixtime="1300000000"),  # 2011
        entry(8, "infinity", date_unixtime="INFINITY"),
    ]
    text = json.dumps(chat_of(entries)).replace('"INFINITY"', "1e400")  # a JSON number Python reads as inf
    summary = run(write_text(tmp_path / "result.json", text), tmp_path / "raw")
    assert [m.message for m in read_raw(tmp_path / "raw")[5]] == ["fine", "year 2100"]
    assert summary.skipped["implausible date"] == 6 and summary.future_dated == 1
    assert "1 kept dated in the future" in summary.line() and "6 implausible date" in summary.line()
    warnings = [r.getMessage() for r in caplog.records if " dated " in r.getMessage()]
    assert len(warnings) == 2
    assert "skipped 6 message(s) dated before Telegram existed (2013-08)" in warnings[0]
    assert "kept 1 message(s) dated more than a day after this machine's clock" in warnings[1]


def test_duplicate_ids_in_a_chat_are_written_once(tmp_path: Path) -> None:
    ids = (1, 2, 2, 3, 5, 4, 4, 6, 2, 6)  # repeated in order, then after the ids went back
    entries = [entry(i, f"m{i}", date_unixtime=str(1_600_000_000 + i)) for i in ids]
    summary = run(write_json(tmp_path / "result.json", chat_of(entries)), tmp_path / "raw")
    assert [m.message for m in read_raw(tmp_path / "raw")[5]] == ["m1", "m2", "m3", "m4", "m5", "m6"]
    assert summary.new_messages == 6 and summary.skipped["duplicate id"] == 4


@given(st.lists(st.integers(-5, 40), max_size=60))
def test_written_ids_remember_like_a_set(ids: list[int]) -> None:
    written, seen = WrittenIds(), set()
    for mid in ids:
        assert written.add(mid) == (mid not in seen)
        seen.add(mid)


# ---- files that cannot be read or written: one line, never a traceback ---------------------------
def chmod_blocks_this_user() -> bool:
    """False for root (with its usual capabilities), whom chmod 000 does not stop."""
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
        except PermissionError:
            return True
        return False


as_root = pytest.mark.skipif(
    not chmod_blocks_this_user(),
    reason="running as root: chmod 000 does not stop root from reading or writing (the root-proof cases "
    "below cover the same errors)",
)


@as_root
def test_unreadable_export_file_and_folder(tmp_path: Path) -> None:
    export = tmp_path / "ChatExport"
    export.mkdir()
    shutil.copy(FULL, export / "result.json")
    (export / "result.json").chmod(0)
    with pytest.raises(CollectError, match=r"result\.json: can't read it \(permission denied\); check"):
        run(export, tmp_path / "raw")
    export.chmod(0)
    try:
        with pytest.raises(CollectError, match=r"can't read it \(permission denied\)"):
            run(export, tmp_path / "raw")
    finally:
        export.chmod(0o700)


@as_root
def test_out_in_a_folder_that_is_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(CollectError, match=r"can't create or use the output folder \(permission denied\)"):
        run(FULL, locked / "raw")


def test_export_path_that_is_not_a_readable_file(tmp_path: Path) -> None:
    (tmp_path / "export" / "result.json").mkdir(parents=True)  # a folder where the file should be
    with pytest.raises(CollectError, match=r"result\.json: a folder, not the export file"):
        run(tmp_path / "export", tmp_path / "raw")
    os.mkfifo(tmp_path / "pipe")  # opening it would wait for a writer forever
    with pytest.raises(CollectError, match="pipe: not a regular file"):
        run(tmp_path / "pipe", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_reading_errors_become_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_open = builtins.open

    def denied(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file).endswith("result.json"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    export = shutil.copy(FULL, tmp_path / "result.json")
    monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(CollectError, match=r"result\.json: can't read it \(permission denied\); check"):
        run(export, tmp_path / "raw")


def test_out_that_cannot_be_created_or_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CollectError, match=r"can't create or use the output folder \(not a directory\)"):
        run(FULL, tmp_path / "file" / "raw")  # the parent is a file: mkdir fails even for root
    out = tmp_path / "raw"
    (out / "111.jsonl").mkdir(parents=True)  # a folder where Bob's chat file goes
    with pytest.raises(CollectError) as info:
        run(FULL, out)
    assert "111.jsonl: can't write the output (is a directory)" in str(info.value)
    assert "pass another --out" in str(info.value)


def test_deeply_nested_json_is_an_error_not_a_crash(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    inside_a_message = json.dumps(chat_of([entry(1, "x", date_unixtime="1600000000")])).replace('"x"', deep)
    in_a_skipped_key = '{"about": ' + deep + ', "chats": {"list": []}}'
    for name, text in [("message.json", inside_a_message), ("skipped.json", in_a_skipped_key)]:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        for chunk in (1 << 20, 4096):
            with pytest.raises(CollectError, match="nested too deeply to be a Telegram Desktop export"):
                run(path, tmp_path / "raw", chunk_chars=chunk)
