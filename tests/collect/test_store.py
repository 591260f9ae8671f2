"""The raw store on its own: manifest problems, repairs from the files, and the sorted-file guarantee."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collect.errors import CollectError
from collect.records import RawMessage
from collect.store import RawStore, encode_line, timestamp


def message(mid: int, minute: int, text: str = "hi") -> tuple[float, RawMessage]:
    date = f"2024-01-01T10:{minute:02d}:00+00:00"
    return timestamp(date), RawMessage(mid, date, mid % 2 == 0, text, 7, "Gus")


def test_manifest_problems_say_how_to_recover(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    store.resume(7, "Gus")
    store.append(7, "telegram", [message(1, 1), message(2, 2)], 2)
    manifest = tmp_path / "manifest.json"
    for broken in ("{not json", '{"version": 1}', '{"version": 99, "dialogs": {}}',
                   '{"version": 1, "dialogs": {"7": {"name": "Gus"}}}'):  # fmt: skip
        manifest.write_text(broken)
        with pytest.raises(CollectError, match=r"manifest.json: .*delete .*manifest.json and re-run"):
            RawStore(tmp_path)
    manifest.unlink()  # ... and deleting it is indeed enough: the file is the truth
    store = RawStore(tmp_path)
    assert store.resume(7, "Gus") == 2 and store.dialogs[7].count == 2


def test_bad_line_in_a_dialog_file_is_named(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    store.resume(7, "Gus")
    store.append(7, "telegram", [message(1, 1)], 1)
    with open(tmp_path / "7.jsonl", "ab") as f:
        f.write(b'{"id": "two"}\n')
    with pytest.raises(
        CollectError, match=r"7.jsonl:2: field 'id' must be an integer.*fix or delete 7.jsonl"
    ):
        RawStore(tmp_path).resume(7, "Gus")


def test_appends_out_of_date_order_are_sorted_when_finished(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    store.resume(7, "Gus")
    store.append(7, "telegram", [message(1, 5), message(2, 6)], 2)
    store.append(7, "telegram", [message(3, 1), message(4, 7)], 4)
    assert store.dialogs[7].sorted is False
    store.finish(7)
    lines = [json.loads(x) for x in (tmp_path / "7.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [3, 1, 2, 4]
    state = json.loads((tmp_path / "manifest.json").read_text())["dialogs"]["7"]
    assert state["sorted"] is True and state["last_date"] == "2024-01-01T10:07:00+00:00"
    assert state["bytes"] == (tmp_path / "7.jsonl").stat().st_size


def test_a_killed_unsorted_append_is_sorted_on_resume(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    store.resume(7, "Gus")
    store.append(7, "telegram", [message(1, 5), message(2, 1)], 2)  # killed before finish()
    assert RawStore(tmp_path).resume(7, "Gus") == 2
    assert [json.loads(x)["id"] for x in (tmp_path / "7.jsonl").read_text().splitlines()] == [2, 1]


def test_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".7.jsonl.tmp-123").write_text("half")
    RawStore(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_lines_are_compact_utf8(tmp_path: Path) -> None:
    line = encode_line(RawMessage(1, "2024-01-01T10:00:00+00:00", True, "привет 👍", 7, "Gus"))
    assert line.endswith(b"\n") and "привет 👍".encode() in line
    assert RawMessage.from_dict(json.loads(line)).message == "привет 👍"


def test_replace_swaps_edited_lines_adds_and_drops_atomically(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    store.resume(7, "Gus")
    store.append(7, "telegram", [message(1, 1), message(2, 2), message(3, 3)], 3)
    before = (tmp_path / "7.jsonl").read_bytes()
    assert store.replace(7, "telegram", [message(2, 2)], removed=[9]) == 0  # nothing changed
    assert (tmp_path / "7.jsonl").read_bytes() == before

    assert store.replace(7, "telegram", [message(2, 2, "edited"), message(5, 0, "new caption")], [3]) == 3
    lines = [json.loads(x) for x in (tmp_path / "7.jsonl").read_text().splitlines()]
    assert [(x["id"], x["message"]) for x in lines] == [(5, "new caption"), (1, "hi"), (2, "edited")]
    state = json.loads((tmp_path / "manifest.json").read_text())["dialogs"]["7"]
    assert state["count"] == 3 and state["bytes"] == (tmp_path / "7.jsonl").stat().st_size
    assert state["last_date"] == "2024-01-01T10:02:00+00:00" and state["last_id"] == 3
    assert RawStore(tmp_path).resume(7, "Gus") == 3  # the manifest matches the file: no rescan needed


def test_a_dialog_with_nothing_kept_keeps_its_cursor_for_the_live_export(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    store.resume(7, "Gus", keep_empty=True)
    store.append(7, "telegram", [], 40)  # 40 messages looked at, none kept
    store.finish(7, synced="2024-01-02T00:00:00+00:00")
    again = RawStore(tmp_path)
    assert again.resume(7, "Gus", keep_empty=True) == 40
    assert again.dialogs[7].synced == "2024-01-02T00:00:00+00:00"
    assert again.resume(7, "Gus") == 0  # the Desktop import starts such a chat afresh
    assert not (tmp_path / "7.jsonl").exists()


def test_rescan_keeps_when_the_dialog_was_last_synced(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    store.resume(7, "Gus")
    store.append(7, "telegram", [message(1, 1)], 1)
    store.finish(7, synced="2024-01-02T00:00:00+00:00")
    with open(tmp_path / "7.jsonl", "ab") as f:
        f.write(b'{"id": 2, "da')  # a torn line: the next resume rescans the file
    again = RawStore(tmp_path)
    assert again.resume(7, "Gus") == 1 and again.dialogs[7].synced == "2024-01-02T00:00:00+00:00"
