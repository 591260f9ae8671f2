"""JSONL files as editors save them (a BOM, a code page, UTF-16) and records with nothing to learn: every
reader names the file, the line and what to do; no record with an empty reply is written or read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prepare_helpers import msg, write_raw

from prepare.__main__ import cli
from prepare.build import build_records
from prepare.config import PrepareConfig
from prepare.errors import PrepareError
from prepare.feedback import read_feedback
from prepare.jsonl import wide_encoding
from prepare.load import load_messages
from prepare.prompt import clean_text, partner_label
from prepare.records import is_blank, read_records

ROOT = Path(__file__).resolve().parents[2]
RECORD = {
    "instruction": "Ça va? Как дела?",
    "context": "",
    "response": "très bien, спасибо",
    "dialog_id": 7,
    "date": "2024-05-01T09:31:00+00:00",
    "partner": "Zoë",
}
SECRET = "hunter2"  # in every bad line: no error may quote it


def lines(*records: dict) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---- train/val records ---------------------------------------------------------------------------------


def test_a_utf8_bom_is_skipped_silently(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", b"\xef\xbb\xbf" + lines(RECORD, RECORD).encode())
    assert [r.response for r in read_records(path)] == [RECORD["response"]] * 2
    # two files joined with `cat`: the second one's BOM starts a line
    joined = b"\xef\xbb\xbf" + lines(RECORD).encode() + b"\xef\xbb\xbf" + lines(RECORD).encode()
    assert len(read_records(write(tmp_path / "joined.jsonl", joined))) == 2


@pytest.mark.parametrize(
    ("codec", "text", "byte"),
    [
        ("latin-1", "Ça va, " + SECRET, 0xC7),  # "Ç" saved by a Western editor
        ("cp1252", "café " + SECRET, 0xE9),
        ("cp1251", "привет " + SECRET, 0xEF),  # Cyrillic saved in the Windows code page
    ],
)
def test_a_code_page_names_file_line_byte_and_the_fix(
    tmp_path: Path, codec: str, text: str, byte: int
) -> None:
    good = lines(RECORD).encode()
    plain = RECORD | {"instruction": "hi", "partner": "Anna", "response": text}
    bad = json.dumps(plain, ensure_ascii=False).encode(codec) + b"\n"
    path = write(tmp_path / "train.jsonl", good + b"\n" + bad)
    with pytest.raises(ValueError) as info:
        read_records(path)
    message = str(info.value)
    offset = len(good) + 1 + bad.index(bytes([byte]))
    assert message.startswith(f"{path}:3: line is not valid UTF-8: byte 0x{byte:02X} at byte offset {offset}")
    assert "re-save the file as UTF-8" in message and "re-run `make prepare`" in message
    assert "not valid JSON" not in message and SECRET not in message and "\n" not in message


@pytest.mark.parametrize(
    ("codec", "name"),
    [
        ("utf-16", "UTF-16LE"),  # Notepad's "Unicode": a BOM, then little-endian
        ("utf-16-le", "UTF-16LE"),
        ("utf-16-be", "UTF-16BE"),
        ("utf-32", "UTF-32LE"),
    ],
)
def test_utf16_and_utf32_are_named(tmp_path: Path, codec: str, name: str) -> None:
    path = write(tmp_path / "val.jsonl", lines(RECORD | {"response": SECRET}).encode(codec))
    with pytest.raises(ValueError) as info:
        read_records(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the file is {name} text, not UTF-8; re-save it as UTF-8")
    assert f"iconv -f {name} -t UTF-8" in message and "not valid JSON" not in message


def test_utf16_is_named_even_after_a_blank_first_line(tmp_path: Path) -> None:
    path = write(tmp_path / "val.jsonl", ("\n" + lines(RECORD)).encode("utf-16-le"))
    with pytest.raises(ValueError, match="the file is UTF-16LE text"):
        read_records(path)


def test_zero_bytes_and_bad_json_keep_their_own_messages(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", lines(RECORD).encode() + b"\x00" * 64 + b"\n")
    with pytest.raises(ValueError, match=r"train\.jsonl:2: line holds zero bytes: the file is damaged"):
        read_records(path)
    path = write(tmp_path / "train.jsonl", (lines(RECORD) + '{"response": "' + SECRET + "\n").encode())
    with pytest.raises(ValueError, match=r"train\.jsonl:2: not valid JSON; re-run `make prepare`$"):
        read_records(path)


def test_wide_encoding_tells_utf8_from_utf16() -> None:
    assert wide_encoding(lines(RECORD).encode()) is None
    assert wide_encoding(lines(RECORD).encode("utf-16-be")) == "UTF-16BE"
    assert wide_encoding(lines(RECORD).encode("utf-32-be")) == "UTF-32BE"
    cyrillic = lines(RECORD | {"response": "всё хорошо, спасибо, а у тебя как дела сегодня? " * 5})
    assert wide_encoding(cyrillic.encode("utf-16-le")) == "UTF-16LE"  # few zeros, all at odd bytes
    assert wide_encoding(b"\x00" * 40) is None  # zeros alone: damage, not an encoding


@pytest.mark.parametrize("response", ["", "   ", "\n\t", "\u3164", "\u2800 \u200b", "\ufeff"])
def test_a_record_with_an_empty_reply_is_an_error_naming_it(tmp_path: Path, response: str) -> None:
    empty = RECORD | {"response": response}
    path = write(tmp_path / "train.jsonl", lines(RECORD, empty, RECORD, empty, empty).encode())
    with pytest.raises(ValueError) as info:
        read_records(path)
    assert str(info.value).startswith(f"{path}:2: field 'response' is empty (and 2 more lines)")
    assert "delete those lines or re-run `make prepare`" in str(info.value)


def test_is_blank() -> None:
    assert all(is_blank(t) for t in ["", " \n", "\u3164", "\u2800", "\u200b\u200d", "\ufe0f", "\xad"])
    assert not any(is_blank(t) for t in ["a", " . ", "🙂", "ㅋ", "\u3164a", "0"])


# ---- reply's feedback and the raw chats -----------------------------------------------------------------


def feedback_line(**fields: object) -> dict:
    return {"version": 1, "source": "reply", "outcome": "edited", "dialog_id": 7, "partner": "Zoë",
            "date": "2024-05-01T09:31:00+00:00", "instruction": "Ça va?", "turns": [], "draft": "ok",
            "response": "très bien", "similarity": 0.5} | fields  # fmt: skip


def test_feedback_with_a_bom_reads_and_in_latin1_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "feedback.jsonl", b"\xef\xbb\xbf" + lines(feedback_line()).encode())
    assert [f.response for f in read_feedback(path)] == ["très bien"]

    data = lines(feedback_line(), feedback_line(response="déjà " + SECRET)).encode("latin-1")
    first = next(i for i, b in enumerate(data) if b >= 0x80)  # "ë" of "Zoë"
    write(path, data)
    raw = write_raw(tmp_path / "raw", [msg(1, 0, False, "hi"), msg(2, 1, True, "hey")])
    assert cli(["--raw", str(raw), "--out", str(tmp_path / "out"), "--feedback", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"prepare: {path}:1: line is not valid UTF-8: byte 0x{data[first]:02X} at byte offset {first} "
    )
    assert "--feedback none" in err[0] and SECRET not in err[0]


def test_a_raw_chat_in_utf16_or_a_code_page_is_named(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    good = json.dumps(msg(1, 0, True, "hey"), ensure_ascii=False)
    (raw / "1.jsonl").write_bytes((good + "\n").encode("utf-16"))
    with pytest.raises(PrepareError, match=r"1\.jsonl: the file is UTF-16LE text, not UTF-8.*make collect"):
        load_messages(raw)
    bad = json.dumps(msg(2, 1, False, "café " + SECRET), ensure_ascii=False).encode("cp1252")
    (raw / "1.jsonl").write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\n" + bad + b"\n")
    offset = 3 + len(good.encode()) + 1 + bad.index(b"\xe9")
    with pytest.raises(PrepareError) as info:
        load_messages(raw)
    message = str(info.value)
    assert message.startswith(
        f"{raw / '1.jsonl'}:2: line is not valid UTF-8: byte 0xE9 at byte offset {offset} "
    )
    assert "re-run `make collect`" in message and SECRET not in message


def test_cli_subprocess_encoding_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "5.jsonl").write_bytes(json.dumps(msg(1, 0, True, "привет " + SECRET)).encode("utf-16-be"))
    result = subprocess.run(
        [sys.executable, "-m", "prepare", "--raw", str(raw), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in result.stderr
    assert err[0].startswith(f"prepare: {raw / '5.jsonl'}: the file is UTF-16BE text, not UTF-8")


# ---- building records: never an empty reply ----------------------------------------------------------------


@pytest.mark.parametrize("blank", ["\u3164", "\u2800", " \u3164 \u200b", "\u115f\u1160"])
def test_a_message_that_shows_nothing_is_dropped_like_an_empty_one(tmp_path: Path, blank: str) -> None:
    assert clean_text(blank) == ""
    assert clean_text(f"hi{blank}there") == f"hi{blank}there".replace("\u200b", "")  # inside a message, kept
    raw = write_raw(
        tmp_path / "raw",
        [msg(1, 0, False, "you there?"), msg(2, 1, True, blank), msg(3, 2, False, "hello?"),
         msg(4, 3, True, "yes")],
    )  # fmt: skip
    built = build_records(load_messages(raw), PrepareConfig(raw=raw, out=tmp_path / "out"))
    assert [(r.instruction, r.response) for r in built.records] == [("you there?\nhello?", "yes")]
    assert built.skipped["empty_message"] == 1


def test_replies_left_empty_by_scrubbing_are_counted_in_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = []
    for c in range(3):
        t = c * 60 * 30
        messages += [msg(4 * c + 1, t, False, "email?"), msg(4 * c + 2, t + 1, True, "a@example.com \u3164"),
                     msg(4 * c + 3, t + 2, False, "ok?"), msg(4 * c + 4, t + 3, True, "ok")]  # fmt: skip
    raw = write_raw(tmp_path / "raw", messages)
    out = tmp_path / "out"
    assert cli(["--raw", str(raw), "--out", str(out), "--val-fraction", "0", "--feedback", "none"]) == 0
    records = read_records(out / "train.jsonl")
    assert [r.response for r in records] == ["ok"] * 3
    printed = " ".join(capsys.readouterr().out.split())
    assert "Wrote 3 train and 0 val records" in printed and "left out 3 empty replies" in printed
    assert json.loads((out / "stats.json").read_text())["skipped"]["response_only_placeholders"] == 3


def test_a_name_of_blank_letters_is_no_name(tmp_path: Path) -> None:
    raw = write_raw(
        tmp_path / "raw",
        [
            msg(1, 0, False, "hi", name="\u3164"),
            msg(2, 1, True, "hey", name="\u3164"),
            msg(3, 2, False, "ok?", name="\u3164"),
            msg(4, 3, True, "ok", name="\u3164"),
        ],
    )
    built = build_records(load_messages(raw), PrepareConfig(raw=raw, out=tmp_path / "out"))
    assert {r.partner for r in built.records} == {""}
    assert built.records[1].context == "Friend: hi\nMe: hey"
    assert partner_label("\u3164 \u2800") == "Friend"
