"""Telegram Desktop exports as other people's machines write them: every kind of entry in one account,
files passed by mistake, damaged files, exports that hold nothing to learn from, and a big one."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from collect.cli import main
from collect.desktop import import_desktop_export
from collect.errors import CollectError
from collect.jsonstream import locate_bad_utf8
from collect.options import CollectOptions, parse_since
from collect.records import RawMessage
from prepare.config import PrepareConfig
from prepare.pipeline import prepare
from prepare.records import read_records

REPO = Path(__file__).resolve().parents[2]
ME, ANNA, BORIS = 1000, 2000, 3000
T0 = 1_700_000_000  # 2023-11-14


def read_raw(out: Path) -> dict[int, list[RawMessage]]:
    return {
        int(p.stem): [RawMessage.from_dict(json.loads(x)) for x in p.read_text(encoding="utf-8").splitlines()]
        for p in sorted(out.glob("*.jsonl"))
    }


def run(path: Path, out: Path, **kw: Any) -> Any:
    return import_desktop_export(path, out, **{"progress": False, **kw})


def msg(mid: int, sender: int | str | None, text: Any, t: int | None = None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": mid, "type": "message"}
    if t is not None:
        entry["date_unixtime"] = str(t)
    if sender is not None:
        entry["from"] = "Someone"
        entry["from_id"] = sender if isinstance(sender, str) else f"user{sender}"
    return {**entry, "text": text, **extra}


def service(mid: int, actor: int, t: int, **extra: Any) -> dict[str, Any]:
    entry = {"id": mid, "type": "service", "date_unixtime": str(t), "actor_id": f"user{actor}", "text": ""}
    return {**entry, **extra}


def chat(cid: int, name: Any, kind: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "type": kind, "id": cid, "messages": messages}


def account(*chats: dict[str, Any]) -> dict[str, Any]:
    return {
        "about": "Here is the data you requested.",
        "personal_information": {"user_id": ME, "first_name": "Me", "phone_number": "+0 000"},
        "contacts": {"about": "", "list": []},
        "chats": {"about": "", "list": list(chats)},
    }


def write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def anna_chat() -> dict[str, Any]:
    """One personal chat with every kind of entry Desktop writes, in the current scheme."""
    entities = [
        "look ",
        {"type": "link", "text": "https://example.org"},
        " and ask ",
        {"type": "mention", "text": "@boris"},
        {"type": "bold", "text": " now"},
        ", run ",
        {"type": "code", "text": "make demo"},
        {"type": "spoiler", "text": " (secret)"},
        {"type": "custom_emoji", "text": "🙂", "document_id": "5368324170671202286"},
    ]
    return chat(ANNA, "Anna", "personal_chat", [
        msg(1, ANNA, "hi, are you there?", T0),
        msg(2, ME, entities, T0 + 60, text_entities=[{"type": "plain", "text": "ignored: text wins"}]),
        service(3, ANNA, T0 + 70, action="phone_call", duration_seconds=12),
        service(4, ME, T0 + 80, action="pin_message", message_id=1),
        msg(5, ANNA, "", T0 + 90, photo="photos/photo_1.jpg", width=1280, height=720),
        msg(6, ME, "", T0 + 91, file="stickers/s.webp", media_type="sticker", sticker_emoji="👍"),
        msg(7, ANNA, "", T0 + 92, file="voice/v.ogg", media_type="voice_message", duration_seconds=3),
        msg(8, ANNA, [], T0 + 93, file="video/v.mp4", media_type="video_file"),
        msg(9, ANNA, "", T0 + 94, file="files/doc.pdf", mime_type="application/pdf"),
        msg(10, ANNA, "", T0 + 95, poll={"question": "pizza?", "closed": False, "answers": []}),
        msg(11, ANNA, "", T0 + 96, location_information={"latitude": 52.5, "longitude": 13.4}),
        msg(12, ANNA, "", T0 + 97, contact_information={"first_name": "B", "phone_number": "+49 30 1234"}),
        msg(13, ANNA, "news!", T0 + 98, forwarded_from="Some Channel", forwarded_from_id="channel77"),
        msg(14, ME, "about that message", T0 + 99, reply_to_message_id=999_999),  # replies to a deleted one
        msg(15, ANNA, "here is the doc", T0 + 100, file="files/x.pdf"),  # a caption counts as text
        msg(16, ANNA, "fixed typo", T0 + 101, edited="2023-11-14T23:00:00", edited_unixtime=str(T0 + 3600)),
        msg(17, ME, "nice", T0 + 102, reactions=[{"type": "emoji", "count": 1, "emoji": "❤"}]),
        # the same second, listed out of id order: the raw file keeps both
        msg(19, ANNA, "second", T0 + 200),
        msg(18, ANNA, "first", T0 + 200),
        msg(18, ANNA, "first", T0 + 200),  # listed twice: written once
        # a date only (the exporting machine's local time) and no date_unixtime
        {"id": 20, "type": "message", "date": "2023-11-14T22:20:00", "from": "Me", "from_id": f"user{ME}",
         "text": "local date only"},
        # years later: a new conversation; the sender is null (a deleted name) but from_id is there
        msg(21, ANNA, "long time no see", T0 + 3 * 365 * 86400, **{"from": None}),
        msg(22, ME, "indeed", T0 + 3 * 365 * 86400 + 30),
        msg(23, "channel456", "posted as a channel", T0 + 3 * 365 * 86400 + 40),
    ])  # fmt: skip


def test_a_full_account_with_every_kind_of_entry_and_chat(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    only_mine = chat(
        4000, "Only Me", "personal_chat", [msg(1, ME, "anyone?", T0), msg(2, ME, "hello?", T0 + 5)]
    )
    only_theirs = chat(5000, None, "personal_chat", [msg(1, 5000, "hi from a deleted account", T0)])
    others = [
        chat(ME, "Saved Messages", "saved_messages", [msg(1, ME, "note to self", T0)]),
        chat(6000, "Family", "private_group", [msg(1, BORIS, "dinner?", T0)]),
        chat(6001, "Work", "private_supergroup", [msg(1, BORIS, "standup", T0)]),
        chat(6002, "News", "public_channel", [msg(1, "channel6002", "headline", T0)]),
        chat(6003, "Helper", "bot_chat", [msg(1, 6003, "/start", T0)]),
        chat(777000, "Telegram", "personal_chat", [msg(1, 777000, "Login code: 12345", T0)]),
    ]
    export = write(tmp_path / "result.json", account(anna_chat(), only_mine, only_theirs, *others))
    summary = run(export, tmp_path / "raw")

    raw = read_raw(tmp_path / "raw")
    assert sorted(raw) == [ANNA, 4000, 5000]
    anna = [(m.id, m.out, m.message) for m in raw[ANNA]]
    assert anna == [
        (1, False, "hi, are you there?"),
        (2, True, "look https://example.org and ask @boris now, run make demo (secret)🙂"),
        (14, True, "about that message"),
        (15, False, "here is the doc"),
        (16, False, "fixed typo"),
        (17, True, "nice"),
        (19, False, "second"),
        (18, False, "first"),
        (20, True, "local date only"),
        (21, False, "long time no see"),
        (22, True, "indeed"),
    ]
    assert raw[5000][0].dialog_name == "Deleted Account"
    assert summary.other_chats == {
        "saved_messages": 1, "private_group": 1, "private_supergroup": 1, "public_channel": 1, "bot_chat": 1,
        "Telegram service notifications (777000, login codes)": 1,
    }  # fmt: skip
    assert summary.skipped == {
        "service or unsupported": 2, "media without caption or empty": 5, "sticker": 1, "poll": 1,
        "contact": 1, "forwarded": 1, "duplicate id": 1, "unknown sender": 1,
    }  # fmt: skip
    line = summary.line()
    assert "3 personal chats" in line and "6 other chats left out" in line and "1 bot_chat" in line
    assert any(
        "1 message(s) of personal chats whose sender is not a user" in r.getMessage() for r in caplog.records
    )

    # ... and prepare makes one-to-one records of it: speakers labelled, the years-long gap splits
    stats = prepare(
        PrepareConfig(raw=tmp_path / "raw", out=tmp_path / "prepared", feedback=None, val_fraction=0)
    )
    records = read_records(tmp_path / "prepared" / "train.jsonl")
    longer = "look https://example.org and ask @boris now, run make demo (secret)🙂"
    assert [(r.instruction, r.response) for r in records] == [
        ("hi, are you there?", f"{longer}\nabout that message"),  # my two messages: one turn
        ("here is the doc\nfixed typo", "nice"),
        ("first\nsecond", "local date only"),  # the same instant: in id order
        ("long time no see", "indeed"),  # three years later: a new conversation, no context
    ]
    assert records[1].context == f"Anna: hi, are you there?\nMe: {longer}\nabout that message"
    assert records[3].context == "" and records[3].partner == "Anna"
    assert stats["dialogs"] == 3 and stats["dialogs_without_replies"] == 1
    assert stats["skipped"]["reply_opens_conversation"] == 1  # "Only Me": nothing it answers


# ---- files passed by mistake -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "a zip archive: unzip it"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "a gzip archive"),
        (b"7z\xbc\xaf\x27\x1c\x00\x04", "a 7-Zip archive: unpack it"),
        (b"\x89PNG\r\n\x1a\n\x00", "a PNG image, not the export"),
        (b"%PDF-1.7\n%\xe2\xe3", "a PDF document, not the export"),
        ('{"name": "Al"}'.encode("utf-16"), "UTF-16 text, not UTF-8"),
        ('{"name": "Al"}'.encode("utf-16-be").join([b"\xfe\xff", b""]), "UTF-16 text, not UTF-8"),
    ],
)
def test_archives_and_utf16_files_are_named_with_the_fix(tmp_path: Path, head: bytes, expected: str) -> None:
    path = tmp_path / "result.json"
    path.write_bytes(head)
    with pytest.raises(CollectError) as info:
        run(path, tmp_path / "raw")
    assert str(info.value).startswith(f"{path}: this is {expected}")


def test_html_export_files_and_folders_are_refused_with_the_fix(tmp_path: Path) -> None:
    page = '\ufeff\n  <!DOCTYPE html>\n<html><head><meta charset="utf-8"/></head></html>'
    how = r"Export chat history.*Format: 'Machine-readable JSON'"
    (tmp_path / "messages.html").write_text(page, encoding="utf-8")
    with pytest.raises(CollectError, match=f"^{tmp_path / 'messages.html'}: this is HTML, not JSON; .*{how}"):
        run(tmp_path / "messages.html", tmp_path / "raw")
    with pytest.raises(CollectError, match=f"^{tmp_path / 'messages.html'}: an HTML export; .*{how}"):
        run(tmp_path, tmp_path / "raw")
    parent = tmp_path / "Telegram Desktop"
    for name in ("ChatExport_2024-05-01", "DataExport_2024-06-01"):
        (parent / name).mkdir(parents=True)
        html = "messages.html" if name.startswith("Chat") else "export_results.html"
        (parent / name / html).write_text(page, encoding="utf-8")
    with pytest.raises(CollectError) as info:
        run(parent, tmp_path / "out")
    assert str(info.value).startswith(
        f"{parent}: the exports in this folder are HTML (ChatExport_2024-05-01, DataExport_2024-06-01); "
        "twin reads only the JSON format: export again"
    )
    assert not (tmp_path / "out").exists()


def test_a_folder_of_exports_imports_each_of_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Exporting chats one by one leaves ChatExport_<date>, ChatExport_<date> (1), ... side by side."""
    parent = tmp_path / "Telegram Desktop"

    def two(cid: int, name: str, first: str, second: str) -> dict[str, Any]:
        return chat(cid, name, "personal_chat", [msg(1, cid, first, T0), msg(2, ME, second, T0 + 1)])

    newer = two(ANNA, "Anna", "hi", "yo")
    newer["messages"] += [msg(3, ANNA, "later", T0 + 9), msg(4, ME, "sure", T0 + 10)]
    exports = {
        "ChatExport_2024-05-01": two(ANNA, "Anna", "hi", "yo"),
        "ChatExport_2024-05-01 (1)": two(BORIS, "Boris", "hey", "ho"),
        "ChatExport_2024-06-01": newer,
        "ChatExport_2024-06-03": chat(6000, "Family", "private_group", [msg(1, BORIS, "dinner?", T0)]),
    }
    for name, export in exports.items():
        (parent / name).mkdir(parents=True)
        write(parent / name / "result.json", export)
    (parent / "ChatExport_2024-06-02").mkdir()
    (parent / "ChatExport_2024-06-02" / "messages.html").write_text("<!DOCTYPE html>", encoding="utf-8")
    (parent / "photos").mkdir()  # a folder that holds no export
    (parent / "ChatExport_2024-05-01" / "messages.html").write_text("<html>", encoding="utf-8")  # "Both"

    summary = run(parent, tmp_path / "raw")
    raw = read_raw(tmp_path / "raw")
    assert {cid: [m.message for m in ms] for cid, ms in raw.items()} == {
        ANNA: ["hi", "yo", "later", "sure"],
        BORIS: ["hey", "ho"],
    }
    assert (summary.exports, summary.dialogs, summary.new_messages, summary.total_messages) == (4, 2, 6, 6)
    assert summary.other_chats == {"private_group": 1}
    assert summary.html_exports == [parent / "ChatExport_2024-06-02"]
    assert summary.skipped == {"already collected": 2}  # Anna's first two, in the newer export again
    line = summary.line()
    assert line.startswith("collect desktop: 4 exports, 2 personal chats, 6 new messages (6 in all)")
    assert line.endswith("; 1 HTML exports left out (export them again as JSON)")
    assert any(
        "left out 1 HTML export(s) (ChatExport_2024-06-02)" in r.getMessage()
        and "Machine-readable" in r.getMessage()
        for r in caplog.records
    )
    assert run(parent, tmp_path / "raw").new_messages == 0  # again: nothing new


def test_a_broken_export_in_a_folder_of_exports_is_named(tmp_path: Path) -> None:
    parent = tmp_path / "exports"
    first, second = parent / "ChatExport_2024-05-01", parent / "ChatExport_2024-06-01"
    first.mkdir(parents=True)
    second.mkdir()
    write(
        first / "result.json",
        chat(ANNA, "Anna", "personal_chat", [msg(1, ANNA, "hi", T0), msg(2, ME, "yo", T0 + 1)]),
    )
    text = json.dumps(chat(BORIS, "Boris", "personal_chat", [msg(1, BORIS, "hey", T0)]), indent=1)
    (second / "result.json").write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(CollectError) as info:
        run(parent, tmp_path / "raw")
    message = str(info.value)
    assert message.startswith(f"{second / 'result.json'}: the JSON ends too early")
    assert f"[export 2 of 2 in {parent}: the ones before it are imported; fix this one or move" in message
    assert sorted(read_raw(tmp_path / "raw")) == [ANNA]


def test_a_folder_inside_an_export_points_to_its_result_json(tmp_path: Path) -> None:
    export = tmp_path / "DataExport_2024-05-01"
    (export / "chats" / "chat_001" / "photos").mkdir(parents=True)
    write(export / "result.json", account(anna_chat()))
    for inside in (export / "chats", export / "chats" / "chat_001"):
        with pytest.raises(CollectError) as info:
            run(inside, tmp_path / "raw")
        assert str(info.value) == (
            f"{inside}: no result.json in this folder, but in {export}: pass {export / 'result.json'}"
        )


def test_a_chat_without_a_type_is_left_out_as_of_unknown_type(tmp_path: Path) -> None:
    untyped = {"name": "Odd", "id": 7000, "messages": [msg(1, 7000, "?", T0)]}
    export = account(anna_chat(), chat(6000, "Odd", None, [msg(1, 6000, "?", T0)]), untyped)  # type: ignore[arg-type]
    summary = run(write(tmp_path / "result.json", export), tmp_path / "raw")
    assert summary.other_chats == {"of unknown type": 2}
    assert "2 other chats left out (2 of unknown type)" in summary.line()
    with pytest.raises(CollectError, match=r"no personal chats in this export \(found 1 of unknown type\)"):
        run(write(tmp_path / "single.json", chat(6000, "Odd", None, [])), tmp_path / "raw2")  # type: ignore[arg-type]


# ---- damaged files -----------------------------------------------------------------------------------
def test_bytes_that_are_not_utf8_are_located(tmp_path: Path) -> None:
    good = json.dumps(chat(ANNA, "Anna", "personal_chat", [msg(1, ANNA, "x" * 300, T0)]), indent=1)
    bad = good.encode("utf-8").replace(b"xxx", b"x\xe9x", 1)  # a Latin-1 "é" in UTF-8 text
    path = tmp_path / "result.json"
    path.write_bytes(bad)
    line = good[: good.index("xxx")].count("\n") + 1
    byte = bad.index(b"\xe9") + 1
    for chunk in (64, 1 << 20):
        with pytest.raises(CollectError) as info:
            run(path, tmp_path / "raw", chunk_chars=chunk)
        message = str(info.value)
        assert (
            f"not UTF-8 text (invalid continuation byte at line {line}, byte {byte} of the file)" in message
        )
        assert "export again" in message
    assert not list((tmp_path / "raw").glob("*.jsonl"))


def test_telegram_desktops_own_invalid_json_is_mended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Desktop writes control characters as \\xHH (any version: tdesktop #27571) and, in 4.1, custom emoji
    document_ids without quotes (#24961); neither may stop the import of a whole account."""
    emoji = {"type": "custom_emoji", "text": "🙂", "document_id": "BARE"}
    bot = chat(6003, "Shop", "bot_chat", [
        msg(1, 6003, "pick one", T0, inline_bot_buttons=[[{"type": "callback", "data": "1=4CTRL2=9"}]]),
    ])  # fmt: skip
    anna = chat(ANNA, "Anna", "personal_chat", [
        msg(1, ANNA, "line oneCTRLline two", T0),
        msg(2, ME, ["nice ", emoji], T0 + 1, text_entities=[{"type": "plain", "text": "nice "}, emoji]),
    ])  # fmt: skip
    text = json.dumps(account(bot, anna), ensure_ascii=False, indent=1)
    text = text.replace("CTRL", "\\x0B").replace('"BARE"', "video_files/sticker (2).webm")
    (tmp_path / "result.json").write_text(text, encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)  # as jq, json.load and the rest see it
    caplog.set_level(logging.INFO)
    for chunk in (16, 1 << 20):
        summary = run(tmp_path / "result.json", tmp_path / f"raw{chunk}", chunk_chars=chunk)
        assert [m.message for m in read_raw(tmp_path / f"raw{chunk}")[ANNA]] == [
            "line one\x0bline two",
            "nice 🙂",
        ]
        assert summary.other_chats == {"bot_chat": 1}
    assert any(
        "mended 4 place(s) where Telegram Desktop wrote invalid JSON" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1 << 20])
def test_locate_bad_utf8_across_chunk_edges(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"ab\nc\xc3\xa9\n\nxyz\xe2\x82\n\xffq")  # a 3-byte character cut short at byte 12
    assert locate_bad_utf8(str(path), chunk) == "line 4, byte 12 of the file"
    path.write_bytes("ok\né".encode()[:-1])  # the file ends inside a character
    assert locate_bad_utf8(str(path), chunk) == "line 2, byte 4 of the file"
    assert locate_bad_utf8(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("mid", [0, -7])
def test_a_message_id_that_is_not_positive_is_an_error_not_already_collected(
    tmp_path: Path, mid: int
) -> None:
    entries = [msg(mid, ANNA, "hi", T0), msg(2, ME, "hey", T0 + 1)]
    path = write(tmp_path / "result.json", chat(ANNA, "Anna", "personal_chat", entries))
    with pytest.raises(CollectError) as info:
        run(path, tmp_path / "raw")
    assert f"message #1 of chat {ANNA} has no positive integer 'id' (got {mid})" in str(info.value)
    assert "export again" in str(info.value) and "at line " in str(info.value)


def test_a_message_without_a_usable_date_says_what_it_got_and_what_to_do(tmp_path: Path) -> None:
    entries = [msg(1, ANNA, "hi", T0), {**msg(2, ME, "hey"), "date_unixtime": "soon"}]
    path = write(tmp_path / "result.json", chat(ANNA, "Anna", "personal_chat", entries))
    with pytest.raises(CollectError) as info:
        run(path, tmp_path / "raw")
    message = str(info.value)
    assert (
        f"message id 2 of chat {ANNA} has no usable 'date_unixtime' or 'date' (got 'soon' and None)"
        in message
    )
    assert "export again" in message


# ---- nothing to learn from: an error, not a silent success ------------------------------------------
def media_only() -> dict[str, Any]:
    return chat(ANNA, "Anna", "personal_chat", [
        msg(1, ANNA, "", T0, photo="photos/1.jpg"),
        msg(2, ME, "", T0 + 1, file="s.webp", media_type="sticker"),
        service(3, ME, T0 + 2, action="phone_call"),
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("export", "options", "expected"),
    [
        (media_only(), CollectOptions(), "export chats in which you write"),
        (
            chat(ANNA, "Anna", "personal_chat", [msg(1, ANNA, "old", T0), msg(2, ME, "older", T0 + 1)]),
            CollectOptions(since=parse_since("2030-01-01")),
            "pass an earlier --since",
        ),
        (
            chat(
                ANNA,
                "Anna",
                "personal_chat",
                [msg(1, None, "no sender", T0), msg(2, None, "nor here", T0 + 1)],
            ),
            CollectOptions(),
            "carry no sender ('from_id')",
        ),
        (
            chat(ANNA, "Anna", "personal_chat", [msg(1, ANNA, "fwd", T0, forwarded_from="Chan")]),
            CollectOptions(),
            "--keep-forwarded",
        ),
    ],
)
def test_an_export_without_any_text_message_is_an_error_saying_why(
    tmp_path: Path, export: dict[str, Any], options: CollectOptions, expected: str
) -> None:
    path = write(tmp_path / "result.json", export)
    with pytest.raises(CollectError) as info:
        run(path, tmp_path / "raw", options=options)
    message = str(info.value)
    assert message.startswith(f"{path}: nothing to import: none of the ") and expected in message
    assert "skipped: " in message


def test_nothing_new_in_a_reimport_is_still_a_success(tmp_path: Path) -> None:
    export = chat(ANNA, "Anna", "personal_chat", [msg(1, ANNA, "hi", T0), msg(2, ME, "hey", T0 + 1)])
    path = write(tmp_path / "result.json", export)
    run(path, tmp_path / "raw")
    assert run(path, tmp_path / "raw").new_messages == 0  # kept before: nothing new is fine


def test_nothing_to_import_through_both_clis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prepare.__main__ import cli as prepare_cli

    path = write(tmp_path / "result.json", media_only())
    assert main(["desktop", str(path), "--out", str(tmp_path / "raw")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nothing to import" in lines[0]
    # prepare on what collect left (a manifest, no chat files) says collect kept nothing
    assert (
        prepare_cli(["--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "p"), "--feedback", "none"]) == 2
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "collect found no text messages" in lines[0], lines


# ---- a big export: streamed, memory stays small -------------------------------------------------------
def write_big_export(path: Path, n: int, chats: int = 4) -> None:
    per_chat = n // chats
    with open(path, "w", encoding="utf-8") as f:
        f.write(f'{{"personal_information": {{"user_id": {ME}}}, "chats": {{"list": [')
        for c in range(chats):
            cid = ANNA + c
            head = f'{{"name": "P{c}", "type": "personal_chat", "id": {cid}, "messages": ['
            f.write(("," if c else "") + head)
            rows = (
                f'{{"id": {i + 1}, "type": "message", "date_unixtime": "{T0 + 30 * i}", '
                f'"from_id": "user{ME if i % 3 == 0 else cid}", "text": "msg {i}"}}'
                for i in range(per_chat)
            )
            f.write(",".join(rows))
            f.write("]}")
        f.write("]}}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from Linux's /proc")
def test_a_200k_message_export_imports_in_little_memory(tmp_path: Path) -> None:
    export = tmp_path / "result.json"
    write_big_export(export, 200_000)
    # A fresh interpreter, so its peak memory is this import's alone (json.load would need ~250 MB here).
    # VmHWM, not ru_maxrss: the latter survives exec, so it would report this pytest process's peak.
    code = (
        "import re, sys; from pathlib import Path; from collect.desktop import import_desktop_export; "
        "s = import_desktop_export(Path(sys.argv[1]), Path(sys.argv[2]), progress=False); "
        "hwm = re.search(r'VmHWM:\\s*(\\d+) kB', Path('/proc/self/status').read_text()); "
        "print(s.new_messages, int(hwm.group(1)) // 1024)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(export), str(tmp_path / "raw")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written, peak_mb = map(int, result.stdout.split())
    assert written == 200_000
    assert peak_mb < 70, f"peak RSS {peak_mb} MB: the export is no longer streamed"
    lines = (tmp_path / "raw" / f"{ANNA}.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 50_000 and json.loads(lines[-1])["message"] == "msg 49999"


def test_logging_is_quiet_for_a_clean_export(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    export = chat(ANNA, "Anna", "personal_chat", [msg(1, ANNA, "hi", T0), msg(2, ME, "hey", T0 + 1)])
    run(write(tmp_path / "result.json", export), tmp_path / "raw")
    assert caplog.records == []
