"""Odd timelines: clock skew, impossible dates, travel and DST, bursts, one-sided chats, later edits."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prepare_helpers import msg, write_raw

from prepare.__main__ import cli
from prepare.build import build_records
from prepare.config import PrepareConfig
from prepare.errors import PrepareError
from prepare.load import load_messages
from prepare.pipeline import prepare
from prepare.records import Record

NOW = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
SECOND = 1 / 60  # msg() takes minutes


def build(
    tmp_path: Path, messages: list[dict[str, Any]], **config: Any
) -> tuple[list[Record], dict[str, Any]]:
    raw = write_raw(tmp_path / "raw", messages)
    built = build_records(load_messages(raw), PrepareConfig(raw=raw, out=tmp_path / "out", **config), now=NOW)
    return built.records, {"skipped": built.skipped, **built.counts}


def pairs(records: list[Record]) -> list[tuple[str, str]]:
    return [(r.instruction, r.response) for r in records]


def test_a_reply_dated_seconds_before_the_message_it_answers_still_answers_it(tmp_path: Path) -> None:
    # Two clocks a few seconds apart: by date each reply comes before what it answers (the person's "sure"
    # would join "hey" and "dinner at 7?" would go unanswered); Telegram's ids give the order it was sent.
    records, stats = build(
        tmp_path,
        [
            msg(1, 0, False, "hi"),
            msg(2, 1, True, "hey"),
            msg(3, 2, False, "dinner at 7?"),
            msg(4, 2 - 3 * SECOND, True, "sure"),
            msg(5, 3, True, "where?"),
            msg(6, 3 - 40 * SECOND, False, "the usual place"),  # the partner's clock behind, too
            msg(7, 4, True, "ok"),
        ],
    )
    assert pairs(records) == [("hi", "hey"), ("dinner at 7?", "sure\nwhere?"), ("the usual place", "ok")]
    assert records[2].turns is not None
    assert [t.speaker for t in records[2].turns] == ["partner", "me", "partner", "me"]
    assert records[1].date == "2024-05-01T09:01:57+00:00"  # the raw date is kept
    assert stats["conversations"] == 1 and stats["turns"] == 6


def test_a_chat_whose_ids_disagree_with_its_dates_by_more_than_a_minute_is_ordered_by_date(
    tmp_path: Path,
) -> None:
    # A history imported into Telegram gets new ids at import time: its ids say nothing about time.
    records, _ = build(
        tmp_path,
        [
            msg(10, 0, False, "imported question"),
            msg(11, 1, True, "imported answer"),
            msg(3, 2 * 60, False, "native question"),
            msg(4, 2 * 60 + SECOND, True, "answer dated a second later"),
            msg(5, 2 * 60 + 10 * SECOND, False, "last"),
            msg(
                6, 2 * 60 + 8 * SECOND, True, "dated before 'last'"
            ),  # not skew: this chat's ids mean nothing
        ],
    )
    assert pairs(records) == [
        ("imported question", "imported answer"),
        ("native question", "answer dated a second later\ndated before 'last'"),
    ]


IMPOSSIBLE_DATES = {
    "zero timestamp": "1970-01-01T00:00:00+00:00",
    "seconds read as milliseconds": "1970-01-20T20:15:54+00:00",
    "negative year": "-0001-01-01T00:00:00+00:00",
    "before Telegram": "2013-07-31T23:59:59+00:00",
    "year 2100": "2100-01-01T00:00:00+00:00",
    "year 9999": "9999-12-31T23:59:59+00:00",
    "over a year ahead": "2027-06-02T00:00:01+00:00",
}


@pytest.mark.parametrize("case", IMPOSSIBLE_DATES)
def test_messages_with_impossible_dates_are_dropped_and_counted(tmp_path: Path, case: str) -> None:
    bad = IMPOSSIBLE_DATES[case]
    records, stats = build(
        tmp_path,
        [
            msg(1, 0, False, "hi"),
            {**msg(2, 0.5, False, "broken date, partner"), "date": bad},
            {**msg(3, 0.5, True, "broken date, me"), "date": bad},
            msg(4, 1, True, "hey"),
        ],
    )
    assert pairs(records) == [("hi", "hey")]
    assert stats["skipped"]["implausible_date"] == 2 and stats["messages_kept"] == 2


def test_dates_up_to_a_year_ahead_and_from_telegrams_launch_are_kept(tmp_path: Path) -> None:
    records, stats = build(
        tmp_path,
        [
            {**msg(1, 0, False, "first day"), "date": "2013-08-01T00:00:00+00:00"},
            {**msg(2, 0, True, "ok"), "date": "2013-08-01T00:01:00+00:00"},
            {**msg(3, 0, False, "clock ahead"), "date": "2027-06-01T00:00:00+00:00"},
            {**msg(4, 0, True, "ok too"), "date": "2027-06-01T00:01:00+00:00"},
        ],
    )
    assert pairs(records) == [("first day", "ok"), ("clock ahead", "ok too")]
    assert not stats["skipped"]["implausible_date"]


def test_the_summary_line_counts_messages_with_impossible_dates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = write_raw(
        tmp_path / "raw",
        [
            msg(1, 0, False, "hi"),
            msg(2, 1, True, "hey"),
            {**msg(3, 2, False, "zero"), "date": "1970-01-01T00:00:00+00:00"},
            {**msg(4, 3, True, "future"), "date": "2100-01-01T00:00:00+00:00"},
        ],
    )
    assert cli(["--raw", str(raw), "--out", str(tmp_path / "out"), "--feedback", "none"]) == 0
    printed = capsys.readouterr().out
    assert "left out 2 messages with an impossible date (before 2013-08 or over a year ahead)" in printed
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["skipped"]["implausible_date"] == 2 and stats["records"] == 1


def test_only_impossible_dates_say_so(tmp_path: Path) -> None:
    raw = write_raw(
        tmp_path / "raw",
        [{**msg(i, i, i % 2 == 1, "x"), "date": "1970-01-01T00:00:00+00:00"} for i in range(4)],
    )
    with pytest.raises(PrepareError, match="4 messages have impossible dates"):
        prepare(PrepareConfig(raw=raw, out=tmp_path / "out", feedback=None))


def test_a_chat_that_is_only_the_owner_talking_says_so(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", [msg(i, i * 60 * 30, True, f"note to self {i}") for i in range(5)])
    with pytest.raises(PrepareError) as info:
        prepare(PrepareConfig(raw=raw, out=tmp_path / "out", feedback=None))
    assert "every message is yours" in str(info.value) and "--gap-hours" not in str(info.value)


def test_one_sided_chats_beside_a_normal_one_give_only_its_records(tmp_path: Path) -> None:
    records, stats = build(
        tmp_path,
        [
            *[msg(i, i, True, f"me {i}", dialog_id=1) for i in range(3)],
            *[msg(i, i, False, f"them {i}", dialog_id=2, name="Boris") for i in range(3)],
            msg(1, 0, False, "hi", dialog_id=3, name="Carol"),
            msg(2, 1, True, "hey", dialog_id=3, name="Carol"),
        ],
    )
    assert [(r.dialog_id, r.instruction, r.response) for r in records] == [(3, "hi", "hey")]
    assert stats["skipped"]["reply_opens_conversation"] == 1 and stats["dialogs_without_replies"] == 1


def test_travel_dst_and_midnight_split_by_instants(tmp_path: Path) -> None:
    # Europe's autumn change: 02:30+02:00 then 02:10+01:00 is 40 minutes later, not 20 earlier; across
    # midnight two minutes apart is one conversation; a flight to New York changes the offset mid-chat;
    # a silence of exactly --gap-hours stays, a microsecond more splits.
    records, stats = build(
        tmp_path,
        [
            {**msg(1, 0, False, "still up?"), "date": "2024-10-27T02:30:00+02:00"},
            {**msg(2, 0, True, "yes, clocks went back"), "date": "2024-10-27T02:10:00+01:00"},
            {**msg(3, 0, False, "midnight"), "date": "2024-10-27T23:59:00+01:00"},
            {**msg(4, 0, True, "past midnight"), "date": "2024-10-28T00:01:00+01:00"},
            {**msg(5, 0, False, "landed?"), "date": "2024-10-29T00:01:00+01:00"},  # exactly 24 h
            {**msg(6, 0, True, "yes, in NY"), "date": "2024-10-28T19:02:00-04:00"},
            {**msg(7, 0, False, "next day"), "date": "2024-10-29T23:02:00.000001+00:00"},  # 24 h + 1 µs
            {**msg(8, 0, True, "hi again"), "date": "2024-10-29T19:03:00-04:00"},
        ],
    )
    assert pairs(records) == [
        ("still up?", "yes, clocks went back"),
        ("midnight", "past midnight"),
        ("landed?", "yes, in NY"),
        ("next day", "hi again"),
    ]
    assert [r.context for r in records] == [
        "",
        "Anna: still up?\nMe: yes, clocks went back",
        "Anna: still up?\nMe: yes, clocks went back\nAnna: midnight\nMe: past midnight",
        "",
    ]
    assert stats["conversations"] == 2


def test_a_burst_of_thousands_of_messages_in_a_minute_keeps_context_capped(tmp_path: Path) -> None:
    messages = [msg(i, i / 3000, i % 2 == 1, "ab"[i % 2]) for i in range(3000)]  # lines in reverse order
    records, stats = build(tmp_path, messages[::-1], max_context_turns=4)
    assert len(records) == 1500 and stats["conversations"] == 1
    assert pairs(records[-1:]) == [("a", "b")]
    assert records[-1].context == "Anna: a\nMe: b\nAnna: a\nMe: b"


def test_an_edit_collected_later_wins_whatever_the_line_order(tmp_path: Path) -> None:
    messages = [msg(3, 2, False, "and now?"), msg(2, 1, True, "first draft"), msg(1, 0, False, "hi")]
    messages += [msg(4, 3, True, "sure"), msg(2, 1, True, "edited"), msg(4, 3, True, "sure")]
    records, stats = build(tmp_path, messages)
    assert pairs(records) == [("hi", "edited"), ("and now?", "sure")]
    assert stats["skipped"]["duplicate_message"] == 2
