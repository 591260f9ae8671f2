"""Reading raw JSONL: both readers agree, and every bad line is reported as file:line without its text."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from prepare_helpers import msg, write_raw

from prepare.errors import PrepareError
from prepare.load import load_messages

SECRET = "hunter2-secret-text"


def good_line(**changes: object) -> str:
    return json.dumps({**msg(7, 0, False, SECRET), **changes}, ensure_ascii=False)


def test_fast_and_exact_readers_agree_on_messy_valid_input(tmp_path: Path) -> None:
    raw = write_raw(
        tmp_path / "raw",
        [
            msg(2, 5, True, "later line first", tz_hours=-5),
            msg(1, 0, False, "  spaces, emoji 😂, кириллица\n", tz_hours=3),
            msg(3, 5, False, "", dialog_id=2, name=""),
            msg(4, 6, True, "\u0000 control", dialog_id=2),
        ],
    )
    # a BOM, CRLF line ends, blank lines and a last line without a newline
    path = raw / "1.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n\n  \n").rstrip())
    fast, exact = load_messages(raw), load_messages(raw, exact=True)
    pd.testing.assert_frame_equal(fast, exact)
    assert fast["id"].tolist() == [2, 1, 3, 4]
    assert fast["ts"].tolist()[:2] == [1714554300000000, 1714554000000000]  # 09:05Z, 09:00Z in µs


def test_missing_raw_folder_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="does not exist: run `make collect` first"):
        load_messages(tmp_path / "nope")


def test_empty_raw_folder_says_what_to_run(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(PrepareError, match="no \\*.jsonl dialog files: run `make collect` first"):
        load_messages(tmp_path / "raw")
    # collect ran here (its manifest is there) but kept nothing: running it again would not help
    (tmp_path / "raw" / "manifest.json").write_text("{}")
    with pytest.raises(PrepareError, match="but no \\*.jsonl dialog files: collect found no text messages"):
        load_messages(tmp_path / "raw")


def test_only_empty_files(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "1.jsonl").write_text("\n\n")
    with pytest.raises(PrepareError, match="all empty: run `make collect` first"):
        load_messages(tmp_path / "raw")


BAD_LINES: dict[str, tuple[str, str]] = {
    "not JSON": (f'{{"id": 7, "message": "{SECRET}"', "is not valid JSON"),
    "not UTF-8": (good_line().replace(SECRET, "\udcff"), "is not valid UTF-8"),
    "not an object": (json.dumps([SECRET]), "expected a JSON object"),
    "missing field": (
        json.dumps({k: v for k, v in json.loads(good_line()).items() if k != "out"}),
        "missing field 'out'",
    ),
    "null field": (good_line(message=None), "field 'message' must be str"),
    "wrong type": (good_line(id="7"), "field 'id' must be an integer"),
    "bool as int": (good_line(dialog_id=True), "field 'dialog_id' must be an integer"),
    "int as bool": (good_line(out=1), "field 'out' must be true or false"),
    "huge int": (
        good_line().replace('"id": 7', '"id": 99999999999999999999'),
        "field 'id' must be an integer",
    ),
    "u64 int": (good_line().replace('"id": 7', '"id": 18446744073709551615'), "field 'id' is out of range"),
    "no offset": (good_line(date="2024-05-01T09:00:00"), "has no UTC offset"),
    "not a date": (good_line(date=f"{SECRET}+03:00"), "is not ISO-8601"),
    "a day, no time": (good_line(date="2024-05-01"), "is a day, not an instant"),  # "-01" is no UTC offset
    "empty date": (good_line(date=""), "field 'date' is empty"),
    "unix seconds": (good_line(date=1714554000), "field 'date' is a number (a Unix timestamp?)"),
    "unix ms as text": (good_line(date="1714554000000"), "field 'date' is a number (a Unix timestamp?)"),
    "two objects": (good_line() + " " + good_line(), "is not valid JSON"),
}


@pytest.mark.parametrize("case", BAD_LINES)
def test_bad_line_is_reported_with_file_and_line_but_not_its_text(tmp_path: Path, case: str) -> None:
    line, expected = BAD_LINES[case]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "1.jsonl").write_text(good_line(id=1) + "\n" + good_line(id=2) + "\n")
    data = "\n".join([good_line(id=1), "", good_line(id=2), line, good_line(id=3)]) + "\n"
    if case == "not UTF-8":
        (raw / "2.jsonl").write_bytes(data.encode("utf-8", "surrogateescape"))
    else:
        (raw / "2.jsonl").write_text(data, encoding="utf-8")
    with pytest.raises(PrepareError) as info:
        load_messages(raw)
    message = str(info.value)
    assert message.startswith(f"{raw / '2.jsonl'}:4: ")
    assert expected in message
    assert SECRET not in message and "hunter2" not in message
    assert "re-run `make collect`" in message
